"""The production pointer of a model name and its audit trail: the mechanics every change of
production goes through - a promotion (the promoter component) and a rollback
(``mammo.model_versions``) alike.

Moving the pointer. ``models/<name>/production/manifest.json`` lists the production checkpoint
with its sha256. Changing it, under the promotion lock (``mammo.storage.lock``) of
``models/<name>/lock/`` (``lock_uri``):

1. ``stage``: the model's bytes are copied to ``production/model-<sha256[:12]>.pt`` (server-side
   on S3, a real copy locally, never a hard link to the run's file) and the bytes now stored
   there are read back and hashed. Only a match with the expected sha256 (the checkpoint that
   was evaluated) lets the pointer move; a damaged copy is removed, production is untouched.
2. ``swap``: the manifest is read again and must be the one the decision was made against
   (same checkpoint, no higher fencing token): a compare-and-swap whose atomicity comes from the
   lock. The new manifest records the lock's token (``fence``), the model it replaced and the
   previous ``keep - 1`` models (``history``; ``keep`` None: all of them); it is written in one
   PUT (S3) or ``os.replace`` (locally) and read back.
3. ``collect_garbage``: objects below ``production/`` that nothing references are deleted.
   Referenced: what the manifest lists, the models in its history (the last promotions, for
   rollback and for readers still fetching the previous model), and what any holder of a
   ticket of the lock - a promotion in flight, or one that died - recorded as its intent.

How many models stay (``keep``) is the model's retention setting, ``models/<name>/retention.json``
(``read_retention``; ``KEEP_PROMOTED`` when unset; ``mammo models retention`` sets it).

The audit trail: ``models/<name>/promotions/``, one object per decision (``record_decision``),
promoted or not (and refusals such as a candidate whose bytes do not match its checksum, and
the operator's rollbacks, freezes and unfreezes: ``kind``), named by UTC time to the
microsecond, the candidate's sha256 prefix and a random suffix, so two decisions in the same
second (or the same microsecond) never overwrite each other, and a listing is in time order.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from mammo.errors import ArtifactNotFoundError, ConfigError, IntegrityError, MammoError, PreconditionFailed
from mammo.storage import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    copy,
    delete,
    exists,
    get_json,
    join,
    list_objects,
    open_store,
    production_model_uri,
    put_bytes,
    put_json,
    read_manifest,
    stat,
)
from mammo.storage.layout import check_name
from mammo.storage.manifest import parse_manifest
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


def _manifest_and_etag(uri: str) -> tuple[Manifest | None, str | None]:
    """The manifest at ``uri`` and the ETag of exactly those bytes (None, None: none yet)."""
    try:
        data, etag = open_store(uri).get_bytes_and_etag(uri)
    except ArtifactNotFoundError:
        return None, None
    return parse_manifest(uri, data), etag


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


def _history(previous: Manifest | None, keep: int | None) -> list[dict[str, Any]]:
    """The models before the new one, newest first, at most ``keep - 1`` (all: ``keep`` None)."""
    if previous is None or (keep is not None and keep <= 1):
        return []
    meta = previous.metadata
    key = meta.get("checkpoint")
    entry = previous.objects.get(key) if isinstance(key, str) else None
    head = [] if entry is None else [{
        "checkpoint": key, "sha256": entry.sha256, "size": entry.size,
        "source_uri": meta.get("source_uri"), "promoted_at": meta.get("promoted_at"),
    }]
    older = [h for h in meta.get("history") or [] if isinstance(h, dict) and h.get("checkpoint")]
    return (head + older) if keep is None else (head + older)[: keep - 1]


def swap(
    prefix: str, lease: Lease, expected: Manifest | None, entry: ManifestEntry, metadata: dict[str, Any], keep: int | None,
    extra: dict[str, ManifestEntry] | None = None,
) -> Manifest:
    """Replace the manifest if it is still ``expected`` (``LeaseLost`` otherwise). ``extra``:
    further objects it lists beside the checkpoint (the weights-only export). Where the lease
    is conditional, the new manifest is written only over the ETag of the one read here, so
    even a holder frozen past its lease cannot overwrite a newer switch."""
    uri = join(prefix, MANIFEST_NAME)
    current, etag = _manifest_and_etag(uri) if lease.conditional else (current_manifest(prefix), None)
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
    body = manifest.model_dump_json(indent=2).encode()
    if lease.conditional:
        try:
            open_store(uri).put_bytes_if(body, uri, etag)
        except PreconditionFailed:
            raise LeaseLost(f"{uri} changed by another writer during this switch; production left as it set it") from None
    else:
        put_bytes(body, uri)
    written = current_manifest(prefix)
    if written is None or fence_of(written) != lease.token or written.metadata.get("sha256") != entry.sha256:
        raise LeaseLost(f"{join(prefix, MANIFEST_NAME)} was overwritten by another writer right after this switch")
    return manifest


def card_keys(sha256: str) -> tuple[str, str]:
    """The model card's two objects beside ``model-<sha12>.pt`` (``mammo.model_card``)."""
    return f"model-{sha256[:12]}.card.md", f"model-{sha256[:12]}.card.html"


def collect_garbage(prefix: str, lock_uri: str) -> list[str]:
    """Delete what nothing references below ``prefix``; returns the deleted URIs. A model kept
    in the history keeps its model card too."""
    manifest = current_manifest(prefix)
    keep = {MANIFEST_NAME}
    if manifest is not None:
        keep |= set(manifest.objects)
        history = [h for h in manifest.metadata.get("history") or [] if isinstance(h, dict)]
        keep |= {str(h.get("checkpoint")) for h in history}
        keep |= {key for h in history if isinstance(h.get("sha256"), str) for key in card_keys(h["sha256"])}
    keep |= {str(i["staged"]) for i in intents(lock_uri) if i.get("staged")}
    deleted = []
    for uri in list_objects(prefix):
        if relative_key(prefix, uri) not in keep:
            delete(uri)
            deleted.append(uri)
    if deleted:
        log.info("removed %d unreferenced object(s) below %s", len(deleted), prefix)
    return deleted


# The audit trail ----------------------------------------------------------------------------

RECORDS = "promotions"
#: What every record holds (besides whatever else the caller adds).
RECORD_KEYS = ("promoted", "candidate_uri", "metric", "candidate", "production", "reason", "decided_at")


def records_uri(store_uri: str, model_name: str) -> str:
    return join(store_uri, "models", check_name("model name", model_name), RECORDS)


def record_decision(store_uri: str, model_name: str, result: dict[str, Any], *, when: datetime | None = None) -> str:
    """Write one decision (``result``: at least ``RECORD_KEYS``; ``sha256`` or
    ``candidate_sha256`` names the candidate); returns the record's URI."""
    missing = [key for key in RECORD_KEYS if key not in result]
    if missing:
        raise ValueError(f"decision record without {', '.join(missing)}")
    when = when or datetime.now(timezone.utc)
    sha = str(result.get("candidate_sha256") or result.get("sha256") or "unknown")[:12]
    name = f"{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{sha}-{uuid.uuid4().hex[:8]}.json"
    uri = join(records_uri(store_uri, model_name), name)
    put_json(result, uri)
    return uri


def read_records(store_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every decision on record, oldest first."""
    return [get_json(uri) for uri in list_objects(records_uri(store_uri, model_name))]


# The model's lock, its production manifest, the export beside a staged checkpoint -------------


def lock_uri(store_uri: str, model_name: str) -> str:
    """The promotion lock of one model name (``mammo.storage.lock``): every change of its
    production pointer, its freeze state and its retention holds it."""
    return join(store_uri, "models", check_name("model name", model_name), "lock")


def production_manifest(store_uri: str, model_name: str) -> Manifest | None:
    """The current production manifest, or None when nothing was ever promoted."""
    try:
        return read_manifest(production_model_uri(store_uri, model_name))
    except ArtifactNotFoundError:
        return None


def export_beside(prefix: str, digest: str, threshold: Any, result: dict[str, Any]) -> dict[str, ManifestEntry]:
    """The weights-only export (``mammo.export``) of the staged checkpoint and its verified ONNX
    file (``model-<sha12>.onnx``, for ``--runtime onnx``), written beside it for ``mammo
    predict`` and the scorer, the weights first; {} (and ``export_error`` in ``result``) when
    the export cannot be made: the checkpoint alone is still a complete production model.
    Without an ONNX file ``onnx_error`` says why. An ensemble's file is its own export."""
    from mammo.export import publish_export

    try:
        published, onnx_error = publish_export(
            join(prefix, model_key(digest)), digest, prefix,
            threshold=threshold if isinstance(threshold, (int, float)) else None)
    except (MammoError, OSError, RuntimeError) as err:
        log.warning("no weights-only export: %s", err)
        result["export_error"] = str(err)
        return {}
    if not published:  # an ensemble: its one file is weights-only already
        result.update(export_uri=join(prefix, model_key(digest)), onnx_error=onnx_error)
        return {}
    result["export_uri"] = join(prefix, published[0][0])
    if onnx_error is None:
        result["onnx_uri"] = join(prefix, published[1][0])
    else:
        result["onnx_error"] = onnx_error
    return {key: ManifestEntry(size=size, sha256=sha256) for key, size, sha256 in published}


def previous_summary(manifest: Manifest | None) -> dict[str, Any] | None:
    """What a new manifest records of the model it replaces (``previous``)."""
    if manifest is None:
        return None
    return {key: manifest.metadata.get(key) for key in ("sha256", "source_uri", "value", "promoted_at")}


# Model settings: freeze and retention ------------------------------------------------------------

FREEZE = "freeze.json"
RETENTION = "retention.json"
#: The facts of every promoted version's model card, kept for good: ``cards/<sha12>.json``.
CARDS = "cards"


def _setting_uri(store_uri: str, model_name: str, name: str) -> str:
    return join(store_uri, "models", check_name("model name", model_name), name)


def read_freeze(store_uri: str, model_name: str) -> dict[str, Any] | None:
    """The freeze in force (``reason``, ``frozen_at``, ``frozen_by``), or None. The promoter
    reads it under the lock; ``mammo models freeze`` writes it under the lock."""
    uri = _setting_uri(store_uri, model_name, FREEZE)
    try:
        value = get_json(uri)
    except ArtifactNotFoundError:
        return None
    return value if isinstance(value, dict) and value.get("frozen") else None


def write_freeze(store_uri: str, model_name: str, state: dict[str, Any] | None) -> None:
    """Freeze (``state``) or unfreeze (None). Call under the lock."""
    uri = _setting_uri(store_uri, model_name, FREEZE)
    if state is None:
        delete(uri)
    else:
        put_json({"frozen": True, **state}, uri)


def frozen_reason(freeze: dict[str, Any]) -> str:
    """The promoter's reason while frozen: ``frozen (<reason>)`` and since when."""
    why = str(freeze.get("reason") or "no reason given")
    return (f"frozen ({why}) since {freeze.get('frozen_at')} by {freeze.get('frozen_by')}; "
            "not promoted until `mammo models unfreeze`")


def check_keep(keep: Any) -> int | None:
    """A retention: a whole number of models, 2 or more (the current one and at least the one a
    default rollback returns to), or None for all; ConfigError otherwise."""
    if keep is None:
        return None
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise ConfigError(f"retention {keep!r}: keep a whole number of models, 2 or more, or all")
    return keep


def read_retention(store_uri: str, model_name: str) -> int | None:
    """How many promoted models stay below ``production/`` (None: all of them): the model's
    ``retention.json``, ``KEEP_PROMOTED`` when it has none."""
    uri = _setting_uri(store_uri, model_name, RETENTION)
    try:
        value = get_json(uri)
    except ArtifactNotFoundError:
        return KEEP_PROMOTED
    if not isinstance(value, dict) or "keep" not in value:
        raise ConfigError(f"{uri}: not a retention setting (expected {{\"keep\": N or null}})")
    return check_keep(value["keep"])


def write_retention(store_uri: str, model_name: str, keep: int | None) -> None:
    """Set the retention (``check_keep``). Call under the lock."""
    put_json({"keep": check_keep(keep)}, _setting_uri(store_uri, model_name, RETENTION))


def card_data_uri(store_uri: str, model_name: str, sha256: str) -> str:
    """Where a version's model card facts are kept (never collected; ``mammo models show`` and
    a rollback read them)."""
    return join(store_uri, "models", check_name("model name", model_name), CARDS, f"{sha256[:12]}.json")


def read_card_data(store_uri: str, model_name: str, sha256: str) -> dict[str, Any] | None:
    try:
        value = get_json(card_data_uri(store_uri, model_name, sha256))
    except ArtifactNotFoundError:
        return None
    return value if isinstance(value, dict) else None
