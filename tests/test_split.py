"""Patient-level split: no leakage, balanced prevalence, determinism, growth, warm-up subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo.cli import main
from mammo.errors import ConfigError, DataError
from mammo.split import (
    SPLITS,
    build_split,
    dataset_fingerprint,
    read_split,
    run_split,
    split_frame,
)


def make_table(
    patients: int, cancer_patients: int, seed: int = 0, first_id: int = 1000
) -> pd.DataFrame:
    """RSNA-like table: 2-8 images per patient over both breasts; a cancer patient has cancer on
    every image of one breast. Ids are strings of varying length (string order != numeric)."""
    rng = np.random.default_rng(seed)
    sick = set(rng.choice(patients, size=cancer_patients, replace=False).tolist())
    rows = []
    image = first_id * 100
    for p in range(patients):
        side = rng.choice(["L", "R"])
        for j in range(int(rng.choice([2, 3, 4, 4, 4, 4, 5, 6, 8]))):
            lat = "L" if j % 2 == 0 else "R"
            image += int(rng.integers(1, 50))
            rows.append(
                {
                    "site_id": 1,
                    "patient_id": str(first_id + p * 3),
                    "image_id": str(image),
                    "laterality": lat,
                    "view": "CC" if j < 2 else "MLO",
                    "cancer": int(p in sick and lat == side),
                }
            )
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table.to_csv(directory / "train.csv", index=False)
    return directory


def test_patients_never_span_splits_and_every_image_is_assigned() -> None:
    table = make_table(300, 30)
    split = build_split(table, val_frac=0.2, test_frac=0.1, seed=1)
    rows = split.assignments
    assert list(rows.columns) == ["patient_id", "image_id", "laterality", "cancer", "split"]
    assert sorted(rows["image_id"]) == sorted(table["image_id"])
    assert (rows.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(rows["split"]) == set(SPLITS)
    expected_order = sorted(zip(rows["patient_id"], rows["image_id"]))
    assert list(zip(rows["patient_id"], rows["image_id"])) == expected_order


def test_rsna_sized_table_keeps_fractions_and_prevalence_per_split() -> None:
    table = make_table(11_913, 486, seed=3)
    split = build_split(table, val_frac=0.15, test_frac=0.15, seed=42)
    stats = split.summary["splits"]
    overall = stats["all"]
    assert overall["patients"] == 11_913 and overall["cancer_patients"] == 486
    for name, frac in zip(SPLITS, (0.7, 0.15, 0.15)):
        s = stats[name]
        assert s["patients"] / overall["patients"] == pytest.approx(frac, abs=0.005)
        assert s["images"] / overall["images"] == pytest.approx(frac, abs=0.005)
        assert s["cancer_patients"] / 486 == pytest.approx(frac, abs=0.01)
        assert s["prevalence_patient"] == pytest.approx(overall["prevalence_patient"], rel=0.06)
        assert s["prevalence_image"] == pytest.approx(overall["prevalence_image"], rel=0.08)
    assert split.summary["empty_splits"] == [] and split.summary["single_class_splits"] == []


def test_same_inputs_give_byte_identical_files_and_row_order_does_not_matter(
    tmp_path: Path,
) -> None:
    table = make_table(200, 20)
    write_table(table, tmp_path / "a")
    shuffled = table.sample(frac=1.0, random_state=5)[list(reversed(table.columns))]
    write_table(shuffled, tmp_path / "b")
    run_split(str(tmp_path / "a"), str(tmp_path / "out1"), seed=7)
    run_split(str(tmp_path / "a" / "train.csv"), str(tmp_path / "out2"), seed=7)
    run_split(str(tmp_path / "b"), str(tmp_path / "out3"), seed=7)
    for name in ("split.csv", "split.json"):
        first = (tmp_path / "out1" / name).read_bytes()
        assert first == (tmp_path / "out2" / name).read_bytes()
        assert first == (tmp_path / "out3" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out1").iterdir()) == ["split.csv", "split.json"]


def test_seed_changes_the_assignment() -> None:
    table = make_table(200, 20)
    a = build_split(table, val_frac=0.15, test_frac=0.15, seed=1).assignments
    b = build_split(table, val_frac=0.15, test_frac=0.15, seed=2).assignments
    assert (a["split"] != b["split"]).any()


def test_fingerprint_ignores_row_order_and_extra_columns_but_not_labels() -> None:
    table = make_table(50, 5)
    reordered = table.sample(frac=1.0, random_state=1).drop(columns=["view", "site_id"])
    assert dataset_fingerprint(table) == dataset_fingerprint(reordered)
    relabelled = table.copy()
    relabelled.loc[0, "cancer"] = 1 - relabelled.loc[0, "cancer"]
    assert dataset_fingerprint(relabelled) != dataset_fingerprint(table)
    assert len(dataset_fingerprint(table)) == 64


def test_summary_counts_match_the_assignments(tmp_path: Path) -> None:
    write_table(make_table(120, 15), tmp_path / "data")
    summary = run_split(
        str(tmp_path / "data"), str(tmp_path / "out"), val_frac=0.2, test_frac=0.2, seed=3
    )
    rows, stored = read_split(tmp_path / "out")
    assert stored == json.loads(json.dumps(summary))
    for name in SPLITS:
        part = split_frame(rows, name)
        s = summary["splits"][name]
        assert s["images"] == len(part)
        assert s["patients"] == part["patient_id"].nunique()
        assert s["breasts"] == (part["patient_id"] + "_" + part["laterality"]).nunique()
        assert s["cancer_images"] == part["cancer"].sum()
        assert s["cancer_patients"] == part.groupby("patient_id")["cancer"].max().sum()
        assert s["prevalence_image"] == round(part["cancer"].mean(), 6)
    assert summary["fractions"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    assert summary["seed"] == 3 and summary["warmup_ratio"] == 3
    assert "previous" not in summary


def test_tiny_table_reports_empty_splits_instead_of_crashing(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "patient_id": ["1", "1", "2", "3"],
            "image_id": ["10", "11", "20", "30"],
            "laterality": ["L", "R", "L", "R"],
            "cancer": [1, 0, 0, 0],
        }
    )
    write_table(table, tmp_path / "data")
    summary = run_split(str(tmp_path / "data"), str(tmp_path / "out"))
    assert summary["splits"]["all"]["patients"] == 3
    assert summary["empty_splits"]
    for name in summary["empty_splits"]:
        assert summary["splits"][name]["patients"] == 0
        assert summary["splits"][name]["prevalence_image"] is None
    rows, _ = read_split(tmp_path / "out")
    assert len(rows) == 4


@pytest.mark.parametrize(
    ("val", "test", "flag"),
    [
        (1.0, 0.1, "--val-frac"),
        (-0.1, 0.1, "--val-frac"),
        (0.1, 1.5, "--test-frac"),
        (0.5, 0.5, "--val-frac + --test-frac"),
    ],
)
def test_bad_fractions_name_the_flag(tmp_path: Path, val: float, test: float, flag: str) -> None:
    write_table(make_table(10, 1), tmp_path / "data")
    with pytest.raises(ConfigError, match=flag.replace("+", r"\+")):
        run_split(str(tmp_path / "data"), str(tmp_path / "out"), val_frac=val, test_frac=test)
    assert not (tmp_path / "out").exists()


def test_growth_keeps_earlier_patients_and_balances_the_new_ones(tmp_path: Path) -> None:
    old = make_table(1500, 75, seed=1)
    write_table(old, tmp_path / "v1")
    run_split(str(tmp_path / "v1"), str(tmp_path / "split1"), seed=5)
    before, _ = read_split(tmp_path / "split1")

    dropped = sorted(old["patient_id"].unique())[:100]
    new = make_table(600, 30, seed=2, first_id=900_000)
    grown = pd.concat([old[~old["patient_id"].isin(dropped)], new], ignore_index=True)
    write_table(grown, tmp_path / "v2")
    summary = run_split(
        str(tmp_path / "v2"), str(tmp_path / "split2"), seed=99, previous=str(tmp_path / "split1")
    )
    after, _ = read_split(tmp_path / "split2")

    was = before.groupby("patient_id")["split"].first()
    now = after.groupby("patient_id")["split"].first()
    kept = now.index.intersection(was.index)
    assert len(kept) == 1400 and (now[kept] == was[kept]).all()
    assert summary["previous"]["kept_patients"] == 1400
    assert summary["previous"]["new_patients"] == 600
    assert summary["previous"]["dropped_patients"] == 100
    assert summary["previous"]["dataset_fingerprint"] == dataset_fingerprint(old)
    assert summary["dataset_fingerprint"] == dataset_fingerprint(grown)
    stats = summary["splits"]
    for name, frac in zip(SPLITS, (0.7, 0.15, 0.15)):
        assert stats[name]["patients"] / stats["all"]["patients"] == pytest.approx(frac, abs=0.01)
        assert stats[name]["cancer_patients"] / stats["all"]["cancer_patients"] == pytest.approx(
            frac, abs=0.02
        )
    new_ids = set(new["patient_id"])
    assert set(now[list(new_ids)]) == set(SPLITS)


def test_previous_split_can_be_the_output_directory(tmp_path: Path) -> None:
    write_table(make_table(100, 10), tmp_path / "data")
    first = run_split(str(tmp_path / "data"), str(tmp_path / "split"))
    again = run_split(
        str(tmp_path / "data"), str(tmp_path / "split"), seed=123, previous=str(tmp_path / "split")
    )
    assert again["splits"] == first["splits"]
    assert again["previous"]["new_patients"] == 0 and again["previous"]["dropped_patients"] == 0


def test_missing_or_malformed_previous_split_is_a_data_error(tmp_path: Path) -> None:
    write_table(make_table(40, 4), tmp_path / "data")
    (tmp_path / "prev").mkdir()
    with pytest.raises(DataError, match=r"prev/split\.csv: split file not found"):
        run_split(str(tmp_path / "data"), str(tmp_path / "out"), previous=str(tmp_path / "prev"))

    run_split(str(tmp_path / "data"), str(tmp_path / "prev"))
    csv = tmp_path / "prev" / "split.csv"
    good = csv.read_text()
    csv.write_text(good.replace(",train\n", ",training\n", 1))
    with pytest.raises(
        DataError,
        match=r"split\.csv: row \d+: split must be one of train, val, test, got 'training'",
    ):
        read_split(tmp_path / "prev")

    lines = good.splitlines()
    first_patient = lines[1].split(",")[0]
    other = "val" if lines[1].endswith("train") else "train"
    extra = f"{first_patient},999999999,L,0,{other}"
    csv.write_text("\n".join([*lines, extra]) + "\n")
    with pytest.raises(DataError, match=f"patient {first_patient} appears in more than one split"):
        read_split(tmp_path / "prev")

    csv.write_text(good.replace("split\n", "fold\n", 1))
    with pytest.raises(DataError, match="missing required column"):
        read_split(tmp_path / "prev")

    csv.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        read_split(tmp_path / "prev")

    csv.write_text(good)
    (tmp_path / "prev" / "split.json").write_text("{not json")
    with pytest.raises(DataError, match=r"split\.json: not valid JSON"):
        read_split(tmp_path / "prev")


def test_warmup_subset_has_every_positive_train_breast_and_k_times_negatives() -> None:
    table = make_table(400, 40, seed=4)
    split = build_split(table, val_frac=0.15, test_frac=0.15, seed=8, warmup_ratio=2)
    train = split_frame(split.assignments, "train")
    labels = train.groupby(train["patient_id"] + "_" + train["laterality"])["cancer"].max()
    warmup = split.summary["warmup"]
    chosen = set(warmup["breasts"])
    positives = set(labels.index[labels == 1])
    assert warmup["breasts"] == sorted(chosen)
    assert positives <= chosen and chosen <= set(labels.index)
    assert warmup["positive_breasts"] == len(positives)
    assert warmup["negative_breasts"] == 2 * len(positives) == len(chosen - positives)
    assert warmup["prevalence"] == round(1 / 3, 6)
    again = build_split(table, val_frac=0.15, test_frac=0.15, seed=8, warmup_ratio=2)
    assert again.summary["warmup"] == warmup


def test_warmup_takes_all_negatives_when_there_are_too_few() -> None:
    table = make_table(20, 8, seed=6)
    split = build_split(table, val_frac=0.0, test_frac=0.0, seed=1, warmup_ratio=10)
    labels = split.assignments.groupby(
        split.assignments["patient_id"] + "_" + split.assignments["laterality"]
    )["cancer"].max()
    assert split.summary["warmup"]["breasts"] == sorted(labels.index)
    assert split.summary["empty_splits"] == ["val", "test"]


def test_cli_split_prints_summary_and_reports_user_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_table(make_table(60, 6), tmp_path / "data")
    assert main(["split", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert len(table.splitlines()) < 15 and "warm-up subset" in table and "split.csv" in table
    assert table.splitlines()[4].split()[:2] == ["all", "60"]
    assert main(["split", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o3"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["splits"]["all"]["patients"] == 60
    assert (tmp_path / "out" / "split.csv").is_file()

    code = main(
        [
            "split",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "o2"),
            "--test-frac",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--test-frac must be in [0, 1)" in err


def test_previous_assignments_without_a_split_folder_keep_their_patients(tmp_path: Path) -> None:
    """``run_split(previous=<patient_id, split frame>)``: what the split builder's ledger passes
    (mammo.split_ledger), patients absent from the table included."""
    table = make_table(80, 10)
    first = run_split(data=str(write_table(table, tmp_path / "d1")), out=str(tmp_path / "s1"), seed=1)
    assignments, _ = read_split(tmp_path / "s1")
    known = assignments.groupby("patient_id", as_index=False)["split"].first()
    known = pd.concat([known, pd.DataFrame({"patient_id": ["gone-1", "gone-2"], "split": ["test", "train"]})])
    grown = pd.concat([table, make_table(20, 2, seed=5, first_id=9000)])
    summary = run_split(data=str(write_table(grown, tmp_path / "d2")), out=str(tmp_path / "s2"), seed=1,
                        previous=known)
    after, _ = read_split(tmp_path / "s2")
    kept = after.merge(assignments, on="image_id", suffixes=("", "_before"))
    assert len(kept) == len(assignments) and (kept["split"] == kept["split_before"]).all()
    assert summary["previous"] == {"kept_patients": 80, "new_patients": 20, "dropped_patients": 2,
                                   "dataset_fingerprint": None}
    assert first["splits"]["all"]["patients"] == 80
