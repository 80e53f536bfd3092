"""Promote the best candidate to ``<store>/models/<name>/production/``.

``decide`` compares the candidate with the current production model on one metric (recorded in
the production manifest); ``run`` takes the model's promotion lock, decides again against the
production model of that moment (another run may have promoted in the meantime) and, when the
candidate wins, moves the production pointer (``switch``): a copy verified by hashing the
stored bytes, a compare-and-swap of ``production/manifest.json``, garbage collection that
keeps what anything still references. Concurrent promoters are serialised, so whatever the
order, production ends with the best of them.

Every call of ``run`` records its decision - promoted, not promoted, or refused - in
``models/<name>/promotions/`` (``records``), the audit trail of what was promoted when, from
which run, and why. While the model is frozen (``mammo models freeze``, read under the lock)
every decision is "not promoted: frozen (reason)". The result names the production version
after the step and the one before it (``version``, ``previous_version``: ``mammo models list``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from mammo.config import (
    DEFAULT_PROMOTION_MIN,
    DEFAULT_PROMOTION_MIN_CANCERS,
    DEFAULT_PROMOTION_RULE,
    lookup_metric,
    metric_mode,
)
from mammo.errors import MammoError
from mammo.model_card import card_beside, make_card
from mammo.model_versions import version_label
from mammo.production import (
    collect_garbage,
    current_manifest,
    expected_sha256,
    export_beside,
    fence_of,
    frozen_reason,
    lock_uri,
    model_key,
    previous_summary,
    production_manifest,
    read_freeze,
    read_records,
    read_retention,
    stage,
    swap,
)
from mammo.production import record_decision as _record_decision
from mammo.promotion import PromotionRule, confirm, recheck
from mammo.storage import join, production_model_uri
from mammo.storage.layout import check_name
from mammo.storage.lock import hold

log = logging.getLogger(__name__)


def check_rule(
    metric: str, margin: float, rule: str = DEFAULT_PROMOTION_RULE, floor: float = DEFAULT_PROMOTION_MIN,
    min_cancers: int = DEFAULT_PROMOTION_MIN_CANCERS,
) -> PromotionRule:
    """The promoter's promotion rule, checked (``mammo.promotion.PromotionRule.check``: ``metric``
    is one the evaluator reports for every candidate, ``margin`` a finite number, not negative,
    ...); ConfigError otherwise."""
    checked = PromotionRule(metric=metric, rule=rule, margin=margin, floor=floor, min_cancers=min_cancers)
    checked.check()
    return checked


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


def _value(verdict: dict[str, Any], key: str) -> Any:
    value = verdict.get(key)
    return value if isinstance(value, (int, float)) or value is None else None


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
    verdict: dict[str, Any] | None = None,
    keep: int | None = None,
    rule: str = DEFAULT_PROMOTION_RULE,
    floor: float = DEFAULT_PROMOTION_MIN,
    min_cancers: int = DEFAULT_PROMOTION_MIN_CANCERS,
) -> dict[str, Any]:
    """Promote an evaluator run's best candidate to production.

    Promotes `candidate_uri` if it (still) beats production; returns the decision, and the new
    production checkpoint when promoted. A "no" verdict is recorded as it is; a "yes" is decided
    again from its recorded figures under this promoter's rule (`mammo.promotion.confirm`) and
    still has to hold against production under the lock. Without a verdict the headline figures
    are compared by `margin` (`decide`; the switch's own tests). Whatever happens, the decision is
    recorded; a refused promotion (checksum mismatch, lost lock) is recorded, then raised.

    Args:
        candidate_uri: The checkpoint to promote (the evaluator's `best_uri`).
        candidate_metrics: The evaluator's `metrics` (`{"val"|"test": {"image"|"breast": {...}}}`).
        store_uri: Storage root, e.g. `s3://mammo`.
        model_name: `models/<name>/` (a plain name).
        metric: The rule's metric (`promotion_metric`).
        margin: The rule's margin (`promotion_margin`).
        candidate_sha256: Its sha256 (the evaluator's `best_sha256`); must match the object's recorded
            sha256.
        provenance: Recorded in the production manifest and the decision record: the pipeline passes run
            id, candidate name, threshold, report URI, dataset fingerprint.
        verdict: The evaluator step's decision (`mammo.promotion.decide`: `promote`, `reason`, and for
            the statistical rule `rule`, `production_sha256`, both figures with intervals); the pipeline
            step and `mammo component promoter` always pass it. A "no" is recorded as it is, a "yes"
            holds only against the production model it was decided against.
        keep: How many promoted models stay below `production/` (the current one and those before it);
            default None: the model's retention setting (`mammo models retention`), `KEEP_PROMOTED` (3)
            when unset.
        rule: The promotion rule (`mammo.promotion.PromotionRule`): `paired_bootstrap` or `margin`; the
            evaluator's verdict must have been decided under the same rule.
        floor: The rule's floor (`promotion_min`).
        min_cancers: The rule's minimum of test cancers (`promotion_min_cancers`).
    """
    check_name("model name", model_name)
    promotion_rule = check_rule(metric, margin, rule, floor, min_cancers)
    prefix = production_model_uri(store_uri, model_name)
    base: dict[str, Any] = {
        "promoted": False, "production_uri": prefix, "candidate_uri": candidate_uri,
        "candidate_sha256": candidate_sha256, "metric": metric, "margin": margin,
        "provenance": provenance or {}, "kind": "promotion", "metrics": candidate_metrics,
    }

    production_now: dict[str, str | None] = {"sha256": _sha(current_manifest(prefix))}

    def record_decision(store: str, name: str, result: dict[str, Any], *, when: datetime | None = None) -> str:
        """Record ``result`` with the production versions before and after the decision."""
        _versions(store, name, result, production_now["sha256"])
        return _record_decision(store, name, result, when=when)

    # Not promoted without the lock: while frozen, the record says so first.
    freeze = read_freeze(store_uri, model_name)

    def frozen_first(reason: str) -> str:
        return reason if freeze is None else f"{frozen_reason(freeze)}; besides: {reason}"

    if verdict is not None and not verdict.get("promote"):
        result = {
            **base, "promote": False, "decided_by": "evaluator",
            "candidate": _value(verdict, "candidate"), "production": _value(verdict, "production"),
            "reason": frozen_first(str(verdict.get("reason") or "the evaluator decided against promotion")),
            "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        record_decision(store_uri, model_name, result)
        log.info("not promoted: %s", result["reason"])
        return result
    if verdict is not None:
        holds, why = confirm(promotion_rule, verdict) if verdict.get("rule") else (
            False, "the evaluator's verdict names no promotion rule; it cannot be checked, not promoted")
        if not holds:
            result = {
                **base, "promote": False, "decided_by": "promoter",
                "candidate": _value(verdict, "candidate"), "production": _value(verdict, "production"),
                "reason": frozen_first(why), "verdict": {k: verdict.get(k) for k in ("promote", "reason")},
                "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            record_decision(store_uri, model_name, result)
            log.info("not promoted: %s", result["reason"])
            return result

    fence = fence_of(current_manifest(prefix))
    with hold(lock_uri(store_uri, model_name), floor=fence, intent={"candidate_uri": candidate_uri}) as lease:
        expected = current_manifest(prefix)
        production_now["sha256"] = _sha(expected)
        freeze = read_freeze(store_uri, model_name)
        if freeze is not None:
            decision = {"metric": metric, "margin": margin, "rule": rule, "candidate": _value(verdict or {}, "candidate"),
                        "production": _value(verdict or {}, "production"), "promote": False,
                        "reason": frozen_reason(freeze), "frozen": freeze}
        elif verdict is not None and verdict.get("rule"):
            # The evaluator's statistical rule (mammo.promotion) holds only against the
            # production model it compared with; it cannot be repeated here.
            decision = recheck(verdict, None if expected is None else expected.metadata.get("sha256"), candidate_sha256)
        else:
            decision = decide(
                candidate_metrics=candidate_metrics, store_uri=store_uri, model_name=model_name,
                metric=metric, margin=margin, candidate_sha256=candidate_sha256,
            )
        now = datetime.now(timezone.utc)
        result = {**base, "decided_at": now.isoformat(timespec="seconds"), "decided_by": "promoter", **decision}
        if verdict is not None:
            result["verdict"] = {k: verdict.get(k) for k in ("promote", "reason")}
        try:
            if decision["promote"]:
                digest = expected_sha256(candidate_uri, candidate_sha256)
                lease.set_intent({"candidate_uri": candidate_uri, "staged": model_key(digest)})
                entry = stage(candidate_uri, digest, prefix)
                extra = export_beside(prefix, digest, (provenance or {}).get("threshold"), result)
                metadata = {
                    "model_name": model_name, "source_uri": candidate_uri, "metric": metric,
                    "value": decision["candidate"], "metrics": candidate_metrics,
                    "promoted_at": result["decided_at"], "reason": decision["reason"],
                    "previous": previous_summary(expected), **(provenance or {}),
                    **({"export": next(iter(extra))} if extra else {}),
                }
                metadata["version"] = version_label(read_records(store_uri, model_name), digest)
                card = make_card(store_uri, model_name=model_name, version=metadata["version"], sha256=digest,
                                 candidate_uri=candidate_uri, provenance=provenance or {},
                                 decision={"rule": rule, "floor": floor, "min_cancers": min_cancers, **decision},
                                 replaced=metadata["previous"], candidate_metrics=candidate_metrics)
                cards = card_beside(prefix, digest, card, result)
                kept = keep if keep is not None else read_retention(store_uri, model_name)
                swap(prefix, lease, expected, entry, metadata, kept, {**extra, **cards})
                result.update(promoted=True, model_uri=join(prefix, model_key(digest)), sha256=digest, fence=lease.token)
                log.info("promoted %s to %s: %s", candidate_uri, result["model_uri"], decision["reason"])
            else:
                log.info("not promoted: %s", decision["reason"])
            collect_garbage(prefix, lock_uri(store_uri, model_name))
        except MammoError as err:
            refused = {**result, "promoted": False, "promote": False, "reason": f"refused: {err}"}
            record_decision(store_uri, model_name, refused, when=now)
            raise
        record_decision(store_uri, model_name, result, when=now)
    return result


def _sha(manifest: Any) -> str | None:
    return None if manifest is None else manifest.metadata.get("sha256")


def _versions(store_uri: str, model_name: str, result: dict[str, Any], before: str | None) -> None:
    """``version`` / ``previous_version``: production's version (``v<N>``, ``mammo models list``)
    after and before this decision (``before``: production's sha256 when it was made), with
    their sha256 - the same two when production did not change."""
    records = read_records(store_uri, model_name)
    after = result.get("sha256") if result.get("promoted") else before
    result.update(version=version_label(records, after), version_sha256=after,
                  previous_version=version_label(records, before), previous_sha256=before)
