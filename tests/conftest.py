"""Shared fixtures.

Storage and telemetry: real servers (see ``servers.py``), started once per session on free
ports of 127.0.0.1 and stopped at the end.

- ``s3_env``: a fresh bucket on s3rver (or on a real MinIO given by ``MAMMO_TEST_MINIO_*``), with
  ``MINIO_*`` set so that ``mammo.storage`` reaches it, and a short retry budget.
- ``s3_proxy``: ``s3_env`` reached through a ``FaultProxy`` (faults on demand, request log).
- ``pushgateway``: a Pushgateway with ``MAMMO_PUSHGATEWAY_URL`` pointing at it.

Data: ``tiny_dataset``, a small synthetic dataset written once per session. Every test (and
every process it starts) keeps its caches, the decoded-image cache included, in a session
folder that is removed at the end (``_session_cache_dir``), never in the home directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import (
    FaultProxy,
    Pushgateway,
    S3Endpoint,
    S3Env,
    S3rver,
    empty_and_remove_bucket,
    minio_from_env,
)

TEST_RETRY_SECONDS = "2"


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
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
    yield server.endpoint
    server.stop()


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
    bucket = f"mammo-test-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.make_bucket(bucket)
    _point_at(monkeypatch, s3_server, s3_server.endpoint)
    yield S3Env(s3_server, bucket)
    empty_and_remove_bucket(client, bucket)


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
