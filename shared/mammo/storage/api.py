"""URI-level functions: the backend is picked from each URI, settings from the environment."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from mammo.storage.base import ObjectInfo, Store
from mammo.storage.local import LocalStore
from mammo.storage.s3 import S3Store
from mammo.storage.settings import MinioSettings, StorageSettings, load_env_settings
from mammo.storage.uri import check_scheme, is_remote


@lru_cache(maxsize=8)
def _s3_store(minio: MinioSettings, settings: StorageSettings) -> S3Store:
    """One client (and connection pool) per distinct configuration."""
    return S3Store(minio, settings)


def open_store(uri: str | Path) -> Store:
    """The backend serving ``uri``: S3 for ``s3://``, the local filesystem otherwise."""
    text = str(uri)
    check_scheme(text)
    settings = load_env_settings(StorageSettings)
    if is_remote(text):
        return _s3_store(load_env_settings(MinioSettings), settings)
    return LocalStore(workers=settings.workers)


def stat(uri: str) -> ObjectInfo:
    return open_store(uri).stat(uri)


def exists(uri: str) -> bool:
    return open_store(uri).exists(uri)


def list_objects(prefix_uri: str) -> list[str]:
    return open_store(prefix_uri).list_objects(prefix_uri)


def put_file(local: str | Path, uri: str) -> ObjectInfo:
    return open_store(uri).put_file(local, uri)


def get_file(uri: str, local: str | Path, sha256: str | None = None) -> ObjectInfo:
    return open_store(uri).get_file(uri, local, sha256=sha256)


def put_bytes(data: bytes, uri: str) -> ObjectInfo:
    return open_store(uri).put_bytes(data, uri)


def get_bytes(uri: str, sha256: str | None = None) -> bytes:
    return open_store(uri).get_bytes(uri, sha256=sha256)


def put_json(obj: Any, uri: str) -> ObjectInfo:
    return open_store(uri).put_json(obj, uri)


def get_json(uri: str, sha256: str | None = None) -> Any:
    return open_store(uri).get_json(uri, sha256=sha256)


def delete(uri: str) -> None:
    open_store(uri).delete(uri)


def delete_prefix(prefix_uri: str) -> int:
    return open_store(prefix_uri).delete_prefix(prefix_uri)


def upload_dir(local_dir: str | Path, prefix_uri: str) -> list[ObjectInfo]:
    return open_store(prefix_uri).upload_dir(local_dir, prefix_uri)


def download_prefix(prefix_uri: str, local_dir: str | Path, cache: bool = True) -> list[Path]:
    return open_store(prefix_uri).download_prefix(prefix_uri, local_dir, cache=cache)


def copy(src_uri: str, dst_uri: str) -> ObjectInfo:
    """Copy one object, also between backends (local -> S3 and back), verified on the way."""
    src_store, dst_store = open_store(src_uri), open_store(dst_uri)
    if is_remote(src_uri) == is_remote(dst_uri):
        return src_store.copy(src_uri, dst_uri)
    with tempfile.TemporaryDirectory(prefix="mammo-copy-") as tmp:
        local = Path(tmp) / "object"
        src_store.get_file(src_uri, local)
        return dst_store.put_file(local, dst_uri)
