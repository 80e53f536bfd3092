"""The preprocessor component on the S3 test server: DICOMs in a bucket, two shards in separate
working folders (as separate pods), the merge, the published PNG dataset as the trainers fetch
it, an unchanged rerun that converts nothing, the KFP step functions, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mammo import storage
from mammo.dicom.options import PreprocessConfig
from mammo.dicom.synth import write_synthetic_dicoms
from mammo.errors import ArtifactNotFoundError, ConfigError, DataError
from mammo_components.cli import main
from mammo_components.inputs import fetch_dataset, read_dataset_table
from mammo_components.preprocessor.entrypoint import output_uri, plan, run
from mammo_components.preprocessor.step import run_merge_step, run_plan_step, run_png_step, run_step
from servers import S3Env

OPTIONS = PreprocessConfig(image_size="48x32", keep_identifiers=True)


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicom") / "rsna"
    write_synthetic_dicoms(root, count=10, size=(96, 72), compression="j2k", seed=2)
    return root


@pytest.fixture
def source(s3_env: S3Env, dicom_dir: Path) -> str:
    uri = f"{s3_env.uri}/datasets/rsna-dicom"
    storage.upload_dir(dicom_dir, uri)
    return uri


def test_shards_in_separate_pods_then_merge_publish_the_png_dataset(source: str, s3_env: S3Env, tmp_path: Path) -> None:
    out = output_uri(s3_env.uri, source, OPTIONS)
    assert out.startswith(f"{s3_env.uri}/datasets/rsna-dicom-") and "/png-48x32-" in out
    assert plan(dataset_uri=source, shards=2) == [0, 1]
    parts = [
        run(dataset_uri=source, out_uri=out, options=OPTIONS, shard=k, shards=2, workers=0,
            workdir=str(tmp_path / f"pod-{k}"))
        for k in range(2)
    ]
    assert sum(p["converted"] for p in parts) == 10
    merged = run(dataset_uri=source, out_uri=out, options=OPTIONS, merge_only=True)
    assert (merged["rows"], merged["bad_files"]) == (10, 0)
    manifest = storage.read_manifest(out)
    assert manifest.metadata["component"] == "preprocessor" and len(manifest.objects) == 12
    # What a trainer pod does with it: fetch through the manifest (sha256 verified).
    local = fetch_dataset(out, tmp_path / "trainer", images=True)
    table = read_dataset_table(local, out)
    assert len(table) == 10 and all((local / p / f"{i}.png").is_file() for p, i in zip(table.patient_id, table.image_id))
    # Unchanged input: nothing converted again, in a fresh pod.
    again = run(dataset_uri=source, out_uri=out, options=OPTIONS, workers=0, workdir=str(tmp_path / "pod-again"))
    assert (again["converted"], again["unchanged"], again["rows"]) == (0, 10, 10)


@pytest.mark.slow
def test_pipeline_steps_compute_the_same_dataset(source: str, s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))
    shards = run_plan_step(dataset_uri=source, store_uri=s3_env.uri, image_size="48x32", preprocess_shards=3,
                           preprocess_set=["align=left", "keep_identifiers=true"])
    assert shards == [0, 1, 2]
    parts = [run_step(dataset_uri=source, store_uri=s3_env.uri, image_size="48x32", preprocess_set=["align=left", "keep_identifiers=true"],
                      shard=k, shards=3) for k in shards]
    out = run_merge_step(dataset_uri=source, store_uri=s3_env.uri, image_size="48x32", preprocess_set=["align=left", "keep_identifiers=true"],
                         parts=parts)
    assert out == output_uri(s3_env.uri, source, PreprocessConfig(image_size="48x32", align="left"))
    record = json.loads(storage.get_bytes(storage.join(out, "preprocess.json")))
    assert record["settings"]["align"] == "left"
    assert {r["record"]["chest_wall"] for r in record["records"].values()} == {"left", "right"}
    assert all(int(r["record"]["flipped"]) == (r["record"]["chest_wall"] == "right") for r in record["records"].values())
    with pytest.raises(ConfigError, match="preprocess_set: alig"):
        run_plan_step(dataset_uri=source, store_uri=s3_env.uri, image_size="48x32", preprocess_shards=1,
                      preprocess_set=["alig=left"])
    assert run_png_step(dataset_uri=out) == out
    with pytest.raises(ArtifactNotFoundError, match="for DICOM input set dataset_format=dicom"):
        run_png_step(dataset_uri=source.replace("rsna-dicom", "nothing-here"))


def test_bad_file_in_the_bucket_is_one_line_naming_its_uri(
    s3_env: S3Env, dicom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "rsna"
    shutil.copytree(dicom_dir, broken)
    victim = sorted((broken / "train_images").rglob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    uri = f"{s3_env.uri}/datasets/broken"
    storage.upload_dir(broken, uri)
    out = f"{s3_env.uri}/datasets/broken-png"
    code = main(["preprocessor", "--dataset", uri, "--out", out, "--workers", "0", "--image-size", "48x32", "--keep-identifiers"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    key = victim.relative_to(broken).as_posix()
    assert code == 2 and f"{uri}/{key}" in err and "mammo: error:" in err
    assert not storage.exists(storage.join(out, "manifest.json"))
    code = main(["preprocessor", "--dataset", uri, "--out", out, "--workers", "0", "--image-size", "48x32",
                 "--bad-files", "skip", "--keep-identifiers"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and (result["rows"], result["bad_files"]) == (9, 1)
    with pytest.raises(DataError, match="no DICOM files"):
        plan(dataset_uri=f"{s3_env.uri}/datasets/empty", shards=1)
