"""A step's outputs become visible together: objects first, ``manifest.json`` last.

``publish`` uploads a step's files below a prefix and then writes ``<prefix>/manifest.json``
listing each key with its size and sha256 (plus free-form metadata, e.g. headline metrics).
Readers call ``read_manifest``/``fetch_from_manifest`` and trust only what the manifest lists,
verified against its sha256: objects of a step that died half-way are never seen, because
its manifest was never written (or still lists the previous, complete set).

Publishing again (a trainer after every epoch) uploads only files whose content changed, then
replaces the manifest, then deletes objects the old manifest listed and the new one does not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mammo.errors import ArtifactNotFoundError, DataError, StorageError
from mammo.storage.api import open_store
from mammo.storage.base import ObjectInfo, local_files
from mammo.storage.cache import Wanted, fetch_all
from mammo.storage.integrity import sha256_file
from mammo.storage.parallel import run_parallel
from mammo.storage.uri import join

MANIFEST_NAME = "manifest.json"


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """The published contents of one prefix: relative key -> size and sha256."""

    model_config = ConfigDict(extra="forbid")

    format: int = 1
    created: str = Field(description="UTC time of publication, ISO 8601.")
    objects: dict[str, ManifestEntry]
    metadata: dict[str, Any] = Field(default_factory=dict)


def _sources(source: str | Path | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(source, Mapping):
        files = {str(key).strip("/"): Path(path) for key, path in source.items()}
    else:
        root = Path(source)
        if not root.is_dir():
            raise ArtifactNotFoundError(f"artifact not found: {root} (nothing to publish)")
        files = local_files(root)
    files.pop(MANIFEST_NAME, None)
    for key, path in files.items():
        if not key or ".." in key.split("/"):
            raise StorageError(f"invalid key {key!r} for {path}")
        if not path.is_file():
            raise ArtifactNotFoundError(f"artifact not found: {path} (listed for {key})")
    return files


def read_manifest(prefix_uri: str) -> Manifest:
    """The manifest of ``prefix_uri``; ``ArtifactNotFoundError`` when nothing was published."""
    uri = join(prefix_uri, MANIFEST_NAME)
    try:
        data = open_store(uri).get_bytes(uri)
    except ArtifactNotFoundError:
        raise ArtifactNotFoundError(
            f"artifact not found: {uri} (no published outputs at {prefix_uri})"
        ) from None
    return parse_manifest(uri, data)


def parse_manifest(uri: str, data: bytes) -> Manifest:
    """``data`` read from ``uri`` as a manifest; a one-line ``StorageError`` when it is not one."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{uri}: not valid JSON ({exc})") from None
    try:
        return Manifest.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StorageError(f"{uri}: not a valid manifest ({where}: {first['msg']})") from None


def _previous(prefix_uri: str) -> Manifest | None:
    try:
        return read_manifest(prefix_uri)
    except ArtifactNotFoundError:
        return None


def publish(
    source: str | Path | Mapping[str, str | Path],
    prefix_uri: str,
    metadata: Mapping[str, Any] | None = None,
) -> Manifest:
    """Upload ``source`` (a directory, or relative key -> local file) below ``prefix_uri``,
    then write the manifest; return it. Unchanged objects are not uploaded again."""
    files = _sources(source)
    meta = dict(metadata or {})
    json.dumps(meta)  # not JSON-serialisable: fail before anything is uploaded
    store = open_store(prefix_uri)
    previous = _previous(prefix_uri)

    def upload(item: tuple[str, Path]) -> ObjectInfo:
        key, path = item
        uri = join(prefix_uri, key)
        digest = sha256_file(path)
        try:
            current = store.stat(uri)
        except ArtifactNotFoundError:
            current = None
        if current is not None and (current.sha256, current.size) == (digest, path.stat().st_size):
            return current
        return store.put_file(path, uri)

    entries = {
        key: ManifestEntry(size=info.size, sha256=str(info.sha256))
        for (key, _), info in run_parallel(upload, files.items(), store.workers)
    }
    manifest = Manifest(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        objects=dict(sorted(entries.items())),
        metadata=meta,
    )
    manifest_json = manifest.model_dump_json(indent=2).encode()
    store.put_bytes(manifest_json, join(prefix_uri, MANIFEST_NAME))
    if previous is not None:
        for key in sorted(set(previous.objects) - set(entries)):
            store.delete(join(prefix_uri, key))
    return manifest


def fetch_from_manifest(
    prefix_uri: str,
    local_dir: str | Path,
    keys: list[str] | None = None,
    cache: bool = True,
    manifest: Manifest | None = None,
) -> dict[str, Path]:
    """Download the listed objects (or just ``keys``) to ``local_dir/<key>``, verified against
    the manifest's sha256; cached files with the same sha256 are not fetched again."""
    manifest = manifest or read_manifest(prefix_uri)
    wanted_keys = list(manifest.objects) if keys is None else keys
    missing = [key for key in wanted_keys if key not in manifest.objects]
    if missing:
        raise ArtifactNotFoundError(
            f"artifact not found: {join(prefix_uri, missing[0])} "
            f"(not listed in {join(prefix_uri, MANIFEST_NAME)})"
        )
    wanted = [
        Wanted(join(prefix_uri, key), key, sha256=manifest.objects[key].sha256)
        for key in wanted_keys
    ]
    paths = fetch_all(open_store(prefix_uri), wanted, Path(local_dir), cache=cache)
    return dict(zip(wanted_keys, paths, strict=True))
