"""Shared fixtures.

Storage and telemetry: real servers (see ``servers.py``), started once per session on free
ports of 127.0.0.1 and stopped at the end.

- ``s3_env``: a fresh bucket on s3rver (or on a real MinIO given by ``MAMMO_TEST_MINIO_*``), with
  ``MINIO_*`` set so that ``mammo.storage`` reaches it, and a short retry budget.
- ``s3_proxy``: ``s3_env`` reached through a ``FaultProxy`` (faults on demand, request log).
- ``moto_env``: a fresh bucket on moto's S3 server, which enforces conditional writes (s3rver
  ignores them); ``moto_env_listing`` the same with ``MAMMO_STORAGE_CONDITIONAL_WRITES=off``.
- ``pushgateway``: a Pushgateway with ``MAMMO_PUSHGATEWAY_URL`` pointing at it.

Data: ``tiny_dataset``, a small synthetic dataset written once per session. Every test (and
every process it starts) keeps its caches, the decoded-image cache included, in a session
folder that is removed at the end (``_session_cache_dir``), never in the home directory.

Nothing outside: ``_nothing_written_outside`` fails the session when a file under
``/var/cache/mammo``, ``$HOME/.cache`` or the working tree (but its ignored ``.mammo/``,
``.cache/``, ``.venv/``, ``.pytest_cache/`` and ``__pycache__/`` folders) appeared, changed or
went away while the tests ran. ``_print_left_as_found``: a test after which ``builtins.print``
is not the one it started with (kfp.local replaces it while a step runs) fails, naming itself,
and ``print`` is put back, so that later tests' output is not indented by it.
"""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import (
    MotoS3,
    FaultProxy,
    Pushgateway,
    S3Endpoint,
    S3Env,
    S3rver,
    empty_and_remove_bucket,
    minio_from_env,
)

TEST_RETRY_SECONDS = "2"
REPO = Path(__file__).resolve().parent.parent
#: Folders of the working tree the tests may write (the project's own ignored folders).
WRITABLE_IN_TREE = {".git", ".venv", ".mammo", ".cache", ".pytest_cache", "__pycache__"}


def _files_under(root: Path, skip: set[str] = frozenset()) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime_ns) of every file below ``root``, folders named in ``skip`` left out."""
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


def _snapshot() -> dict[str, tuple[int, int]]:
    places = [(Path("/var/cache/mammo"), set()), (Path.home() / ".cache", set()), (REPO, WRITABLE_IN_TREE)]
    found: dict[str, tuple[int, int]] = {}
    for root, skip in places:
        found.update(_files_under(root, skip))
    return found


_BEFORE: dict[str, tuple[int, int]] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Before collection imports anything: the snapshot, and matplotlib's font cache in a
    temporary folder (it would go to ``$HOME/.cache/matplotlib``)."""
    _BEFORE.update(_snapshot())
    # Under `make test`'s test processes (pytest-xdist), each gets its share of the cores for
    # torch's threads (and so every process it starts), instead of every process taking all.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="mammo-tests-matplotlib-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop("MPLCONFIGDIR"), ignore_errors=True))


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_outside() -> Iterator[None]:
    before = dict(_BEFORE)
    yield
    after = _snapshot()
    changed = sorted(
        [f"new {p}" for p in after.keys() - before.keys()]
        + [f"removed {p}" for p in before.keys() - after.keys()]
        + [f"changed {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    )
    if changed:
        shown = "\n  ".join(changed[:20]) + (f"\n  ... {len(changed) - 20} more" if len(changed) > 20 else "")
        pytest.fail(f"the tests wrote outside their temporary folders:\n  {shown}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory, _nothing_written_outside: None) -> Iterator[None]:
    previous = os.environ.get("MAMMO_CACHE_DIR")
    folder = tmp_path_factory.mktemp("mammo-cache")
    os.environ["MAMMO_CACHE_DIR"] = str(folder)
    yield
    shutil.rmtree(folder, ignore_errors=True)
    if previous is None:
        os.environ.pop("MAMMO_CACHE_DIR", None)
    else:
        os.environ["MAMMO_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic RSNA-layout dataset (40 patients, 32 px, nested layout), written once.

    Read-only for tests: copy it first to change anything.
    """
    from mammo.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    write_synthetic_dataset(root, patients=40, image_size=32, prevalence=0.3, seed=0)
    return root


_S3RVERS: list[S3rver] = []


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    external = minio_from_env()
    if external is not None:
        yield external
        return
    try:
        server = S3rver(tmp_path_factory.mktemp("s3rver") / "data")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    _S3RVERS.append(server)
    yield server.endpoint
    _S3RVERS.remove(server)
    server.stop()


@pytest.fixture(autouse=True)
def _print_left_as_found() -> Iterator[None]:
    before = builtins.print
    yield
    if builtins.print is not before:
        leaked, builtins.print = builtins.print, before
        pytest.fail(f"builtins.print was left replaced by {leaked!r}", pytrace=False)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    try:
        server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server.endpoint
    server.stop()


@pytest.fixture
def moto_env(moto_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    """A fresh bucket on moto's server; the store finds its conditional writes by probing."""
    yield from _fresh_bucket(moto_server, monkeypatch)


@pytest.fixture
def moto_env_listing(moto_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> S3Env:
    """``moto_env`` with conditional writes turned off: the listing-based lock on S3."""
    monkeypatch.setenv("MAMMO_STORAGE_CONDITIONAL_WRITES", "off")
    return moto_env


def _fresh_bucket(server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    bucket = f"mammo-test-{uuid.uuid4().hex[:12]}"
    client = server.client()
    client.make_bucket(bucket)
    _point_at(monkeypatch, server, server.endpoint)
    yield S3Env(server, bucket)
    empty_and_remove_bucket(client, bucket)


def _point_at(monkeypatch: pytest.MonkeyPatch, server: S3Endpoint, endpoint: str) -> None:
    monkeypatch.setenv("MINIO_ENDPOINT", endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", server.access_key)
    monkeypatch.setenv("MINIO_SECRET_KEY", server.secret_key)
    monkeypatch.setenv("MINIO_SECURE", "true" if server.secure else "false")
    monkeypatch.delenv("MINIO_REGION", raising=False)
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", TEST_RETRY_SECONDS)


@pytest.fixture
def s3_env(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    """A fresh bucket, and the environment that points ``mammo.storage`` at it."""
    for server in _S3RVERS:
        server.ensure_running()
    yield from _fresh_bucket(s3_server, monkeypatch)


@pytest.fixture
def s3_proxy(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_env.server)
    _point_at(monkeypatch, s3_env.server, proxy.endpoint)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def pushgateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    try:
        gateway = Pushgateway(Path(tmp_path_factory.mktemp("pushgateway")))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield gateway
    gateway.stop()


@pytest.fixture
def pushgateway(pushgateway_server: Pushgateway, monkeypatch: pytest.MonkeyPatch) -> Pushgateway:
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", pushgateway_server.url)
    return pushgateway_server


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system (tmpfs): room for a split, not for a ResNet checkpoint. Mounting
    needs root, which the test machines and CI have; elsewhere the test fails rather than skips."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"a small file system needs mount -t tmpfs (root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)



@pytest.fixture(scope="session")
def learnable_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, split) where learning is certain (``data_support.LEARNABLE``). Read-only."""
    from data_support import write_learnable

    return write_learnable(tmp_path_factory.mktemp("learnable"))
