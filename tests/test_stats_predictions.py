"""``mammo stats``: the evaluator's figures for prediction CSVs from anywhere - the same code
(``mammo.prediction_stats.model_figures``), so the evaluator's own predictions give the
evaluator's figures; the paired verdict against a baseline and the first-model floor; every
malformed file a one-line error naming file, row and column, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo.cli import main
from mammo.config import EvalConfig
from mammo.config_files import load_config
from mammo.evaluate import run_evaluation
from mammo.prediction_stats import read_predictions, run_stats
from mammo.promotion import PromotionRule
from mammo.split import run_split


def predictions(n_patients: int, *, seed: int, separation: float, manufacturers: bool = True) -> pd.DataFrame:
    """Two views of both breasts per patient; about one breast in six has a cancer."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        for side in ("L", "R"):
            cancer = int(rng.random() < 0.17)
            for view in ("CC", "MLO"):
                row = {"patient_id": f"P{i:04d}", "image_id": f"P{i:04d}{side}{view}", "laterality": side,
                       "cancer": cancer, "probability": float(np.clip(rng.normal(0.3 + separation * cancer, 0.15), 0, 1)),
                       "view": view}
                if manufacturers:
                    row["manufacturer"] = ("Hologic", "GE", "Siemens")[i % 3]
                rows.append(row)
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, path: Path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


FAST = ["--resamples", "200", "--subgroup-resamples", "50"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["stats", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the evaluator's figures ------------------------------------------------------------------


def test_the_evaluators_predictions_give_the_evaluators_figures(tiny_dataset: Path, tmp_path: Path) -> None:
    from model_support import fake_checkpoint

    checkpoint = fake_checkpoint(tmp_path / "model.pt", image_size=32)
    run_split(data=str(tiny_dataset), out=str(tmp_path / "split"), val_frac=0.3, test_frac=0.3, seed=1)
    settings = {"data.batch_size": 32, "data.workers": 0, "device": "cpu", "stats.resamples": 300,
                "stats.subgroup_resamples": 100, "threshold_metric": "specificity:0.8"}
    config = load_config(EvalConfig, overrides={
        **settings, "data.root": str(tiny_dataset), "split": str(tmp_path / "split"), "out": str(tmp_path / "eval"),
        "checkpoints": [str(checkpoint)],
    })
    rule = PromotionRule(min_cancers=0)
    evaluation = run_evaluation(config, rule=rule)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    images = evaluation.predictions.rename(columns={"label": "cancer", "prob": "probability"})
    files = {}
    for split in ("val", "test"):  # full precision: the same scores, not 6-digit copies
        part = images[images["split"] == split].drop(columns=["split", "checkpoint", "breast_id"])
        files[split] = str(tmp_path / f"{split}.csv")
        part.to_csv(files[split], index=False, float_format="%.17g")

    stats_config = load_config(EvalConfig, overrides={k: v for k, v in settings.items() if k.startswith(("stats", "threshold"))})
    result = run_stats([files["test"]], stats_config, rule, val=files["val"])["results"][0]
    assert result["threshold"] == pytest.approx(metrics["threshold"], abs=1e-12)
    for level in ("breast", "image"):
        ours, theirs = result["test"][level], metrics["test"][level]
        for key in ("auc", "sensitivity", "specificity", "precision", "n", "n_pos", "tp", "fp"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), (level, key)
        for key in ("ci", "operating_points", "fixed_on_val", "delong", "calibration"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12) if not isinstance(theirs[key], (dict, list)) \
                else json.dumps(ours[key], sort_keys=True) == json.dumps(theirs[key], sort_keys=True), (level, key)
    assert result["val"]["breast"]["ci"] == metrics["val"]["breast"]["ci"]
    assert metrics["test"]["subgroups"] and result["test"]["subgroups"] == metrics["test"]["subgroups"]
    verdict = {k: v for k, v in result["promotion"].items() if k != "production_info"}
    assert verdict == {k: v for k, v in metrics["promotion"].items() if k != "production_info"}


# --- files from elsewhere ---------------------------------------------------------------------


def test_one_result_per_file_with_subgroups_from_any_metadata_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(predictions(120, seed=1, separation=0.3), tmp_path / "a.csv")
    b = write(predictions(120, seed=2, separation=0.3, manufacturers=False), tmp_path / "b.csv")
    val = write(predictions(80, seed=3, separation=0.3), tmp_path / "val.csv")
    code, out, err = run_cli(capsys, "--predictions", a, "--predictions", b, "--val", val, "--json", *FAST)
    assert code == 0, err
    result = json.loads(out)
    assert [r["file"] for r in result["results"]] == [a, b]
    first, second = result["results"]
    assert first["threshold_choice"]["on"] == val and "val" in first
    columns = {(g["level"], g["column"]) for g in first["test"]["subgroups"]}
    assert columns == {("breast", "manufacturer"), ("image", "view")}
    assert {g["value"] for g in first["test"]["subgroups"] if g["column"] == "manufacturer"} == {"GE", "Hologic", "Siemens"}
    assert all(g["column"] != "manufacturer" for g in second["test"]["subgroups"])
    assert first["test"]["breast"]["n"] == 240 and first["test"]["image"]["n"] == 480
    ci = first["test"]["breast"]["ci"]["auc"]
    assert ci["low"] < first["test"]["breast"]["auc"] < ci["high"]
    # the same val threshold for both files, chosen once
    assert first["threshold"] == second["threshold"]
    assert result["rule"] == PromotionRule().record()


def test_without_val_the_threshold_is_chosen_on_the_file_and_said_to_be_optimistic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(predictions(60, seed=1, separation=0.3), tmp_path / "a.csv")
    code, out, _ = run_cli(capsys, "--predictions", a, *FAST)
    assert code == 0
    assert "on the same file (optimistic: no val file given)" in out
    assert "warning: no --val file: the threshold" in out and "optimistic" in out
    code, out, _ = run_cli(capsys, "--predictions", a, "--json", *FAST)
    result = json.loads(out)["results"][0]
    assert "val" not in result and not any(w.startswith("the val split") for w in result["warnings"])


def test_rows_without_image_id_are_one_unit_each(tmp_path: Path) -> None:
    frame = predictions(30, seed=4, separation=0.3).drop(columns=["image_id", "view"])
    breasts = frame.groupby(["patient_id", "laterality"], as_index=False).agg(
        cancer=("cancer", "max"), probability=("probability", "mean"), manufacturer=("manufacturer", "first"))
    read = read_predictions(write(breasts, tmp_path / "breasts.csv"))
    assert len(read) == 60 and read["image_id"].is_unique and read["breast_id"].nunique() == 60


def test_baseline_gives_the_paired_verdict_under_the_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = predictions(300, seed=5, separation=0.35)
    weak = good.assign(probability=np.clip(0.3 + np.random.default_rng(6).normal(0, 0.15, len(good)), 0, 1))
    strong, base = write(good, tmp_path / "new.csv"), write(weak, tmp_path / "old.csv")
    code, out, _ = run_cli(capsys, "--predictions", strong, "--baseline", base, "--json", *FAST)
    verdict = json.loads(out)["results"][0]["promotion"]
    assert code == 0 and verdict["promote"] is True and verdict["against_production"]
    assert verdict["difference_ci"]["low"] > verdict["margin"] == 0.005
    assert verdict["n_patients"] == 300 and verdict["production_info"]["file"] == base
    # the other way round: the weak model does not replace the strong one
    code, out, _ = run_cli(capsys, "--predictions", base, "--baseline", strong, *FAST)
    assert code == 0 and "do not promote" in out.splitlines()[-1] and f"against {strong}" in out
    # under the margin rule with a margin larger than any gain, neither is promoted
    code, out, _ = run_cli(capsys, "--predictions", strong, "--baseline", base, "--promotion-rule", "margin",
                           "--promotion-margin", "0.9", "--json", *FAST)
    verdict = json.loads(out)["results"][0]["promotion"]
    assert verdict["rule"] == "margin" and verdict["margin"] == 0.9 and verdict["promote"] is False


def test_without_baseline_the_first_model_floor_decides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chance = predictions(200, seed=7, separation=0.0)
    code, out, _ = run_cli(capsys, "--predictions", write(chance, tmp_path / "chance.csv"), "--json", *FAST)
    verdict = json.loads(out)["results"][0]["promotion"]
    assert code == 0 and verdict["promote"] is False and not verdict["against_production"]
    assert verdict["floor"] == 0.5 and verdict["min_cancers"] == 10
    few = predictions(12, seed=8, separation=0.6)
    code, out, _ = run_cli(capsys, "--predictions", write(few, tmp_path / "few.csv"), "--json", *FAST)
    verdict = json.loads(out)["results"][0]["promotion"]
    assert verdict["promote"] is False and verdict["cancers"] < 10 and "fewer than promotion_min_cancers=10" in verdict["reason"]


def test_a_baseline_of_other_cases_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(predictions(40, seed=1, separation=0.3), tmp_path / "a.csv")
    other = predictions(40, seed=1, separation=0.3).assign(patient_id=lambda f: "X" + f["patient_id"])
    code, _, err = run_cli(capsys, "--predictions", a, "--baseline", write(other, tmp_path / "o.csv"), *FAST)
    assert code == 2 and err.count("\n") == 1 and "o.csv: shares no breast" in err
    flipped = predictions(40, seed=1, separation=0.3)
    flipped.loc[flipped["patient_id"] == "P0000", "cancer"] = 1 - flipped.loc[flipped["patient_id"] == "P0000", "cancer"]
    code, _, err = run_cli(capsys, "--predictions", a, "--baseline", write(flipped, tmp_path / "f.csv"), *FAST)
    assert code == 2 and "f.csv: breast P0000_" in err and "has cancer" in err


# --- bad files --------------------------------------------------------------------------------


def _bad(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({"cancer": object, "probability": object})


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="probability"), r"missing required column\(s\): probability"),
    (lambda f: f.assign(probability=f["probability"].where(f.index != 3, 1.5)),
     r"row 5: column probability must be a number in \[0, 1\], got '1.5'"),
    (lambda f: f.assign(probability=f["probability"].where(f.index != 4, np.nan)),
     r"row 6: column probability must be a number in \[0, 1\], got ''"),
    (lambda f: f.assign(probability=f["probability"].where(f.index != 2, "high")),
     r"row 4: column probability must be a number in \[0, 1\], got 'high'"),
    (lambda f: f.assign(cancer=f["cancer"].where(f.index != 6, 2)), r"row 8: column cancer must be 0 or 1, got '2'"),
    (lambda f: f.assign(laterality=f["laterality"].where(f.index != 0, "X")),
     r"row 2: column laterality must be L or R, got 'X'"),
    (lambda f: f.assign(image_id=f["image_id"].where(f.index != 9, f["image_id"][1])),
     r"row 11: column image_id 'P0000LMLO' is already in row 3"),
    (lambda f: f.assign(cancer=f["cancer"].where(f.index != 1, 1 - f["cancer"][0])),
     r"row 3: column cancer \d differs from row 2's \d for the same breast \(patient_id 'P0000', laterality L\)"),
])
def test_a_bad_file_is_one_line_naming_file_row_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message: str
) -> None:
    path = write(change(_bad(predictions(10, seed=9, separation=0.3))), tmp_path / "bad.csv")
    code, out, err = run_cli(capsys, "--predictions", path, *FAST)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert pd.Series([err]).str.contains(f"^mammo: error: {path}: {message}", regex=True)[0], err


def test_a_bad_val_or_baseline_file_is_named_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(predictions(10, seed=9, separation=0.3), tmp_path / "good.csv")
    bad = write(predictions(10, seed=9, separation=0.3).drop(columns="cancer"), tmp_path / "bad.csv")
    for flag in ("--val", "--baseline"):
        code, _, err = run_cli(capsys, "--predictions", good, flag, bad, *FAST)
        assert code == 2 and f"{bad}: missing required column(s): cancer" in err
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "absent.csv"), *FAST)
    assert code == 2 and "absent.csv: predictions file not found" in err
    (tmp_path / "empty.csv").write_text("")
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "empty.csv"), *FAST)
    assert code == 2 and "empty.csv: file is empty" in err
    code, _, err = run_cli(capsys, "--predictions", good, "--promotion-metric", "val.breast.auc", *FAST)
    assert code == 2 and "use a test.* metric" in err


def test_help_shows_every_default() -> None:
    import argparse

    from mammo.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["stats"]
    helps = {action.dest: action.help for action in sub._actions}
    for dest, text in helps.items():
        if dest not in ("help", "json", "config", "sets", "predictions"):
            assert "(default: " in text, dest
    expected = {"threshold_metric": "pf1", "resamples": "2000", "subgroup_resamples": "1000", "level": "0.95",
                "aggregation": "mean", "promotion_metric": "test.breast.auc", "promotion_rule": "paired_bootstrap",
                "promotion_margin": "0.005", "promotion_min": "0.5", "promotion_min_cancers": "10"}
    for dest, default in expected.items():
        assert f"(default: {default}" in helps[dest], dest


def test_a_column_of_many_values_is_no_subgroup(tmp_path: Path) -> None:
    frame = predictions(40, seed=1, separation=0.3)
    frame["other_score"] = np.random.default_rng(0).random(len(frame))  # one value per row
    read = read_predictions(write(frame, tmp_path / "a.csv"))
    from mammo.prediction_stats import subgroup_columns_of

    assert subgroup_columns_of(read) == ["view", "manufacturer"]
