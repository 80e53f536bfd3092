"""Storage contract: the same behaviour on the local backend and on a real S3 server."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ArtifactNotFoundError, ConfigError, IntegrityError, StorageError
from mammo.storage.uri import parse_s3

from servers import S3Env


@pytest.fixture(params=["path", "file-uri", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage root on each backend (the local one as a plain path and as a file:// URI)."""
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file-uri":
        return f"file://{tmp_path}/store"
    s3_env: S3Env = request.getfixturevalue("s3_env")
    return f"{s3_env.uri}/store"


def _tamper(uri: str, data: bytes, request: pytest.FixtureRequest) -> None:
    """Replace an object's bytes behind the store's back, keeping its recorded sha256."""
    if storage.is_remote(uri):
        loc = parse_s3(uri)
        client = request.getfixturevalue("s3_env").server.client()
        sha = client.stat_object(loc.bucket, loc.key).metadata["x-amz-meta-sha256"]
        client.put_object(
            loc.bucket, loc.key, io.BytesIO(data), len(data), metadata={"sha256": sha}
        )
    else:
        storage.local_path(uri).write_bytes(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_bytes_json_and_files_round_trip_with_their_sha256(root: str, tmp_path: Path) -> None:
    data = b"\x00\x01checkpoint bytes" * 100
    info = storage.put_bytes(data, storage.join(root, "a", "blob.bin"))
    assert info.sha256 == _sha(data) and info.size == len(data)
    assert storage.get_bytes(storage.join(root, "a/blob.bin")) == data
    assert storage.stat(storage.join(root, "a/blob.bin")).sha256 == _sha(data)

    storage.put_json({"auc": 0.71, "epochs": [1, 2]}, storage.join(root, "metrics.json"))
    assert storage.get_json(storage.join(root, "metrics.json")) == {"auc": 0.71, "epochs": [1, 2]}

    src = tmp_path / "src.csv"
    src.write_text("patient_id,cancer\n1,0\n")
    storage.put_file(src, storage.join(root, "datasets/x/train.csv"))
    out = tmp_path / "out" / "train.csv"
    got = storage.get_file(storage.join(root, "datasets/x/train.csv"), out)
    assert out.read_text() == src.read_text()
    assert got.sha256 == _sha(src.read_bytes())
    assert storage.exists(storage.join(root, "datasets/x/train.csv"))
    assert not storage.exists(storage.join(root, "datasets/x"))  # a prefix is not an object


def test_list_returns_objects_below_the_prefix_only(root: str) -> None:
    for key in ["runs/r1/a.pt", "runs/r1/sub/b.json", "runs/r10/c.pt", "runs/r1.txt"]:
        storage.put_bytes(key.encode(), storage.join(root, key))
    listed = storage.list_objects(storage.join(root, "runs/r1"))
    assert listed == [storage.join(root, "runs/r1/a.pt"), storage.join(root, "runs/r1/sub/b.json")]
    assert storage.list_objects(storage.join(root, "nothing/here")) == []


def test_missing_object_is_a_clear_error(root: str, tmp_path: Path) -> None:
    uri = storage.join(root, "runs/r1/best_auc.pt")
    for read in (
        lambda: storage.get_bytes(uri),
        lambda: storage.get_file(uri, tmp_path / "x.pt"),
        lambda: storage.stat(uri),
    ):
        with pytest.raises(ArtifactNotFoundError, match=f"^artifact not found: {uri}$"):
            read()
    assert not storage.exists(uri)
    assert not (tmp_path / "x.pt").exists()


def test_copy_keeps_content_and_checksum(root: str) -> None:
    src = storage.join(root, "runs/r1/baseline/best_auc.pt")
    storage.put_bytes(b"weights", src)
    dst = storage.join(root, "models/demo/production/model.pt")
    info = storage.copy(src, dst)
    assert info.sha256 == _sha(b"weights")
    assert storage.get_bytes(dst) == b"weights"
    assert storage.stat(dst).sha256 == _sha(b"weights")


def test_local_copy_takes_no_second_copy_of_the_bytes(tmp_path: Path) -> None:
    src, dst = tmp_path / "runs/r1/best_auc.pt", tmp_path / "models/demo/model.pt"
    storage.put_bytes(b"weights", str(src))
    storage.copy(str(src), str(dst))
    assert dst.stat().st_ino == src.stat().st_ino  # a hard link
    storage.put_bytes(b"next epoch", str(src))  # replacing the source leaves the copy alone
    storage.delete(str(src))
    assert storage.get_bytes(str(dst)) == b"weights"


def test_a_corrupted_object_stays_refused_when_copied(root: str, request: pytest.FixtureRequest) -> None:
    src = storage.join(root, "runs/r1/best_auc.pt")
    storage.put_bytes(b"weights", src)
    _tamper(src, b"garbage", request)
    dst = storage.join(root, "models/demo/model.pt")
    if storage.is_remote(root):  # a server-side copy carries the recorded sha256 along
        storage.copy(src, dst)
        with pytest.raises(IntegrityError, match="integrity check failed for .*model.pt"):
            storage.get_bytes(dst)
    else:  # the local copy reads the source, so it refuses at once
        with pytest.raises(IntegrityError, match="integrity check failed for .*best_auc.pt"):
            storage.copy(src, dst)
        assert not storage.exists(dst)


def test_delete_and_delete_prefix(root: str) -> None:
    for key in ["p/a", "p/b/c", "q/d"]:
        storage.put_bytes(b"x", storage.join(root, key))
    storage.delete(storage.join(root, "q/d"))
    storage.delete(storage.join(root, "q/d"))  # absent is fine
    assert storage.delete_prefix(storage.join(root, "p")) == 2
    assert storage.list_objects(root) == []


def test_corrupted_object_is_refused_naming_it(
    root: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    uri = storage.join(root, "runs/r1/last.pt")
    storage.put_bytes(b"good weights", uri)
    local = tmp_path / "last.pt"
    storage.get_file(uri, local)
    _tamper(uri, b"evil weights", request)

    with pytest.raises(IntegrityError, match=f"integrity check failed for {uri}"):
        storage.get_bytes(uri)
    with pytest.raises(IntegrityError, match=f"integrity check failed for {uri}"):
        storage.get_file(uri, local)
    assert local.read_bytes() == b"good weights"  # the earlier copy is left untouched


def test_expected_sha256_is_checked_on_read(root: str, tmp_path: Path) -> None:
    uri = storage.join(root, "x.bin")
    storage.put_bytes(b"abc", uri)
    assert storage.get_bytes(uri, sha256=_sha(b"abc")) == b"abc"
    with pytest.raises(IntegrityError, match="x.bin"):
        storage.get_file(uri, tmp_path / "x.bin", sha256=_sha(b"abd"))
    assert not (tmp_path / "x.bin").exists()


def _tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


def test_upload_dir_and_download_prefix_reuse_unchanged_files(root: str, tmp_path: Path) -> None:
    files = {f"images/{p}/{i}.png": f"{p}-{i}".encode() for p in range(3) for i in range(4)}
    files["train.csv"] = b"patient_id,image_id\n"
    infos = storage.upload_dir(_tree(tmp_path / "src", files), storage.join(root, "datasets/d1"))
    assert len(infos) == len(files)

    prefix = storage.join(root, "datasets/d1")
    cache = tmp_path / "cache"
    paths = storage.download_prefix(prefix, cache)
    assert {p.relative_to(cache).as_posix(): p.read_bytes() for p in paths} == files
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}

    storage.put_bytes(b"changed", storage.join(prefix, "train.csv"))
    (cache / "images/0/0.png").write_bytes(b"edited locally")
    storage.download_prefix(prefix, cache)

    refetched = {p for p in paths if (p.stat().st_ino, p.stat().st_mtime_ns) != before[p]}
    assert refetched == {cache / "train.csv", cache / "images/0/0.png"}
    assert (cache / "train.csv").read_bytes() == b"changed"
    assert (cache / "images/0/0.png").read_bytes() == b"0-0"


def test_publish_makes_outputs_visible_through_the_manifest_only(root: str, tmp_path: Path) -> None:
    prefix = storage.join(root, "runs/r1/baseline")
    # A step that died before publishing left an object, but no manifest: nothing is visible.
    storage.put_bytes(b"half", storage.join(prefix, "epoch_3.pt"))
    with pytest.raises(ArtifactNotFoundError, match="manifest.json"):
        storage.read_manifest(prefix)

    out = _tree(tmp_path / "run", {"last.pt": b"L1", "best_auc.pt": b"B1", "logs/m.json": b"{}"})
    manifest = storage.publish(out, prefix, metadata={"auc": 0.7})
    assert manifest.objects == {
        "best_auc.pt": storage.ManifestEntry(size=2, sha256=_sha(b"B1")),
        "last.pt": storage.ManifestEntry(size=2, sha256=_sha(b"L1")),
        "logs/m.json": storage.ManifestEntry(size=2, sha256=_sha(b"{}")),
    }
    assert storage.read_manifest(prefix).metadata == {"auc": 0.7}
    fetched = storage.fetch_from_manifest(prefix, tmp_path / "reader")
    assert sorted(fetched) == ["best_auc.pt", "last.pt", "logs/m.json"]  # not epoch_3.pt
    assert fetched["last.pt"].read_bytes() == b"L1"

    # Next epoch: last.pt changes, best_auc.pt is unchanged, logs are gone.
    (out / "last.pt").write_bytes(b"L2")
    (out / "logs/m.json").unlink()
    etag_best = storage.stat(storage.join(prefix, "best_auc.pt")).etag
    manifest = storage.publish(out, prefix)
    assert sorted(manifest.objects) == ["best_auc.pt", "last.pt"]
    assert storage.stat(storage.join(prefix, "best_auc.pt")).etag == etag_best
    assert not storage.exists(storage.join(prefix, "logs/m.json"))
    only_last = storage.fetch_from_manifest(prefix, tmp_path / "reader", keys=["last.pt"])
    assert only_last["last.pt"].read_bytes() == b"L2"
    with pytest.raises(ArtifactNotFoundError, match="not listed in"):
        storage.fetch_from_manifest(prefix, tmp_path / "reader", keys=["epoch_3.pt"])


def test_publishing_a_local_run_directory_in_place(tmp_path: Path) -> None:
    run = _tree(tmp_path / "runs" / "r1" / "baseline", {"last.pt": b"L1", "top/1.pt": b"T"})
    manifest = storage.publish(run, str(run))
    assert sorted(manifest.objects) == ["last.pt", "top/1.pt"]
    (run / "last.pt").write_bytes(b"L2")
    (run / "top/1.pt").unlink()
    manifest = storage.publish(run, str(run))
    assert manifest.objects == {"last.pt": storage.ManifestEntry(size=2, sha256=_sha(b"L2"))}
    assert storage.list_objects(str(run)) == [str(run / "last.pt"), str(run / "manifest.json")]
    fetched = storage.fetch_from_manifest(str(run), tmp_path / "reader")
    assert fetched["last.pt"].read_bytes() == b"L2"


def test_manifest_reader_refuses_a_listed_object_that_changed(
    root: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    prefix = storage.join(root, "splits/abc123")
    storage.publish({"split.csv": _tree(tmp_path, {"split.csv": b"a,b\n"}) / "split.csv"}, prefix)
    _tamper(storage.join(prefix, "split.csv"), b"a,c\n", request)
    with pytest.raises(IntegrityError, match="split.csv"):
        storage.fetch_from_manifest(prefix, tmp_path / "reader")
    assert not (tmp_path / "reader" / "split.csv").exists()


def test_manifest_is_plain_json(root: str, tmp_path: Path) -> None:
    prefix = storage.join(root, "runs/r2/evaluate")
    storage.publish({"report.html": _tree(tmp_path, {"r.html": b"<p>"}) / "r.html"}, prefix)
    doc = json.loads(storage.get_bytes(storage.join(prefix, storage.MANIFEST_NAME)))
    assert doc["objects"] == {"report.html": {"size": 3, "sha256": _sha(b"<p>")}}
    assert doc["format"] == 1 and "created" in doc


def test_copy_between_local_and_s3(s3_env: S3Env, tmp_path: Path) -> None:
    local = str(tmp_path / "ckpt.pt")
    storage.put_bytes(b"local weights", local)
    remote = f"{s3_env.uri}/runs/r1/ckpt.pt"
    assert storage.copy(local, remote).sha256 == _sha(b"local weights")
    back = f"file://{tmp_path}/back/ckpt.pt"
    storage.copy(remote, back)
    assert (tmp_path / "back" / "ckpt.pt").read_bytes() == b"local weights"
    assert storage.stat(back).sha256 == _sha(b"local weights")


def test_uris_keep_their_form() -> None:
    assert storage.join("s3://bkt", "runs", "r1/last.pt") == "s3://bkt/runs/r1/last.pt"
    assert storage.join("s3://bkt/runs/", "/r1/") == "s3://bkt/runs/r1"
    assert storage.join("file:///data/store", "a") == "file:///data/store/a"
    assert storage.join("relative/dir", "a", "", "b") == "relative/dir/a/b"
    assert storage.is_remote("s3://bkt/x") and not storage.is_remote("/tmp/x")
    assert not storage.is_remote("file:///tmp/x")
    assert storage.local_path("file:///tmp/x") == Path("/tmp/x")
    assert storage.local_path("file://localhost/tmp/x") == Path("/tmp/x")
    with pytest.raises(StorageError, match="'..' is not allowed"):
        storage.join("s3://bkt/runs", "../models")
    with pytest.raises(StorageError, match="unsupported URI scheme 'gs'"):
        storage.exists("gs://bkt/x")
    with pytest.raises(StorageError, match="absolute path"):
        storage.local_path("file://tmp/x")


def test_layout() -> None:
    assert storage.dataset_uri("s3://bkt", "rsna") == "s3://bkt/datasets/rsna"
    assert storage.split_uri("s3://bkt", "3f2a9c") == "s3://bkt/splits/3f2a9c"
    assert storage.run_uri("s3://bkt", "2024-05-01.r1", "baseline") == (
        "s3://bkt/runs/2024-05-01.r1/baseline"
    )
    assert storage.production_model_uri("/srv/store", "resnet") == (
        "/srv/store/models/resnet/production"
    )
    for bad in ["../x", "a/b", "", ".hidden", "a b"]:
        with pytest.raises(ConfigError, match="run id"):
            storage.run_uri("s3://bkt", bad, "baseline")


def test_storage_and_telemetry_do_not_import_torch() -> None:
    code = "import sys, mammo.storage, mammo.telemetry; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_linking_a_name_that_already_links_to_the_file_leaves_no_temp_file(tmp_path: Path) -> None:
    """rename(2) is a no-op when both names are links to one file: the temp name used to stay
    behind (the orphaned .tmp hard links two `mammo run`s left in a work directory)."""
    from mammo.storage.atomic import link_or_copy

    source = tmp_path / "last.pt"
    source.write_bytes(b"epoch 3")
    for _ in range(3):
        link_or_copy(source, tmp_path / "best_auc.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_auc.pt", "last.pt"]
    assert (tmp_path / "best_auc.pt").stat().st_ino == source.stat().st_ino


@pytest.mark.parametrize("key", ["runs/../models/x.pt", "../x", "runs/./x", "a/b/.."])
def test_dot_segments_in_s3_keys_are_one_line(s3_env: S3Env, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`..` in an s3:// key was a minio ValueError traceback; now a StorageError naming the URI,
    also through a command."""
    from mammo_components.cli import main

    uri = f"{s3_env.uri}/{key}"
    for call in (lambda: storage.stat(uri), lambda: storage.get_bytes(uri), lambda: storage.put_bytes(b"x", uri),
                 lambda: storage.list_objects(uri)):
        with pytest.raises(StorageError, match=r"'\.' and '\.\.' are not allowed in object keys"):
            call()
    assert main(["promoter", "--evaluation", uri, "--store", s3_env.uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are not allowed in object keys" in err
