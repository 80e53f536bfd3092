"""The synthetic RSNA-layout dataset: table shape, determinism, layouts and a learnable signal."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from mammo.cli import main
from mammo.data.decode import read_png
from mammo.data.layout import open_dataset
from mammo.data.synth import write_synthetic_dataset
from mammo.data.table import RSNA_COLUMNS, breast_ids, read_table
from mammo.errors import ConfigError


def test_table_has_the_rsna_shape(tiny_dataset: Path) -> None:
    table = read_table(tiny_dataset)
    assert tuple(table.columns) == RSNA_COLUMNS
    assert table["patient_id"].nunique() == 40
    per_breast = table.groupby(breast_ids(table)).size()
    assert per_breast.between(1, 4).all()
    assert (table.groupby("patient_id")["laterality"].nunique() == 2).all()
    assert set(table["view"]) >= {"CC", "MLO"}
    assert set(table["site_id"]) <= {1, 2} and set(table["density"]) <= set("ABCD")
    assert table["age"].between(30, 95).all()
    # Cancer: in one breast of a cancer patient, every image of that breast.
    breast_cancer = table.groupby(breast_ids(table))["cancer"].agg(["min", "max"])
    assert (breast_cancer["min"] == breast_cancer["max"]).all()
    per_patient = table.groupby("patient_id").apply(lambda p: p.loc[p["cancer"] == 1, "laterality"].nunique())
    assert set(per_patient) == {0, 1} and (per_patient == 1).sum() == 12  # 30 % of 40
    cancer = table["cancer"] == 1
    assert (table.loc[cancer, "biopsy"] == 1).all()
    assert (table.loc[~cancer, "invasive"] == 0).all()
    assert not table.loc[cancer, "difficult_negative_case"].any()


def test_summary_matches_what_was_written(tmp_path: Path) -> None:
    summary = write_synthetic_dataset(tmp_path / "d", patients=5, image_size=16, prevalence=0.4, seed=2)
    table = read_table(tmp_path / "d")
    assert summary == {
        "out": str(tmp_path / "d"),
        "rows": len(table),
        "patients": 5,
        "cancer_images": int(table["cancer"].sum()),
        "cancer_patients": 2,
        "layout": "nested",
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_synthetic_dataset(tmp_path / name, patients=6, image_size=24, prevalence=0.3, seed=seed)
    assert (tmp_path / "a" / "train.csv").read_bytes() == (tmp_path / "b" / "train.csv").read_bytes()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_both_layouts_are_readable(tmp_path: Path, layout: str) -> None:
    write_synthetic_dataset(tmp_path / "d", patients=4, image_size=20, prevalence=0.5, layout=layout)
    table, paths = open_dataset(tmp_path / "d")
    for (_, row), path in zip(table.iterrows(), paths, strict=True):
        expected = f"{row['patient_id']}/{row['image_id']}.png" if layout == "nested" else f"{row['image_id']}.png"
        assert Path(path) == tmp_path / "d" / "train_images" / expected
    image = read_png(paths[0], 20)
    assert image.shape == (1, 20, 20) and image.dtype == torch.uint8


def test_cancer_images_carry_a_local_bright_signal(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "d", patients=60, image_size=48, prevalence=0.4, seed=1)
    table, paths = open_dataset(tmp_path / "d")
    images = torch.stack([read_png(p, 48) for p in paths]).float()
    # Brightest local spot above the breast's own bright tissue.
    peak = F.avg_pool2d(images, 3, stride=1, padding=1).flatten(1).max(dim=1).values
    tissue = torch.stack([img[img > 30].quantile(0.9) for img in images.flatten(1)])
    auc = roc_auc_score(table["cancer"], (peak - tissue).numpy())
    assert auc > 0.75
    # ...and not a trivial global cue: mean brightness alone does not separate the classes.
    assert abs(roc_auc_score(table["cancer"], images.mean(dim=(1, 2, 3)).numpy()) - 0.5) < 0.2


def test_difficulty_hides_or_dims_lesions_and_touches_nothing_else(tmp_path: Path) -> None:
    common = {"patients": 30, "image_size": 32, "prevalence": 0.4, "seed": 3}
    write_synthetic_dataset(tmp_path / "plain", **common)
    summary = write_synthetic_dataset(tmp_path / "hard", **common, occult=0.5, view_miss=0.3)
    dim = write_synthetic_dataset(tmp_path / "dim", **common, lesion_contrast=0.5)
    table = read_table(tmp_path / "plain")
    assert (tmp_path / "hard" / "train.csv").read_bytes() == (tmp_path / "plain" / "train.csv").read_bytes()
    assert summary["cancer_images"] > summary["visible_cancer_images"] > 0
    assert dim["visible_cancer_images"] == dim["cancer_images"]

    def pixels(name: str, row: pd.Series) -> bytes:
        return (tmp_path / name / "train_images" / row["patient_id"] / f"{row['image_id']}.png").read_bytes()

    changed = {name: [pixels("plain", r) != pixels(name, r) for _, r in table.iterrows()] for name in ("hard", "dim")}
    cancer = table["cancer"].to_numpy() == 1
    # Healthy images are byte-identical; hidden lesions change exactly their cancer images.
    assert not any(c for c, is_cancer in zip(changed["hard"], cancer) if not is_cancer)
    assert sum(changed["hard"]) == summary["cancer_images"] - summary["visible_cancer_images"]
    assert not any(c for c, is_cancer in zip(changed["dim"], cancer) if not is_cancer)
    assert all(c for c, is_cancer in zip(changed["dim"], cancer) if is_cancer)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"patients": 0}, "patients"),
        ({"prevalence": 0.0}, "prevalence"),
        ({"prevalence": 1.0}, "prevalence"),
        ({"image_size": 8}, "image_size"),
        ({"layout": "tree"}, "layout"),
        ({"lesion_contrast": 0.0}, "lesion_contrast"),
        ({"occult": 1.0}, "occult"),
        ({"view_miss": -0.1}, "view_miss"),
    ],
)
def test_invalid_arguments_raise_config_error(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        write_synthetic_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_cli_writes_the_dataset_and_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--patients", "3", "--image-size", "16",
                 "--layout", "flat"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "flat" and summary["patients"] == 3
    assert (tmp_path / "d" / "train.csv").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "e"), "--prevalence", "2"]) == 2
    assert "prevalence" in capsys.readouterr().err
