"""The local backend: plain paths and ``file://`` URIs, the embedded default for local runs.

Files are written atomically (temp file + ``os.replace``); the sha256 of each file written here
lives in a hidden sidecar ``.<name>.sha256`` next to it. Files that have no sidecar (a dataset
copied in by hand) are read unverified unless the caller passes the expected sha256 (from a
manifest).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from mammo.errors import ArtifactNotFoundError
from mammo.storage.atomic import atomic_file, link_or_copy
from mammo.storage.base import SIDECAR_SUFFIX, ObjectInfo, Store, local_files
from mammo.storage.integrity import copy_hashing, file_chunks, sha256_bytes, sha256_file, verify
from mammo.storage.uri import join, local_path

T = TypeVar("T")
#: Reads of a file that keeps being replaced under the reader before giving up.
_READ_ATTEMPTS = 5


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def _recorded_sha256(path: Path) -> str | None:
    try:
        return _sidecar(path).read_text().strip() or None
    except FileNotFoundError:
        return None


def _etag(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _read_consistent(
    uri: str, path: Path, expected: str | None, read: Callable[[], tuple[str, T]]
) -> tuple[str, T]:
    """``read()`` (returning the sha256 of what it read, and the data) verified against the
    recorded sha256 and ``expected``.

    A file that another process replaces while it is read (a manifest being switched, a lock
    entry renewed) has its sidecar removed, the data replaced, then a new sidecar written; a
    reader can meet the new data with the old sidecar. The sidecar is therefore read before and
    after the data: bytes matching either version are genuine, and a mismatch while the sidecar
    changed is read again. A mismatch with a stable sidecar is damage and raises."""
    for attempt in range(_READ_ATTEMPTS):
        if not path.is_file():
            raise ArtifactNotFoundError(f"artifact not found: {uri}")
        before = _recorded_sha256(path)
        try:
            digest, data = read()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"artifact not found: {uri}") from None
        after = _recorded_sha256(path)
        recorded = [r for r in (before, after) if r is not None]
        if digest in recorded or not recorded:
            verify(uri, digest, expected)
            return digest, data
        if before == after or attempt == _READ_ATTEMPTS - 1:
            verify(uri, digest, expected, after)
        time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


class LocalStore(Store):
    def __init__(self, workers: int = 8) -> None:
        self.workers = workers

    def _existing(self, uri: str) -> Path:
        path = local_path(uri)
        if not path.is_file():
            raise ArtifactNotFoundError(f"artifact not found: {uri}")
        return path

    def _write(
        self, chunks: Iterable[bytes], dst: Path, *, source: str, expected: str | None = None
    ) -> str:
        """Write ``chunks`` to ``dst`` atomically, then its sidecar; the source's ``expected``
        sha256 is checked before anything becomes visible. The old sidecar goes just before the
        new data, so a crash in between leaves an unverified file, never a false mismatch."""
        with atomic_file(dst) as out:
            digest, _ = copy_hashing(chunks, out)
            verify(source, digest, expected)
            _sidecar(dst).unlink(missing_ok=True)
        self._record(dst, digest)
        return digest

    @staticmethod
    def _record(path: Path, digest: str) -> None:
        with atomic_file(_sidecar(path)) as out:
            out.write(digest.encode())

    def _info(self, uri: str, path: Path, sha256: str | None) -> ObjectInfo:
        return ObjectInfo(uri, path.stat().st_size, _etag(path), sha256)

    def stat(self, uri: str) -> ObjectInfo:
        path = self._existing(uri)
        return self._info(uri, path, _recorded_sha256(path))

    def list_info(self, prefix_uri: str) -> list[ObjectInfo]:
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        infos = []
        for rel, path in local_files(root).items():
            try:
                infos.append(self._info(join(prefix_uri, rel), path, _recorded_sha256(path)))
            except FileNotFoundError:
                continue  # removed while listing (another process's delete): not there
        return infos

    def put_file(self, local: str | Path, uri: str) -> ObjectInfo:
        src = Path(local)
        if not src.is_file():
            raise ArtifactNotFoundError(f"artifact not found: {src}")
        dst = local_path(uri)
        if _same_file(src, dst):
            digest = sha256_file(dst)
            self._record(dst, digest)
        else:
            digest = self._write(file_chunks(src), dst, source=str(src))
        return self._info(uri, dst, digest)

    def get_file(self, uri: str, local: str | Path, sha256: str | None = None) -> ObjectInfo:
        src = self._existing(uri)
        dst = Path(local)
        if _same_file(src, dst):
            digest = _read_consistent(uri, src, sha256, lambda: (sha256_file(src), None))[0]
        else:
            # Verified before the file appears: a refused read leaves ``local`` as it was.
            with atomic_file(dst, durable=False) as out:

                def read() -> tuple[str, None]:
                    out.seek(0)
                    out.truncate()
                    digest, _ = copy_hashing(file_chunks(src), out)
                    return digest, None

                digest = _read_consistent(uri, src, sha256, read)[0]
        return self._info(uri, src, digest)

    def put_bytes(self, data: bytes, uri: str) -> ObjectInfo:
        dst = local_path(uri)
        digest = self._write([data], dst, source=uri)
        return self._info(uri, dst, digest)

    def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        path = self._existing(uri)

        def read() -> tuple[str, bytes]:
            data = path.read_bytes()
            return sha256_bytes(data), data

        return _read_consistent(uri, path, sha256, read)[1]

    def digest(self, uri: str) -> ObjectInfo:
        path = self._existing(uri)
        return self._info(uri, path, sha256_file(path))

    def copy(self, src_uri: str, dst_uri: str) -> ObjectInfo:
        """The local form of a server-side copy: the source is verified, then hard-linked
        (objects here are only ever replaced, never changed in place), so a checkpoint stored
        under several names, or promoted, takes its space once."""
        src = self._existing(src_uri)
        dst = local_path(dst_uri)
        if _same_file(src, dst):
            return self.stat(dst_uri)
        digest = sha256_file(src)
        verify(src_uri, digest, _recorded_sha256(src))
        _sidecar(dst).unlink(missing_ok=True)
        link_or_copy(src, dst)
        self._record(dst, digest)
        return self._info(dst_uri, dst, digest)

    def delete(self, uri: str) -> None:
        path = local_path(uri)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
