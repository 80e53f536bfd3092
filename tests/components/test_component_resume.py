"""A trainer pod killed after an epoch and started again with the same run URI resumes from
what it had put in storage, in a new, empty working directory, and finishes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ArtifactNotFoundError
from mammo_components.baseline_trainer import entrypoint as baseline_trainer

from component_support import PARAMS, TRAINER_FILES, Staged, assert_published
from servers import Pushgateway

pytestmark = pytest.mark.slow  # real processes and whole runs: `make check` leaves them out

RUN_ID = "resume-1"
TWO_EPOCHS = {**PARAMS, "baseline_epochs": 2, "warmup_epochs": 1}


@contextmanager
def silent_pushgateway() -> Iterator[str]:
    """A Pushgateway that accepts connections and never answers: the trainer's push after an
    epoch hangs (until a timeout far away), holding it right after it committed that epoch
    to storage; that is where the test kills it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def start_trainer(staged: Staged, run_uri: str, workdir: Path, gateway: str) -> subprocess.Popen[bytes]:
    params = workdir.parent / "params.json"
    params.write_text(json.dumps(TWO_EPOCHS))
    env = {**os.environ, "MAMMO_PUSHGATEWAY_URL": gateway, "MAMMO_PUSHGATEWAY_TIMEOUT_SECONDS": "300"}
    args = [
        sys.executable, "-m", "mammo_components.baseline_trainer", "--dataset", staged.dataset_uri,
        "--split", staged.split_uri, "--out", run_uri, "--params-json", str(params),
        "--workdir", str(workdir),
    ]
    with open(workdir.parent / "pod-1.log", "wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(uri: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240
    while not storage.exists(uri):
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before {uri} appeared:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{uri} did not appear:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_killed_trainer_resumes_from_storage(
    staged: Staged, pushgateway: Pushgateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_uri = f"{staged.s3.uri}/runs/{RUN_ID}/baseline_trainer"
    with silent_pushgateway() as gateway:
        proc = start_trainer(staged, run_uri, tmp_path / "pod-1", gateway)
        try:
            wait_for(f"{run_uri}/last.pt", proc, tmp_path / "pod-1.log")
        finally:
            proc.kill()  # SIGKILL, as when a node goes away: no clean-up runs
            proc.wait()

    # epoch 1 is in storage, complete, but nothing is published
    with pytest.raises(ArtifactNotFoundError):
        storage.read_manifest(run_uri)
    first = storage.get_json(f"{run_uri}/history.json")
    assert [r["epoch"] for r in first] == [1]
    assert storage.exists(f"{run_uri}/best_auc.pt") and storage.exists(f"{run_uri}/topk_epoch001.pt")

    caplog.set_level("INFO")
    result = baseline_trainer.run(
        dataset_uri=staged.dataset_uri, split_uri=staged.split_uri, out_uri=run_uri,
        params=TWO_EPOCHS, workdir=str(tmp_path / "pod-2"),
    )
    assert any("resuming" in r.getMessage() and "after epoch 1" in r.getMessage() for r in caplog.records)
    assert result["epochs_run"] == 2
    history = storage.get_json(f"{run_uri}/history.json")
    assert history[0] == first[0]  # epoch 1 (its wall-clock seconds included) was not trained again
    assert history[1]["epoch"] == 2
    assert_published(run_uri, set(result["checkpoints"]) | TRAINER_FILES)
    # top_k=1 by validation loss: the resumed pod deletes the file the killed one uploaded
    # when epoch 2 is better, in storage as well
    losses = [r["val"]["image"]["loss"] for r in history]
    best_epoch = 1 + losses.index(min(losses))
    assert {n for n in result["checkpoints"] if n.startswith("topk_")} == {f"topk_epoch{best_epoch:03d}.pt"}
    pushed = {s.name: s.value for s in pushgateway.samples(component="baseline_trainer", run_id=RUN_ID)}
    assert (pushed["mammo_epoch"], pushed["mammo_step_success"]) == (2, 1)
