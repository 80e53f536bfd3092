"""Fetch many objects into a local directory, in parallel, skipping what is already there.

A hidden index (``.mammo-cache.json``) in the target directory remembers, per file, the
object's ETag and sha256 and the local file's size and mtime when it was fetched. An object is
fetched again only when its ETag (listing) or sha256 (manifest) changed, or the local file was
modified or removed since.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo.errors import StorageError
from mammo.storage.atomic import atomic_file
from mammo.storage.objects import ObjectInfo, ObjectSource
from mammo.storage.parallel import run_parallel

log = logging.getLogger(__name__)
INDEX_NAME = ".mammo-cache.json"


@dataclass(frozen=True)
class Wanted:
    """One object to have locally at ``local_dir/rel``; ``etag``/``sha256`` identify its
    content (either may be unknown)."""

    uri: str
    rel: str
    etag: str | None = None
    sha256: str | None = None


def _load_index(local_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        index = json.loads((local_dir / INDEX_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return index if isinstance(index, dict) else {}


def _save_index(local_dir: Path, index: dict[str, dict[str, Any]]) -> None:
    with atomic_file(local_dir / INDEX_NAME, durable=False) as out:
        out.write(json.dumps(index, indent=1, sort_keys=True).encode())


def _is_fresh(entry: dict[str, Any] | None, wanted: Wanted, path: Path) -> bool:
    if not entry:
        return False
    if wanted.sha256 is not None:
        same_content = entry.get("sha256") == wanted.sha256
    else:
        same_content = wanted.etag is not None and entry.get("etag") == wanted.etag
    if not same_content:
        return False
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_size == entry.get("size") and stat.st_mtime_ns == entry.get("mtime_ns")


def local_target(local_dir: Path, rel: str) -> Path:
    """``local_dir/rel``, refusing keys that would land outside ``local_dir``."""
    target = local_dir / rel
    if not rel or not target.resolve().is_relative_to(local_dir.resolve()):
        raise StorageError(f"refusing to write object key {rel!r} outside {local_dir}")
    return target


def fetch_all(
    store: ObjectSource, wanted: list[Wanted], local_dir: Path, cache: bool = True
) -> list[Path]:
    """Have every wanted object at ``local_dir/rel`` (verified); return the paths in order."""
    local_dir.mkdir(parents=True, exist_ok=True)
    targets = {w.rel: local_target(local_dir, w.rel) for w in wanted}
    index = _load_index(local_dir) if cache else {}
    todo = [w for w in wanted if not _is_fresh(index.get(w.rel), w, targets[w.rel])]

    def fetch(item: Wanted) -> ObjectInfo:
        return store.get_file(item.uri, targets[item.rel], sha256=item.sha256)

    try:
        for item, info in run_parallel(fetch, todo, store.workers):
            stat = targets[item.rel].stat()
            index[item.rel] = {
                "etag": info.etag,
                "sha256": info.sha256,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
    finally:
        _save_index(local_dir, index)
    log.info(
        "%d objects in %s: %d fetched, %d unchanged",
        len(wanted),
        local_dir,
        len(todo),
        len(wanted) - len(todo),
    )
    return [targets[w.rel] for w in wanted]
