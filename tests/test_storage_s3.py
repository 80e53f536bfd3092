"""S3 backend against a real server: multipart, transfer counting and faults.

Faults are real: the ``FaultProxy`` between client and server drops connections mid-transfer,
refuses connections while "down" and answers 503 SlowDown; credentials and buckets are checked by
the server itself. (s3rver checks the access key but not the v4 signature, so the wrong-keys test
changes both keys; a real MinIO given by MAMMO_TEST_MINIO_* rejects either.)
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ArtifactNotFoundError, ConfigError, StorageError

from servers import FaultProxy, S3Env

RETRY_LOGGER = "mammo.storage.retry"


def _object_gets(proxy: FaultProxy, bucket: str) -> list[str]:
    """Object downloads seen by the proxy (not listings, which are ``GET /bucket?...``)."""
    return [r for r in proxy.requests if r.startswith(f"GET /{bucket}/")]


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == RETRY_LOGGER]


def test_large_files_go_up_in_parts(
    s3_proxy: FaultProxy, s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMMO_STORAGE_PART_SIZE_MIB", "5")
    big = tmp_path / "big.pt"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    small = tmp_path / "small.pt"
    small.write_bytes(os.urandom(1024))
    storage.put_file(big, f"{s3_env.uri}/ckpt/big.pt")
    storage.put_file(small, f"{s3_env.uri}/ckpt/small.pt")

    parts = {
        int(m.group(1))
        for r in s3_proxy.requests
        if r.startswith(f"PUT /{s3_env.bucket}/ckpt/big.pt?")
        and (m := re.search(r"partNumber=(\d+)", r))
    }
    assert parts == {1, 2, 3}
    assert f"PUT /{s3_env.bucket}/ckpt/small.pt" in s3_proxy.requests  # one plain PUT
    storage.get_file(f"{s3_env.uri}/ckpt/big.pt", tmp_path / "back.pt")  # sha256 verified
    assert (tmp_path / "back.pt").read_bytes() == big.read_bytes()


def test_unchanged_objects_are_not_downloaded_again(
    s3_proxy: FaultProxy, s3_env: S3Env, tmp_path: Path
) -> None:
    prefix = f"{s3_env.uri}/datasets/d1"
    for i in range(6):
        storage.put_bytes(f"image {i}".encode(), f"{prefix}/{i}.png")
    storage.download_prefix(prefix, tmp_path / "cache")
    assert len(_object_gets(s3_proxy, s3_env.bucket)) == 6

    s3_proxy.requests.clear()
    storage.download_prefix(prefix, tmp_path / "cache")
    assert _object_gets(s3_proxy, s3_env.bucket) == []

    storage.put_bytes(b"new pixels", f"{prefix}/3.png")
    storage.download_prefix(prefix, tmp_path / "cache")
    assert _object_gets(s3_proxy, s3_env.bucket) == [f"GET /{s3_env.bucket}/datasets/d1/3.png"]
    assert (tmp_path / "cache" / "3.png").read_bytes() == b"new pixels"


def test_manifest_fetch_skips_cached_objects(
    s3_proxy: FaultProxy, s3_env: S3Env, tmp_path: Path
) -> None:
    prefix = f"{s3_env.uri}/runs/r1/baseline"
    storage.publish({"last.pt": _file(tmp_path / "last.pt", b"w")}, prefix)
    storage.fetch_from_manifest(prefix, tmp_path / "reader")
    s3_proxy.requests.clear()
    storage.fetch_from_manifest(prefix, tmp_path / "reader")
    assert _object_gets(s3_proxy, s3_env.bucket) == [
        f"GET /{s3_env.bucket}/runs/r1/baseline/manifest.json"
    ]


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_server_lost_mid_download_is_retried_until_it_is_back(
    s3_proxy: FaultProxy,
    s3_env: S3Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "30")
    data = os.urandom(3 * 1024 * 1024)
    uri = f"{s3_env.uri}/runs/r1/last.pt"
    storage.put_bytes(data, uri)

    s3_proxy.cut_after(512 * 1024, "download")
    back = threading.Timer(1.0, s3_proxy.up)
    back.start()
    try:
        storage.get_file(uri, tmp_path / "last.pt")
    finally:
        back.join()
    assert (tmp_path / "last.pt").read_bytes() == data
    assert len(_object_gets(s3_proxy, s3_env.bucket)) >= 2
    assert any("connection" in message for message in _retries(caplog))


def test_server_gone_mid_upload_fails_clearly_and_publishes_nothing(
    s3_proxy: FaultProxy, s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "1")
    out = tmp_path / "run"
    out.mkdir()
    _file(out / "last.pt", os.urandom(3 * 1024 * 1024))
    prefix = f"{s3_env.uri}/runs/r1/baseline"
    storage.list_objects(prefix)  # connect (and look up the region) before the fault
    s3_proxy.cut_after(1024 * 1024, "upload")
    with pytest.raises(StorageError) as err:
        storage.publish(out, prefix)
    message = str(err.value)
    match = re.match(
        rf"^storage endpoint unreachable: {s3_proxy.endpoint} after (\d+) attempts", message
    )
    assert match and int(match.group(1)) >= 2, message
    assert "\n" not in message
    s3_proxy.up()
    # Readers see nothing of the step. (s3rver even keeps the truncated body of the aborted
    # PUT as an object, which real S3/MinIO never do; the manifest is what makes it invisible.)
    with pytest.raises(ArtifactNotFoundError, match="no published outputs"):
        storage.fetch_from_manifest(prefix, tmp_path / "reader")


def test_slowdown_is_retried(
    s3_proxy: FaultProxy, s3_env: S3Env, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"{s3_env.uri}/x.json"
    storage.put_json({"a": 1}, uri)
    s3_proxy.slow_down(2)
    assert storage.get_json(uri) == {"a": 1}
    assert len(_retries(caplog)) == 2
    assert all("SlowDown" in m or "HTTP 503" in m for m in _retries(caplog))


def test_endless_slowdown_gives_up_within_the_budget(
    s3_proxy: FaultProxy, s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "1")
    s3_proxy.slow_down(10_000)
    with pytest.raises(StorageError, match=r"^storage endpoint failing: .* after \d+ attempts$"):
        storage.get_bytes(f"{s3_env.uri}/x.json")


def test_wrong_keys_fail_at_once(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    storage.put_bytes(b"x", f"{s3_env.uri}/x")
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "60")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "not-the-key")
    monkeypatch.setenv("MINIO_SECRET_KEY", "not-the-secret")
    with pytest.raises(
        StorageError, match="^access denied: check MINIO_ACCESS_KEY/MINIO_SECRET_KEY"
    ):
        storage.get_bytes(f"{s3_env.uri}/x")
    assert _retries(caplog) == []


def test_https_against_plain_http_fails_at_once(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "60")
    monkeypatch.setenv("MINIO_SECURE", "true")
    with pytest.raises(StorageError, match="TLS handshake .* check MINIO_SECURE"):
        storage.exists(f"{s3_env.uri}/x")
    assert _retries(caplog) == []


@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_missing_bucket_is_named(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, region: str | None
) -> None:
    if region:
        monkeypatch.setenv("MINIO_REGION", region)
    uri = "s3://mammo-no-such-bucket/runs/r1/last.pt"
    for call in (
        lambda: storage.stat(uri),
        lambda: storage.get_bytes(uri),
        lambda: storage.put_bytes(b"x", uri),
        lambda: storage.list_objects("s3://mammo-no-such-bucket/runs"),
    ):
        with pytest.raises(StorageError, match="^bucket not found: mammo-no-such-bucket ") as err:
            call()
        assert not isinstance(err.value, ArtifactNotFoundError)


def test_unreachable_endpoint_is_reported_after_retries(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = FaultProxy(s3_env.server)
    closed.down()
    monkeypatch.setenv("MINIO_ENDPOINT", closed.endpoint)
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "1")
    with pytest.raises(
        StorageError,
        match=rf"^storage endpoint unreachable: {closed.endpoint} after \d+ attempts "
        r"\(connection refused",
    ):
        storage.get_bytes(f"{s3_env.uri}/x")


@pytest.mark.timeout(60)  # the budget is 2 s; before, one request alone waited 120 s
def test_an_endpoint_that_accepts_and_never_answers_fails_within_the_budget(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # takes every connection, reads nothing, answers nothing
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "2")
        with pytest.raises(StorageError, match=r"^storage endpoint unreachable: 127\.0\.0\.1:\d+ after \d+ attempts"):
            storage.get_bytes(f"{s3_env.uri}/x")
        assert accepted  # it did connect: the wait was for an answer
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        silent.close()


def test_credentials_in_the_endpoint_are_refused_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in (("MINIO_ENDPOINT", "user:hunter2@minio:9000"), ("AWS_ENDPOINT_URL", "https://user:hunter2@minio:9000")):
        monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError) as err:
            storage.get_bytes("s3://bucket/key")
        assert "holds credentials" in str(err.value) and "hunter2" not in str(err.value)
        monkeypatch.delenv(variable)


def test_s3_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    with pytest.raises(StorageError, match="^MINIO_ENDPOINT is not set"):
        storage.get_bytes("s3://bucket/key")
    monkeypatch.setenv("MINIO_ENDPOINT", "http://minio:9000")
    with pytest.raises(ConfigError, match="^environment: MINIO_ENDPOINT: expected host:port"):
        storage.get_bytes("s3://bucket/key")
    monkeypatch.setenv("MINIO_ENDPOINT", "minio:9000")
    monkeypatch.setenv("MINIO_SECURE", "perhaps")
    with pytest.raises(ConfigError, match="^environment: MINIO_SECURE: "):
        storage.get_bytes("s3://bucket/key")
    monkeypatch.setenv("MINIO_SECURE", "false")
    monkeypatch.setenv("MAMMO_STORAGE_PART_SIZE_MIB", "1")
    with pytest.raises(ConfigError, match="^environment: MAMMO_STORAGE_PART_SIZE_MIB: "):
        storage.get_bytes("s3://bucket/key")
