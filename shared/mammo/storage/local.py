"""The local backend: plain paths and ``file://`` URIs, the embedded default for local runs.

Files are written atomically (temp file + ``os.replace``); the sha256 of each file written here
lives in a hidden sidecar ``.<name>.sha256`` next to it. Files that have no sidecar (a dataset
copied in by hand) are read unverified unless the caller passes the expected sha256 (from a
manifest).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mammo.errors import ArtifactNotFoundError
from mammo.storage.atomic import atomic_file, link_or_copy
from mammo.storage.base import SIDECAR_SUFFIX, ObjectInfo, Store, local_files
from mammo.storage.integrity import copy_hashing, file_chunks, sha256_bytes, sha256_file, verify
from mammo.storage.uri import join, local_path


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
        return [
            self._info(join(prefix_uri, rel), path, _recorded_sha256(path))
            for rel, path in local_files(root).items()
        ]

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
        recorded = _recorded_sha256(src)
        if _same_file(src, dst):
            digest = sha256_file(src)
            verify(uri, digest, sha256, recorded)
        else:
            with atomic_file(dst, durable=False) as out:
                digest, _ = copy_hashing(file_chunks(src), out)
                verify(uri, digest, sha256, recorded)
        return self._info(uri, src, digest)

    def put_bytes(self, data: bytes, uri: str) -> ObjectInfo:
        dst = local_path(uri)
        digest = self._write([data], dst, source=uri)
        return self._info(uri, dst, digest)

    def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        path = self._existing(uri)
        data = path.read_bytes()
        verify(uri, sha256_bytes(data), sha256, _recorded_sha256(path))
        return data

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
