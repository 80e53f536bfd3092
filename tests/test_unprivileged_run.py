"""`mammo run` as a user who is not root, with a HOME of its own: it finishes, and it writes
nothing outside its work directory and that HOME (no /var/cache, no ~/.cache of another user,
no leftovers in /tmp).

As root, the run is started through ``setpriv`` as uid/gid 65534 (nobody) keeping only
CAP_DAC_READ_SEARCH, which lets it read this checkout, the virtual environment and the test's
dataset wherever they are (a fresh clone under a 0700 folder) but write only where nobody may:
its own folders and the world-writable ones, which the test then searches. As another user,
the run is started as that user with the same fresh HOME.

The same run is the one a second ``mammo run`` on its work directory meets: the second fails at
once with one line naming the holder, before writing anything (two at once used to share a log
file and leave orphaned ``.tmp`` hard links), and the first finishes with no litter and lets go
of the work directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mammo_pipelines.local_run import LOCK_NAME, workdir_lock
from test_pipeline_local import TINY

pytestmark = pytest.mark.slow  # a whole (tiny) run through kfp.local

NOBODY = 65534
#: Where an unprivileged user can write besides its own folders.
WORLD_WRITABLE = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))


def _as_unprivileged() -> tuple[list[str], int]:
    """The command prefix that drops root, and the uid the run will have."""
    if os.geteuid() != 0:
        return [], os.geteuid()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root: setpriv (util-linux) is needed to run `mammo run` as an unprivileged user")
    return [
        setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search",
    ], NOBODY


def _owned_by(uid: int, roots: tuple[Path, ...], inside: tuple[Path, ...]) -> list[Path]:
    """Files and folders under ``roots`` owned by ``uid``, except those under ``inside``."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root, onerror=lambda _: None):
            here = Path(folder)
            if any(here == keep or keep in here.parents for keep in inside):
                dirs[:] = []
                continue
            for name in (*dirs, *files):
                path = here / name
                try:
                    if path.lstat().st_uid == uid and not any(keep == path or keep in path.parents for keep in inside):
                        found.append(path)
                except OSError:
                    pass
    return found


def test_mammo_run_as_an_unprivileged_user_writes_only_its_work_directory_and_home(
    tiny_dataset: Path, tmp_path: Path,
) -> None:
    prefix, uid = _as_unprivileged()
    work, home = tmp_path / "work", tmp_path / "home"
    for folder in (work, home):
        folder.mkdir()
        if uid != os.geteuid():
            os.chown(folder, uid, uid)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    config.chmod(0o644)
    before = set(_owned_by(uid, WORLD_WRITABLE, (work, home)))
    # A bare environment, as a new user's shell has: no MAMMO_* or MINIO_* settings.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    mammo = Path(sys.executable).with_name("mammo")
    command = [*prefix, str(mammo), "run", "--workdir", str(work), "--data", str(tiny_dataset), "--config", str(config)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = work / LOCK_NAME, time.monotonic() + 120
    while not (lock.exists() and lock.read_text().startswith("pid ")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and f"another mammo run holds {work} (pid " in second.stderr
    assert "mammo run: store" not in second.stdout  # refused before anything started

    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert "[5/5] promoter" in out and "finished in" in out and "model: promoted to" in out
    assert (work / "runs").is_dir() and (work / "splits").is_dir()
    assert len(list((work / "logs").iterdir())) == 1  # one log, the first run's
    assert [p for p in work.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")] == []
    with workdir_lock(work):  # the kernel let go of the lock with the run
        pass
    left = sorted(set(_owned_by(uid, WORLD_WRITABLE, (work, home))) - before)
    assert left == [], f"written outside the work directory and HOME: {left[:10]}"
    # The steps' scratch folder of this run is gone with it.
    assert not list((work / "cache").glob("steps-tmp-*"))
