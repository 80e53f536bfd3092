"""Promote the best candidate to ``<store>/models/<name>/production/``.

``decide`` compares the candidate with the current production model on one metric (recorded in
the production manifest); ``run`` decides again (production may have changed since) and, when
the candidate wins, switches production atomically:

1. the checkpoint is copied to ``production/model-<sha256[:12]>.pt`` - a new name, so the
   object the current manifest points at is never overwritten;
2. ``production/manifest.json`` is replaced in one write (S3 PUT / ``os.replace``): it lists the
   new checkpoint with its sha256 and carries the promotion record (metrics, source, previous
   model). This single write is the switch: readers that go through the manifest see the old
   model or the new one, never a mix;
3. objects the new manifest does not list (the previous checkpoint) are deleted.

Every call of ``run`` also appends its result to ``models/<name>/promotions/`` (one JSON file
per decision), the audit trail of what was promoted when, from which run, and why.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any

from mammo.config import lookup_metric, metric_mode
from mammo.errors import ArtifactNotFoundError, ConfigError, IntegrityError
from mammo.storage import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    copy,
    delete,
    join,
    list_objects,
    production_model_uri,
    put_bytes,
    put_json,
    read_manifest,
    stat,
)
from mammo.storage.layout import check_name

log = logging.getLogger(__name__)

_METRIC = re.compile(r"^(val|test)\.(image|breast)\.[a-z][a-z0-9_]*$")


def check_rule(metric: str, margin: float) -> None:
    """The promotion rule is usable: ``metric`` is ``<split>.<level>.<metric>`` (e.g.
    ``test.breast.auc``) and ``margin`` is not negative; ConfigError otherwise. The pipeline's
    first step calls this too, so a typo fails before hours of training, not after."""
    if not _METRIC.match(metric):
        raise ConfigError(
            f"promotion metric {metric!r}: expected <split>.<level>.<metric> with split val|test "
            "and level image|breast, e.g. test.breast.auc"
        )
    if not margin >= 0:
        raise ConfigError(f"promotion margin {margin}: must be 0 or more")


def production_manifest(store_uri: str, model_name: str) -> Manifest | None:
    """The current production manifest, or None when nothing was ever promoted."""
    try:
        return read_manifest(production_model_uri(store_uri, model_name))
    except ArtifactNotFoundError:
        return None


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def decide(
    *,
    candidate_metrics: dict[str, Any],
    store_uri: str,
    model_name: str,
    metric: str,
    margin: float,
    candidate_sha256: str | None = None,
) -> dict[str, Any]:
    """Whether the candidate should replace production, and why (one line)."""
    check_rule(metric, margin)
    value = lookup_metric(candidate_metrics, metric)
    current = production_manifest(store_uri, model_name)
    decision: dict[str, Any] = {"metric": metric, "margin": margin, "candidate": value, "production": None}
    if current is None:
        return {**decision, "promote": True, "reason": "no production model yet"}
    production_sha = current.metadata.get("sha256")
    production = lookup_metric(current.metadata.get("metrics") or {}, metric)
    decision.update(production=production, production_sha256=production_sha)
    if candidate_sha256 is not None and candidate_sha256 == production_sha:
        return {**decision, "promote": False, "reason": "this model is already in production"}
    if value is None:
        return {**decision, "promote": False, "reason": f"the candidate's {metric} is undefined"}
    if production is None:
        return {**decision, "promote": True, "reason": f"the production model has no {metric}"}
    gain = value - production if metric_mode(metric) == "max" else production - value
    verdict = "beats" if gain > margin else "does not beat"
    reason = (
        f"{metric} {_fmt(value)} {verdict} production {_fmt(production)} by more than {margin:g} "
        f"(difference {gain:+.4f})"
    )
    return {**decision, "promote": gain > margin, "reason": reason}


def _switch(prefix: str, candidate_uri: str, sha256: str | None, metadata: dict[str, Any]) -> tuple[str, str]:
    """Copy the checkpoint under a content-derived name, then replace the manifest, then drop
    what the manifest no longer lists. Returns the new checkpoint's URI and sha256."""
    source = stat(candidate_uri)
    digest = sha256 or source.sha256
    if digest is None:
        raise IntegrityError(f"{candidate_uri}: no recorded sha256; cannot promote an unverified checkpoint")
    if source.sha256 is not None and source.sha256 != digest:
        raise IntegrityError(f"{candidate_uri}: sha256 {source.sha256} does not match the expected {digest}")
    key = f"model-{digest[:12]}.pt"
    target = join(prefix, key)
    copied = copy(candidate_uri, target)
    if copied.sha256 is not None and copied.sha256 != digest:
        raise IntegrityError(f"{target}: sha256 {copied.sha256} does not match the candidate's {digest}")
    manifest = Manifest(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        objects={key: ManifestEntry(size=copied.size, sha256=digest)},
        metadata={**metadata, "checkpoint": key, "sha256": digest},
    )
    put_bytes(manifest.model_dump_json(indent=2).encode(), join(prefix, MANIFEST_NAME))
    manifest_uri = join(prefix, MANIFEST_NAME)
    for uri in list_objects(prefix):
        if uri not in (target, manifest_uri):
            delete(uri)
    return target, digest


def run(
    *,
    candidate_uri: str,
    candidate_metrics: dict[str, Any],
    store_uri: str,
    model_name: str,
    metric: str,
    margin: float,
    candidate_sha256: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Promote ``candidate_uri`` if it (still) beats production; returns the decision, and the
    new production checkpoint when promoted. ``provenance`` (run id, dataset fingerprint,
    report URI, ...) is recorded in the production manifest."""
    check_name("model name", model_name)
    decision = decide(
        candidate_metrics=candidate_metrics, store_uri=store_uri, model_name=model_name,
        metric=metric, margin=margin, candidate_sha256=candidate_sha256,
    )
    prefix = production_model_uri(store_uri, model_name)
    now = datetime.now(timezone.utc)
    result: dict[str, Any] = {
        "promoted": False,
        "production_uri": prefix,
        "candidate_uri": candidate_uri,
        "decided_at": now.isoformat(timespec="seconds"),
        **decision,
    }
    if decision["promote"]:
        previous = production_manifest(store_uri, model_name)
        metadata = {
            "model_name": model_name,
            "source_uri": candidate_uri,
            "metric": metric,
            "value": decision["candidate"],
            "metrics": candidate_metrics,
            "promoted_at": result["decided_at"],
            "reason": decision["reason"],
            "previous": None if previous is None else {
                key: previous.metadata.get(key) for key in ("sha256", "source_uri", "value", "promoted_at")
            },
            **(provenance or {}),
        }
        model_uri, digest = _switch(prefix, candidate_uri, candidate_sha256, metadata)
        result.update(promoted=True, model_uri=model_uri, sha256=digest)
        log.info("promoted %s to %s: %s", candidate_uri, model_uri, decision["reason"])
    else:
        log.info("not promoted: %s", decision["reason"])
    record = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{(candidate_sha256 or 'unknown')[:12]}.json"
    put_json(result, join(store_uri, "models", model_name, "promotions", record))
    return result
