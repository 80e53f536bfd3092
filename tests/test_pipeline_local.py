"""The whole mammo-training pipeline through kfp.local (`mammo run`), on tiny synthetic data:
on the local store (promotes the first model, not an equal one on the second run). A run on the
S3 server, reporting to the Pushgateway: tests/test_pipeline_dicom.py. Grown data on the S3
server: the split builder keeps every earlier patient in its split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mammo import storage
from mammo.data.synth import write_synthetic_dataset
from mammo_pipelines.local_run import run_local
from mammo.split import SPLIT_CSV
from mammo_components.split_builder.entrypoint import latest_split
from mammo_components.split_builder.entrypoint import run as build_split
from servers import S3Env

pytestmark = pytest.mark.slow  # real processes and whole runs: `make check` leaves them out

#: One epoch per trainer at 32 px: the point is the pipeline, not the model (so no floor: a
#: one-epoch model need not be above chance to be promoted here; few resamples).
TINY = {
    "image_size": 32, "backbone": "tinynet", "batch_size": 16, "workers": 0, "device": "cpu",
    "baseline_epochs": 1, "warmup_epochs": 0, "unfreeze_epochs": 1,
    "unfreeze_set": ["unfreeze.start_epoch=1"], "promotion_min": -1.0, "promotion_min_cancers": 0,
    "evaluate_set": ["stats.resamples=200", "stats.subgroup_resamples=100"],
}


@pytest.fixture
def tiny_config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.fixture(autouse=True)
def _local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MAMMO_STORE_URI", raising=False)
    monkeypatch.delenv("MAMMO_PUSHGATEWAY_URL", raising=False)


def _kfp_outputs(workdir: Path, task: str) -> dict:
    """The executor output kfp.local wrote for ``task`` in the newest local run."""
    newest = max((workdir / "kfp-local").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((newest / task / "executor_output.json").read_text())


def test_local_run_promotes_the_first_model_and_not_an_equal_one(
    tiny_dataset: Path, tiny_config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    workdir = tmp_path / "work"
    first = run_local(str(workdir), str(tiny_dataset), "demo", tiny_config, [])
    out = capsys.readouterr().out
    for step in ("[1/5] split builder", "[2/5] baseline trainer", "[3/5] unfreeze trainer", "[4/5] evaluator", "[5/5] promoter"):
        assert step in out
    assert "baseline epoch 1/1: val AUC" in out and "KFP Executor" not in out  # quiet by default
    assert f"store {workdir}" in out and "model: promoted to" in out

    assert first["promoted"] and first["reason"].startswith("no production model yet")
    assert "promotion rule: paired_bootstrap on test.breast.auc" in out
    assert first["metrics"]["test"]["breast"]["ci"]["auc"]["low"] is not None
    production = storage.read_manifest(first["production_uri"])
    assert production.metadata["source_uri"] == first["best_uri"]
    assert production.metadata["run_id"] == first["run_id"] and production.metadata["report_uri"] == first["report_uri"]
    assert Path(first["report_uri"]).read_text().lstrip().lower().startswith("<!doctype html")
    for split in ("val", "test"):
        for level in ("image", "breast"):
            assert {"auc", "pr_auc", "pf1", "sensitivity", "specificity"} <= set(first["metrics"][split][level])
    for prefix in first["checkpoints"]:
        assert "best_auc.pt" in storage.read_manifest(prefix).objects

    # KFP artifacts of the evaluator: Metrics, ClassificationMetrics (confusion matrix), HTML report.
    evaluator = _kfp_outputs(workdir, "evaluator")
    artifacts = {name: a["artifacts"][0] for name, a in evaluator["artifacts"].items()}
    assert artifacts["metrics"]["metadata"]["test.breast.auc"] == first["metrics"]["test"]["breast"]["auc"]
    classification = artifacts["classification"]["metadata"]
    matrix = classification["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["no cancer", "cancer"]
    assert sum(map(sum, (r["row"] for r in matrix["rows"]))) == first["metrics"]["test"]["breast"]["n"]
    assert first["metrics"]["test"]["breast"]["auc"] is not None  # tiny_dataset's test split has both classes
    roc = classification["confidenceMetrics"]
    assert roc[0]["falsePositiveRate"] == 0.0 and roc[-1]["recall"] == 1.0
    assert Path(artifacts["report"]["uri"]).read_bytes() == Path(first["report_uri"]).read_bytes()
    assert artifacts["best"]["metadata"]["sha256"] == production.metadata["sha256"]
    baseline = _kfp_outputs(workdir, "baseline-trainer")["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert set(baseline) >= {"uri", "sha256", "metrics"}
    # Lineage: the trainers' Models name the run that made them; the KFP run id is in the
    # evaluation's metadata and in the run folder's list of KFP runs (not in the run id).
    assert baseline["run_id"] == first["run_id"] and baseline["run_uri"] == str(workdir / "runs" / first["run_id"] / "baseline_trainer")
    kfp_run = first["kfp_run_id"]
    assert kfp_run and "{{" not in kfp_run
    record = storage.get_json(str(workdir / "runs" / first["run_id"] / "kfp-runs" / f"{kfp_run}.json"))
    assert record["kfp_run_id"] == kfp_run and record["run_id"] == first["run_id"]

    # Same data, same settings: the same run id, nothing retrained, and the equal model is not
    # promoted again (the promoter step runs and records that decision).
    second = run_local(str(workdir), str(tiny_dataset), "demo", tiny_config, [])
    out = capsys.readouterr().out
    assert second["run_id"] == first["run_id"] and not second["promoted"]
    assert second["reason"] == "this model is already in production"
    assert "baseline: finished earlier at epoch 1" in out and "unfreeze: finished earlier at epoch 1" in out
    assert "[5/5] promoter" in out and "not promoted" in out
    assert storage.read_manifest(first["production_uri"]) == production
    records = [storage.get_json(u) for u in storage.list_objects(storage.join(str(workdir), "models", "mammo", "promotions"))]
    assert [r["promoted"] for r in records] == [True, False]
    assert records[-1]["reason"] == "this model is already in production"


def _grow(data: Path, patients: int, seed: int) -> set[str]:
    """Add new patients (table rows and PNGs) to the dataset in place; returns their ids."""
    extra = data.parent / f"extra-{seed}"
    write_synthetic_dataset(extra, patients=patients, image_size=32, prevalence=0.3, seed=seed)
    table = pd.read_csv(data / "train.csv", dtype={"patient_id": str, "image_id": str})
    added = pd.read_csv(extra / "train.csv", dtype={"patient_id": str, "image_id": str})
    added = added[~added["patient_id"].isin(table["patient_id"]) & ~added["image_id"].isin(table["image_id"])]
    for patient in added["patient_id"].unique():
        shutil.copytree(extra / "train_images" / patient, data / "train_images" / patient)
    pd.concat([table, added]).to_csv(data / "train.csv", index=False)
    return set(added["patient_id"])


def _split_of(prefix: str, local: Path) -> pd.DataFrame:
    path = storage.fetch_from_manifest(prefix, local, keys=[SPLIT_CSV])[SPLIT_CSV]
    return pd.read_csv(path, dtype={"patient_id": str}).groupby("patient_id")["split"].first()


def test_split_builder_on_grown_data_on_s3_keeps_every_old_patient_in_its_split(
    s3_env: S3Env, tiny_dataset: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    before = build_split(dataset_uri=str(data), store_uri=s3_env.uri, params={"data": str(data)})
    old = _split_of(before["split_uri"], tmp_path / "old")
    new_patients = _grow(data, patients=12, seed=7)
    assert new_patients

    after = build_split(dataset_uri=str(data), store_uri=s3_env.uri, params={"data": str(data)})
    prefix, manifest = latest_split(s3_env.uri, str(data))
    assert prefix == after["split_uri"] != before["split_uri"]
    assert manifest.metadata["previous_split_uri"] == before["split_uri"]
    grown = _split_of(prefix, tmp_path / "new")
    assert (grown.loc[old.index] == old).all()
    assert set(grown.index) == set(old.index) | new_patients
