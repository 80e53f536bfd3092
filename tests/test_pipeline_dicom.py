"""The whole pipeline through kfp.local with ``dataset_format: dicom`` at a non-square size: on the
local store (``mammo run --data DICOM_DIR`` detects the format) and on the S3 server (two
preprocessor shards, the DICOMs in the bucket; every step reports to the Pushgateway under the
run's id). The preprocessor's PNG dataset is what the split
builder and the trainers read, and the model trains at HxW."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mammo import storage
from mammo.data.table import read_table
from mammo.dicom.synth import write_synthetic_dicoms
from mammo.engine.checkpoint import load_checkpoint
from mammo.imagesize import parse_image_size
from mammo_pipelines.local_run import run_local
from servers import Pushgateway, S3Env

pytestmark = pytest.mark.slow  # real processes and whole runs: `make check` leaves them out

TINY = {
    "image_size": "40x32", "backbone": "tinynet", "batch_size": 16, "workers": 0, "device": "cpu",
    "baseline_epochs": 1, "warmup_epochs": 0, "unfreeze_epochs": 1, "unfreeze_set": ["unfreeze.start_epoch=1"],
}


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 small JPEG 2000 DICOMs of 24 patients in the RSNA layout, with train.csv."""
    root = tmp_path_factory.mktemp("dicom") / "rsna"
    write_synthetic_dicoms(root, count=48, size=(96, 72), compression="j2k", seed=5)
    return root


@pytest.fixture(autouse=True)
def _local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))
    # The preprocessor pseudonymises the ids with the site key (the Secret's value in a cluster).
    monkeypatch.setenv("MAMMO_PSEUDONYM_KEY", "test-site-key-0123456789abcdef")
    monkeypatch.delenv("MAMMO_STORE_URI", raising=False)
    monkeypatch.delenv("MAMMO_PUSHGATEWAY_URL", raising=False)


def _config(tmp_path: Path, **extra) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **extra}))
    return str(path)


def _output(workdir: Path, task: str) -> dict:
    newest = max((workdir / "kfp-local").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((newest / task / "executor_output.json").read_text())


def _check_trained_on(png_uri: str, result: dict, tmp_path: Path) -> None:
    manifest = storage.read_manifest(png_uri)
    assert manifest.metadata["rows"] == 48 and manifest.metadata["image_size"] == "40x32"
    local = storage.fetch_from_manifest(png_uri, tmp_path / "png")
    table = read_table(local["train.csv"])
    assert len(table) == 48 and {"crop_top", "source", "source_height"} <= set(table.columns)
    png = next(path for key, path in local.items() if key.endswith(".png"))
    assert Image.open(png).size == (32, 40)  # (width, height)
    prefix, _, name = result["best_uri"].rpartition("/")
    best = storage.fetch_from_manifest(prefix, tmp_path / "best", keys=[name])[name]
    checkpoint = load_checkpoint(best)
    assert parse_image_size(checkpoint["image_size"]) == (40, 32)
    assert checkpoint["model_config"]["backbone"] == "tinynet"  # the config file's backbone reached the trainers


def test_mammo_run_on_a_dicom_folder(dicoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    workdir = tmp_path / "work"
    result = run_local(str(workdir), str(dicoms), "demo", _config(tmp_path), [])
    out = capsys.readouterr().out
    assert "holds DICOM files: dataset_format dicom" in out
    assert "[dicom] preprocess plan ..." in out and "preprocess merge done" in out
    assert "[1/5] split builder" in out and "[4/5] evaluator" in out
    png_uri = _output(workdir, "preprocess-merge")["parameterValues"]["Output"]
    assert png_uri.startswith(str(workdir / "datasets" / "rsna-")) and "/png-40x32-" in png_uri
    _check_trained_on(png_uri, result, tmp_path)


def test_s3_run_with_two_preprocessor_shards(dicoms: Path, s3_env: S3Env, pushgateway: Pushgateway, tmp_path: Path) -> None:
    source = f"{s3_env.uri}/datasets/rsna-dicom"
    storage.upload_dir(dicoms, source)
    workdir = tmp_path / "work"
    # No promotion floor: a one-epoch model on 24 patients, promoted to show the S3 store's path.
    config = _config(tmp_path, dataset_format="dicom", preprocess_shards=2, promotion_min=-1.0, promotion_min_cancers=0)
    result = run_local(str(workdir), source, "demo", config, [], store=s3_env.uri)
    png_uri = _output(workdir, "preprocess-merge")["parameterValues"]["Output"]
    assert png_uri.startswith(f"{s3_env.uri}/datasets/rsna-dicom-")
    assert not storage.list_objects(storage.join(png_uri, ".preprocess"))  # journals merged away
    _check_trained_on(png_uri, result, tmp_path)
    assert result["promoted"] and result["production_uri"] == f"{s3_env.uri}/models/mammo/production"
    assert result["report_uri"].startswith(f"{s3_env.uri}/runs/{result['run_id']}/evaluator/")
    assert storage.exists(result["best_uri"]) and result["best_uri"].startswith(s3_env.uri)
    # every step that computes something reported to the Pushgateway under the run's id
    for component in ("split_builder", "baseline_trainer", "unfreeze_trainer", "evaluator"):
        pushed = {x.name: x.value for x in pushgateway.samples(component=component, run_id=result["run_id"])}
        assert pushed.get("mammo_step_success") == 1, (component, pushed)
        assert pushed["mammo_step_duration_seconds"] > 0
