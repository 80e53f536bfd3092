"""The interface both backends implement, and the operations built on top of it.

A backend provides the primitives (stat, list, put/get of files and bytes, copy, delete); JSON,
prefix upload/download with the local cache, and prefix deletion are written once, here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from mammo.errors import ArtifactNotFoundError, DataError
from mammo.storage.atomic import is_temp_name
from mammo.storage.cache import INDEX_NAME, Wanted, fetch_all
from mammo.storage.objects import ObjectInfo
from mammo.storage.parallel import run_parallel
from mammo.storage.uri import join, relative_key

#: Local backend: ``dir/.<name>.sha256`` holds the checksum of ``dir/<name>``.
SIDECAR_SUFFIX = ".sha256"


def local_files(local_dir: Path) -> dict[str, Path]:
    """Files below ``local_dir`` by posix relative path, without temp files, checksum sidecars
    and the cache index (bookkeeping of this package, not data)."""
    files = {}
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        name = path.name
        if is_temp_name(name) or is_sidecar_name(name) or name == INDEX_NAME:
            continue
        files[path.relative_to(local_dir).as_posix()] = path
    return files


def is_sidecar_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(SIDECAR_SUFFIX)


class Store(ABC):
    """One storage backend; every method takes full URIs (``s3://...`` or local paths)."""

    #: Parallel transfers for prefix operations.
    workers: int = 8

    # --- primitives ---------------------------------------------------------------------

    @abstractmethod
    def stat(self, uri: str) -> ObjectInfo:
        """Size, ETag and recorded sha256; ``ArtifactNotFoundError`` when absent."""

    @abstractmethod
    def list_info(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object below ``prefix_uri`` (treated as a folder), sorted by URI."""

    @abstractmethod
    def put_file(self, local: str | Path, uri: str) -> ObjectInfo:
        """Upload a local file, recording its sha256 (multipart above the part size)."""

    @abstractmethod
    def get_file(self, uri: str, local: str | Path, sha256: str | None = None) -> ObjectInfo:
        """Download to ``local`` (atomically), verified against the recorded sha256 and
        ``sha256`` if given; ``IntegrityError`` leaves ``local`` untouched."""

    @abstractmethod
    def put_bytes(self, data: bytes, uri: str) -> ObjectInfo:
        """Store ``data`` with its sha256."""

    @abstractmethod
    def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        """Read and verify (as ``get_file``)."""

    @abstractmethod
    def copy(self, src_uri: str, dst_uri: str) -> ObjectInfo:
        """Copy within this backend; the recorded sha256 travels with the object."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove one object; absent objects are fine."""

    @abstractmethod
    def digest(self, uri: str) -> ObjectInfo:
        """Read the object's stored bytes and hash them: ``sha256`` is what is actually there,
        whatever was recorded (a server-side copy carries the source's recorded sha256 along,
        even when the source's bytes were damaged)."""

    # --- conditional writes (S3 stores that honour them; see mammo.storage.lock) ----------

    def conditional_writes(self, scratch_uri: str) -> bool:
        """Whether ``put_bytes_if`` is honoured where ``scratch_uri`` (a prefix this package
        owns, such as a lock's) lives. The local backend has none: its lock lists files."""
        return False

    def put_bytes_if(self, data: bytes, uri: str, etag: str | None) -> ObjectInfo:
        """Store ``data`` only if the object's ETag is still ``etag`` (``None``: only if there
        is no object yet); ``PreconditionFailed`` otherwise."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")

    def get_bytes_and_etag(self, uri: str) -> tuple[bytes, str]:
        """The object's bytes and the ETag of exactly those bytes (one read), for a later
        ``put_bytes_if``."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")

    # --- built on the primitives --------------------------------------------------------

    def exists(self, uri: str) -> bool:
        """Whether an object (not a prefix) exists at ``uri``."""
        try:
            self.stat(uri)
        except ArtifactNotFoundError:
            return False
        return True

    def list_objects(self, prefix_uri: str) -> list[str]:
        """URIs of the objects below ``prefix_uri``, sorted."""
        return [info.uri for info in self.list_info(prefix_uri)]

    def put_json(self, obj: Any, uri: str) -> ObjectInfo:
        return self.put_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), uri)

    def get_json(self, uri: str, sha256: str | None = None) -> Any:
        data = self.get_bytes(uri, sha256=sha256)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{uri}: not valid JSON ({exc})") from None

    def delete_prefix(self, prefix_uri: str) -> int:
        """Delete every object below ``prefix_uri``; return how many."""
        uris = self.list_objects(prefix_uri)
        for _ in run_parallel(self.delete, uris, self.workers):
            pass
        return len(uris)

    def upload_dir(self, local_dir: str | Path, prefix_uri: str) -> list[ObjectInfo]:
        """Upload every file below ``local_dir`` to ``prefix_uri/<relative path>``, in parallel."""
        files = local_files(Path(local_dir))
        jobs = [(path, join(prefix_uri, rel)) for rel, path in files.items()]
        done = run_parallel(lambda job: self.put_file(*job), jobs, self.workers)
        return sorted((info for _, info in done), key=lambda info: info.uri)

    def download_prefix(
        self, prefix_uri: str, local_dir: str | Path, cache: bool = True
    ) -> list[Path]:
        """Mirror the objects below ``prefix_uri`` into ``local_dir`` (verified, in parallel);
        with ``cache``, objects whose ETag did not change since the last call are not fetched
        again. Returns the local paths, sorted by key."""
        wanted = [
            Wanted(info.uri, relative_key(prefix_uri, info.uri), etag=info.etag)
            for info in self.list_info(prefix_uri)
        ]
        return fetch_all(self, wanted, Path(local_dir), cache=cache)
