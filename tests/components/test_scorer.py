"""The scorer component and the mammo-scoring pipeline: the production model on a dataset of
studies without labels, from the local store and from the S3 server; the KFP step names a new
output folder per run; the pipeline runs through kfp.local."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from mammo import storage
from mammo_components.scorer import entrypoint as scorer
from mammo_components.scorer.step import scores_uri
from model_support import fake_checkpoint, publish_production, unlabelled
from servers import S3Env

PARAMS = {"device": "cpu", "workers": 0, "batch_size": 16}



def check_scores(result: dict, threshold: float, studies: Path) -> None:
    table = pd.read_csv(studies / "test.csv", dtype=str)
    breasts = pd.read_csv(io.BytesIO(storage.get_bytes(result["breasts_uri"])))
    assert result["images"] == result["scored_images"] == len(table)
    assert result["breasts"] == len(breasts) == table.groupby(["patient_id", "laterality"]).ngroups
    assert result["model"]["kind"] == "production" and result["model"]["threshold"] == threshold
    assert (breasts["flag"] == (breasts["prob"] >= threshold).astype(int)).all()
    assert result["flagged_breasts"] == int(breasts["flag"].sum())
    assert "label" not in breasts.columns
    manifest = storage.read_manifest(result["out_uri"])
    assert set(manifest.objects) == {"breasts.csv", "images.csv", "result.json"}


def test_scorer_scores_new_studies_from_the_local_store(tiny_dataset: Path, tmp_path: Path) -> None:
    studies = unlabelled(tiny_dataset, tmp_path / "incoming")
    store = str(tmp_path / "store")
    production = storage.production_model_uri(store, "m")
    publish_production(production, fake_checkpoint(tmp_path / "c.pt"), threshold=0.45, work=tmp_path)
    out = scores_uri(store, "m", str(studies), now=0)
    assert out == f"{store}/scores/m/19700101T000000Z-incoming-{out.rsplit('-', 1)[-1]}"
    result = scorer.run(dataset_uri=str(studies), model_uri=production, out_uri=out, params=PARAMS,
                        workdir=str(tmp_path / "pod"))
    check_scores(result, 0.45, studies)


def test_scorer_reads_everything_from_s3(s3_env: S3Env, tiny_dataset: Path, tmp_path: Path) -> None:
    studies = unlabelled(tiny_dataset, tmp_path / "incoming")
    dataset_uri = f"{s3_env.uri}/datasets/incoming"
    storage.upload_dir(studies, dataset_uri)
    production = storage.production_model_uri(s3_env.uri, "m")
    publish_production(production, fake_checkpoint(tmp_path / "c.pt"), threshold=0.5, work=tmp_path)
    result = scorer.run(dataset_uri=dataset_uri, model_uri=production, out_uri=f"{s3_env.uri}/scores/m/run-1",
                        params=PARAMS, workdir=str(tmp_path / "pod"))
    check_scores(result, 0.5, studies)
    assert storage.get_json(f"{s3_env.uri}/scores/m/run-1/result.json") == result


def test_scorer_without_a_production_model_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    from mammo.errors import MammoError

    with pytest.raises(MammoError) as err:
        scorer.run(dataset_uri=str(tiny_dataset), model_uri=str(tmp_path / "store/models/m/production"),
                   out_uri=str(tmp_path / "out"), params=PARAMS, workdir=str(tmp_path / "pod"))
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.slow
def test_scoring_pipeline_runs_through_kfp_local(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kfp import local

    from mammo_pipelines.profiles import get_profile
    from mammo_pipelines.scoring import build_pipeline

    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.delenv("MAMMO_PUSHGATEWAY_URL", raising=False)
    studies = unlabelled(tiny_dataset, tmp_path / "incoming")
    store = str(tmp_path / "store")
    publish_production(storage.production_model_uri(store, "mammo"), fake_checkpoint(tmp_path / "c.pt"),
                       threshold=0.4, work=tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    pipeline = build_pipeline(get_profile("kind", train_image="mammo-train", eval_image="mammo-eval"))
    task = pipeline(dataset_uri=str(studies), store_uri=store, device="cpu", workers=0, batch_size=16)
    metadata = task.outputs["Output"].metadata
    assert metadata["out_uri"].startswith(f"{store}/scores/mammo/")
    check_scores(storage.get_json(storage.join(metadata["out_uri"], "result.json")), 0.4, studies)


def test_scorer_scores_an_archive_export_of_dicoms_from_s3(s3_env: S3Env, tmp_path: Path) -> None:
    """A DICOM export in the bucket (no table): fetched, converted for the run, scored; the
    scores carry the archive's ids and UIDs, and the pod's scratch conversion is gone."""
    import pydicom

    from mammo.dicom.synth import write_synthetic_dicoms

    export = tmp_path / "export"
    files = write_synthetic_dicoms(export, count=4, size=(96, 64), compression="explicit")
    (export / "train.csv").unlink()
    dataset_uri = f"{s3_env.uri}/datasets/export"
    storage.upload_dir(export, dataset_uri)
    production = storage.production_model_uri(s3_env.uri, "m")
    publish_production(production, fake_checkpoint(tmp_path / "c.pt"), threshold=0.45, work=tmp_path)
    out = scores_uri(s3_env.uri, "m", dataset_uri, now=0)
    result = scorer.run(dataset_uri=dataset_uri, model_uri=production, out_uri=out, params=PARAMS,
                        workdir=str(tmp_path / "pod"))
    assert result["table"] == "DICOM files" and result["scored_images"] == 4
    assert result["dicom"] == {"converted": 4, "skipped": {}, "unreadable": 0}
    images = pd.read_csv(io.BytesIO(storage.get_bytes(result["images_uri"])), dtype=str)
    headers = [pydicom.dcmread(f) for f in files]
    assert set(images["patient_id"]) == {str(h.PatientID) for h in headers}
    assert set(images["sop_instance_uid"]) == {str(h.SOPInstanceUID) for h in headers}
    assert not list((tmp_path / "pod").rglob("mammo-predict-dicom-*"))
