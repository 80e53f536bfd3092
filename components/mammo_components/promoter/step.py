"""The promoter's KFP step (``promoter.component.promoter`` calls ``run_step``)."""

from __future__ import annotations

from typing import Any

from mammo.config import DEFAULT_PROMOTION_MIN, DEFAULT_PROMOTION_MIN_CANCERS, DEFAULT_PROMOTION_RULE
from mammo.console import setup_logging
from mammo_components.artifacts import write_artifact_json
from mammo_components.promoter.entrypoint import run


def run_step(
    *,
    store_uri: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    dataset_fingerprint: str,
    candidate: Any,
    production: Any,
    promotion_rule: str = DEFAULT_PROMOTION_RULE,
    promotion_min: float = DEFAULT_PROMOTION_MIN,
    promotion_min_cancers: int = DEFAULT_PROMOTION_MIN_CANCERS,
) -> dict[str, Any]:
    """Promote the evaluator's ``candidate`` Model (its metadata: URI, sha256, metrics, run id,
    name, threshold, report, and the evaluator's ``decision``) if it still beats production; the
    result fills ``production``. The pipeline runs this step after every evaluation, so that
    every decision, also "not promoted", is on record."""
    setup_logging()
    meta = candidate.metadata
    result = run(
        candidate_uri=meta["uri"], candidate_sha256=meta["sha256"], candidate_metrics=meta["metrics"],
        store_uri=store_uri, model_name=model_name, metric=promotion_metric, margin=promotion_margin,
        rule=promotion_rule, floor=promotion_min, min_cancers=promotion_min_cancers,
        provenance={
            "run_id": meta["run_id"], "candidate_name": meta["name"], "threshold": meta["threshold"],
            "report_uri": meta["report_uri"], "dataset_fingerprint": dataset_fingerprint,
        },
        verdict=meta.get("decision") or {"promote": False, "reason": "the evaluator recorded no promotion verdict"},
    )
    production.metadata.update(result)
    write_artifact_json(production, result)
    return result
