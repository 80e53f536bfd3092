"""Faults at the component level: each ends in one clear line (or, for a brief outage, in a
retried success), and nothing is published by a step that failed."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ArtifactNotFoundError, IntegrityError, StorageError
from mammo_components.baseline_trainer import entrypoint as baseline_trainer
from mammo_components.evaluator import entrypoint as evaluator
from mammo_components.split_builder import entrypoint as split_builder
from mammo_components.unfreeze_trainer import entrypoint as unfreeze_trainer

from component_support import PARAMS, Staged
from servers import FaultProxy, Pushgateway, S3Env, free_port


def test_missing_dataset_names_the_object(s3_env: S3Env, tmp_path: Path) -> None:
    missing = f"{s3_env.uri}/datasets/nothing-here"
    with pytest.raises(ArtifactNotFoundError, match=f"^artifact not found: {missing}/train.csv$"):
        split_builder.run(dataset_uri=missing, store_uri=s3_env.uri, params=PARAMS, workdir=str(tmp_path))


def test_missing_split_fails_the_step_and_is_pushed_as_failure(
    staged: Staged, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    split = f"{staged.s3.uri}/splits/0123abcd"
    run_uri = f"{staged.s3.uri}/runs/fail-1/baseline_trainer"
    with pytest.raises(ArtifactNotFoundError, match=f"^artifact not found: {split}/manifest.json "):
        baseline_trainer.run(
            dataset_uri=staged.dataset_uri, split_uri=split, out_uri=run_uri, params=PARAMS, workdir=str(tmp_path)
        )
    assert storage.list_objects(run_uri) == []
    pushed = {s.name: s.value for s in pushgateway.samples(component="baseline_trainer", run_id="fail-1")}
    assert pushed["mammo_step_success"] == 0


def test_missing_image_is_named_before_training(staged: Staged, tmp_path: Path) -> None:
    client = staged.s3.server.client()
    victim = next(
        o.object_name for o in client.list_objects(staged.s3.bucket, prefix="datasets/synth/", recursive=True)
        if str(o.object_name).endswith(".png")
    )
    client.remove_object(staged.s3.bucket, victim)
    image_id = Path(victim).stem
    with pytest.raises(ArtifactNotFoundError, match=f"no PNG for image_id {image_id} \\(1 of 160 images"):
        evaluator.run(
            dataset_uri=staged.dataset_uri, split_uri=staged.split_uri, checkpoint_uris=["s3://x/never-read.pt"],
            out_uri=f"{staged.s3.uri}/runs/r/evaluator", params=PARAMS, workdir=str(tmp_path),
        )


def test_wrong_keys_are_a_clear_error(staged: Staged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # s3rver checks the access key only; a real MinIO rejects a wrong secret as well
    monkeypatch.setenv("MINIO_ACCESS_KEY", "not-the-key")
    monkeypatch.setenv("MINIO_SECRET_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="access denied: check MINIO_ACCESS_KEY/MINIO_SECRET_KEY"):
        split_builder.run(
            dataset_uri=staged.dataset_uri, store_uri=staged.s3.uri, params=PARAMS, workdir=str(tmp_path)
        )


@pytest.mark.parametrize("component", ["unfreeze_trainer", "evaluator"])
def test_corrupted_checkpoint_is_refused(staged: Staged, tmp_path: Path, component: str) -> None:
    """A published checkpoint whose bytes changed behind the store's back (bit rot, a stray
    overwrite) is caught by its sha256 before anything loads it."""
    folder = f"{staged.s3.uri}/runs/r/baseline_trainer"
    good = tmp_path / "best_auc.pt"
    good.write_bytes(b"checkpoint bytes" * 4096)
    storage.publish({"best_auc.pt": good}, folder)
    bad = b"checkpoint bytez" * 4096
    staged.s3.server.client().put_object(staged.s3.bucket, "runs/r/baseline_trainer/best_auc.pt", io.BytesIO(bad), len(bad))
    uri = f"{folder}/best_auc.pt"
    common = {"dataset_uri": staged.dataset_uri, "split_uri": staged.split_uri, "params": PARAMS, "workdir": str(tmp_path / "pod")}
    with pytest.raises(IntegrityError, match=f"^integrity check failed for {uri}: "):
        if component == "unfreeze_trainer":
            unfreeze_trainer.run(init_uri=uri, out_uri=f"{staged.s3.uri}/runs/r/unfreeze_trainer", **common)
        else:
            evaluator.run(checkpoint_uris=[uri], out_uri=f"{staged.s3.uri}/runs/r/evaluator", **common)
    assert storage.list_objects(f"{staged.s3.uri}/runs/r/{component}") == []


def test_storage_down_mid_transfer_is_retried_then_a_clear_error(
    staged: Staged, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    s3_proxy.cut_after(20_000, "download")  # goes down while the images come in, stays down
    run_uri = f"{staged.s3.uri}/runs/r/baseline_trainer"
    with pytest.raises(StorageError, match=r"^storage endpoint unreachable: .* after \d+ attempts"):
        baseline_trainer.run(
            dataset_uri=staged.dataset_uri, split_uri=staged.split_uri, out_uri=run_uri, params=PARAMS,
            workdir=str(tmp_path),
        )
    s3_proxy.up()
    assert storage.list_objects(run_uri) == []


def test_brief_storage_outage_is_ridden_out(
    staged: Staged, s3_proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3_proxy.down()
    threading.Timer(0.5, s3_proxy.up).start()
    result = split_builder.run(
        dataset_uri=staged.dataset_uri, store_uri=staged.s3.uri, params=PARAMS, workdir=str(tmp_path)
    )
    assert result["split_uri"] == staged.split_uri and result["reused"]
    assert any(r.name == "mammo.storage.retry" for r in caplog.records)


def test_training_finishes_when_the_pushgateway_is_down(
    synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    store = tmp_path / "store"  # the local backend: this is about telemetry, not S3
    split = split_builder.run(dataset_uri=str(synth_data), store_uri=str(store), params=PARAMS, workdir=str(tmp_path / "a"))
    result = baseline_trainer.run(
        dataset_uri=str(synth_data), split_uri=split["split_uri"], out_uri=str(store / "runs" / "down-1" / "baseline_trainer"),
        params=PARAMS, workdir=str(tmp_path / "b"),
    )
    assert result["epochs_run"] == 1
    assert set(storage.read_manifest(result["run_uri"]).objects) >= set(result["checkpoints"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "mammo.telemetry" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not reachable" in warnings[0]
