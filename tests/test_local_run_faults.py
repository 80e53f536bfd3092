"""`mammo run` under faults, as real processes on tiny data: a work directory on a full disk.
(Two runs on one work directory: tests/test_unprivileged_run.py.)

- A full disk used to surface as a torch traceback, retried four times without ever saying "no
  space left on device": now it is said once, with the file and the free space, and the step is
  not retried on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline_local import TINY

pytestmark = pytest.mark.slow  # real processes and whole runs: `make check` leaves them out

MAMMO = str(Path(sys.executable).with_name("mammo"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "MAMMO_"))}
    return {**env, "OMP_NUM_THREADS": "1"}


def _run(workdir: Path, data: Path, config: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([MAMMO, "run", "--workdir", str(workdir), "--data", str(data), "--config", config],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_full_disk_in_a_run_is_said_once_and_not_retried(tiny_dataset: Path, tmp_path: Path, small_disk: Path) -> None:
    """A resnet18 here: its 45 MB checkpoint is what does not fit the 8 MiB disk."""
    config = tmp_path / "resnet.yaml"
    config.write_text(yaml.safe_dump({**TINY, "backbone": "resnet18"}))
    proc = _run(small_disk / "work", tiny_dataset, str(config), _env(tmp_path))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 2, err[-3000:]
    assert err.count("\n") == 1 and "no space left on device writing " in err and "free of 8.0 MiB on" in err, err
    assert err.startswith("mammo: error: baseline trainer failed: DiskFullError: ")
    assert out.count("[2/5] baseline trainer ...") == 1 and out.count("FAILED") == 1, out


@pytest.mark.parametrize("verbose", [False, True])
def test_a_run_log_on_a_full_disk_ends_with_a_note_not_a_traceback(verbose: bool) -> None:
    """The run log fills up with the disk (the fault a step is reporting at that moment): the
    progress filter says so once on screen and goes on reading the steps' output, so the step's
    own one-line error still reaches the user. /dev/full answers every write with ENOSPC."""
    import io

    from mammo_pipelines.local import ProgressFilter

    screen = io.StringIO()
    progress = ProgressFilter(open("/dev/full", "w", buffering=1), screen, verbose)
    progress.write("Executing task 'baseline-trainer'\n")
    progress.write("  mammo.errors.DiskFullError: no space left on device writing last.pt\n")
    progress.flush()
    progress.close_log()
    assert screen.getvalue().count("could not be written further (No space left on device); it is incomplete") == 1
    assert progress.state.current == "baseline-trainer"
    assert progress.state.error == "DiskFullError: no space left on device writing last.pt"
