"""Moving the production pointer: a verified copy, a compare-and-swap, garbage collection.

``models/<name>/production/manifest.json`` is the pointer: it lists the production checkpoint
with its sha256. Changing it, under the promotion lock (``mammo.storage.lock``) of
``models/<name>/lock/``:

1. ``stage``: the candidate is copied to ``production/model-<sha256[:12]>.pt`` (server-side on
   S3, a real copy locally, never a hard link to the run's file) and the bytes now stored
   there are read back and hashed. Only a match with the sha256 of the checkpoint that was
   evaluated lets the pointer move; a damaged copy is removed, production is untouched.
2. ``swap``: the manifest is read again and must be the one the decision was made against
   (same checkpoint, no higher fencing token): a compare-and-swap whose atomicity comes from the
   lock. The new manifest records the lock's token (``fence``), the model it replaced and the
   previous ``KEEP_PROMOTED - 1`` models (``history``); it is written in one PUT (S3) or
   ``os.replace`` (locally) and read back.
3. ``collect_garbage``: objects below ``production/`` that nothing references are deleted.
   Referenced: what the manifest lists, the models in its history (the last promotions, for
   rollback and for readers still fetching the previous model), and what any holder of a
   ticket of the lock - a promotion in flight, or one that died - recorded as its intent.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from mammo.errors import ArtifactNotFoundError, IntegrityError
from mammo.storage import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    copy,
    delete,
    exists,
    join,
    list_objects,
    open_store,
    put_bytes,
    read_manifest,
    stat,
)
from mammo.storage.lock import Lease, LeaseLost, intents
from mammo.storage.uri import is_remote, local_path, relative_key

log = logging.getLogger(__name__)

#: Promoted models kept below production/ (the current one and the ones before it).
KEEP_PROMOTED = 3


def model_key(sha256: str) -> str:
    return f"model-{sha256[:12]}.pt"


def current_manifest(prefix: str) -> Manifest | None:
    try:
        return read_manifest(prefix)
    except ArtifactNotFoundError:
        return None


def fence_of(manifest: Manifest | None) -> int:
    """The fencing token recorded by the last switch (0 before the first, or for manifests
    written before tokens existed)."""
    if manifest is None:
        return 0
    value = manifest.metadata.get("fence")
    return int(value) if isinstance(value, int) else 0


def expected_sha256(candidate_uri: str, sha256: str | None) -> str:
    """The sha256 the promoted bytes must have: the evaluated checkpoint's (``sha256``), which
    must also agree with what the store recorded for the candidate."""
    recorded = stat(candidate_uri).sha256
    digest = sha256 or recorded
    if digest is None:
        raise IntegrityError(f"{candidate_uri}: no recorded sha256; cannot promote an unverified checkpoint")
    if recorded is not None and recorded != digest:
        raise IntegrityError(f"{candidate_uri}: sha256 {recorded} does not match the expected {digest}")
    return digest


def stage(candidate_uri: str, digest: str, prefix: str) -> ManifestEntry:
    """Have the candidate's bytes at ``prefix/model-<sha12>.pt``, verified by hashing what is
    stored there; ``IntegrityError`` (and nothing left behind) when they are not ``digest``."""
    target = join(prefix, model_key(digest))
    store = open_store(target)
    if exists(target):
        info = store.digest(target)
        if info.sha256 == digest:  # kept from an earlier promotion, intact
            return ManifestEntry(size=info.size, sha256=digest)
    if is_remote(target) or is_remote(candidate_uri):
        copy(candidate_uri, target)
    else:  # a real copy: production must not share an inode with a run's file
        store.put_file(local_path(candidate_uri), target)
    info = store.digest(target)
    if info.sha256 != digest:
        delete(target)
        raise IntegrityError(
            f"integrity check failed promoting {candidate_uri}: the bytes stored at {target} hash to "
            f"{str(info.sha256)[:12]}..., not the evaluated checkpoint's {digest[:12]}... (changed or "
            "damaged since evaluation); production untouched"
        )
    return ManifestEntry(size=info.size, sha256=digest)


def _same(a: Manifest | None, b: Manifest | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.metadata.get("sha256"), fence_of(a), a.created) == (b.metadata.get("sha256"), fence_of(b), b.created)


def _history(previous: Manifest | None, keep: int) -> list[dict[str, Any]]:
    """The models before the new one, newest first, at most ``keep - 1``."""
    if previous is None or keep <= 1:
        return []
    meta = previous.metadata
    key = meta.get("checkpoint")
    entry = previous.objects.get(key) if isinstance(key, str) else None
    head = [] if entry is None else [{
        "checkpoint": key, "sha256": entry.sha256, "size": entry.size,
        "source_uri": meta.get("source_uri"), "promoted_at": meta.get("promoted_at"),
    }]
    older = [h for h in meta.get("history") or [] if isinstance(h, dict) and h.get("checkpoint")]
    return (head + older)[: keep - 1]


def swap(
    prefix: str, lease: Lease, expected: Manifest | None, entry: ManifestEntry, metadata: dict[str, Any], keep: int,
    extra: dict[str, ManifestEntry] | None = None,
) -> Manifest:
    """Replace the manifest if it is still ``expected`` (``LeaseLost`` otherwise). ``extra``:
    further objects it lists beside the checkpoint (the weights-only export)."""
    current = current_manifest(prefix)
    if not _same(current, expected) or fence_of(current) > lease.token:
        raise LeaseLost(
            f"{join(prefix, MANIFEST_NAME)} changed while this promotion held the lock (fence "
            f"{fence_of(current)}, ours {lease.token}); production left as the other writer set it"
        )
    key = model_key(entry.sha256)
    manifest = Manifest(
        created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        objects={key: entry, **(extra or {})},
        metadata={**metadata, "checkpoint": key, "sha256": entry.sha256, "fence": lease.token,
                  "history": _history(current, keep)},
    )
    lease.check()
    put_bytes(manifest.model_dump_json(indent=2).encode(), join(prefix, MANIFEST_NAME))
    written = current_manifest(prefix)
    if written is None or fence_of(written) != lease.token or written.metadata.get("sha256") != entry.sha256:
        raise LeaseLost(f"{join(prefix, MANIFEST_NAME)} was overwritten by another writer right after this switch")
    return manifest


def collect_garbage(prefix: str, lock_uri: str) -> list[str]:
    """Delete what nothing references below ``prefix``; returns the deleted URIs."""
    manifest = current_manifest(prefix)
    keep = {MANIFEST_NAME}
    if manifest is not None:
        keep |= set(manifest.objects)
        keep |= {str(h.get("checkpoint")) for h in manifest.metadata.get("history") or [] if isinstance(h, dict)}
    keep |= {str(i["staged"]) for i in intents(lock_uri) if i.get("staged")}
    deleted = []
    for uri in list_objects(prefix):
        if relative_key(prefix, uri) not in keep:
            delete(uri)
            deleted.append(uri)
    if deleted:
        log.info("removed %d unreferenced object(s) below %s", len(deleted), prefix)
    return deleted
