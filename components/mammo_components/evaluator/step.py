"""The evaluator's KFP step (``evaluator.component.evaluator`` calls ``run_step``): evaluate
both trainers' best checkpoints, decide whether the best candidate beats production (the verdict
the promoter, which runs after every evaluation, records and acts on), and fill the step's
artifacts for the KFP UI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mammo.config import DEFAULT_PROMOTION_MIN_CANCERS
from mammo.console import setup_logging
from mammo.storage import get_bytes, production_model_uri, run_uri
from mammo_components.artifacts import log_numbers, write_artifact_json
from mammo_components.evaluator.entrypoint import COMPONENT, run

def log_classification(classification: Any, result: Mapping[str, Any]) -> None:
    """KFP ClassificationMetrics: the test ROC curve (when test holds both classes) and the
    confusion matrix, breast level, at the threshold chosen on val."""
    roc = result["roc"]
    if roc["fpr"]:
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    matrix = result["confusion_matrix"]
    classification.log_confusion_matrix(matrix["labels"], matrix["matrix"])


def promotion_numbers(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The promotion figures worth a KFP metric: both models' values with intervals, the
    difference with its interval, and the verdict as 0/1."""
    numbers: dict[str, Any] = {"promote": 1.0 if decision.get("promote") else 0.0}
    for key in ("candidate", "production", "difference"):
        numbers[key] = decision.get(key)
        interval = decision.get(f"{key}_ci") or {}
        numbers[f"{key}_low"], numbers[f"{key}_high"] = interval.get("low"), interval.get("high")
    return numbers


def record_best(best: Any, result: Mapping[str, Any], decision: Mapping[str, Any], run_id: str,
                kfp_run_id: str = "") -> None:
    """The ``best`` Model artifact (the pipeline's output, the promoter's input): metadata with
    the best candidate's URI, sha256, name, threshold, metrics, report and the verdict, the run
    folder's id and the KFP run that evaluated it; file: the whole result with the decision."""
    best.metadata.update({
        "uri": result["best_uri"], "sha256": result["best_sha256"], "name": result["best_name"],
        "threshold": result["threshold"], "metrics": result["metrics"], "report_uri": result["report_uri"],
        "evaluation_uri": result["out_uri"], "run_id": run_id, "kfp_run_id": kfp_run_id, "decision": dict(decision),
        "warnings": list(result.get("warnings") or []), "bootstrap": result.get("bootstrap"),
        "ensemble": result.get("ensemble"),
    })
    write_artifact_json(best, {**result, "decision": dict(decision)})


def run_step(
    *,
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict[str, Any],
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    promotion_rule: str,
    promotion_min: float,
    baseline: Any,
    promotion_min_cancers: int = DEFAULT_PROMOTION_MIN_CANCERS,
    unfreeze: Any,
    best: Any,
    metrics: Any,
    classification: Any,
    report: Any,
    kfp_run_id: str = "",
    fold_models: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Evaluate the ``baseline`` and ``unfreeze`` Models' checkpoints into
    ``<store>/runs/<run_id>/evaluator``, re-evaluate the production model beside them and
    decide promotion by the promotion rule, fill ``metrics`` (val/test x image/breast with
    their intervals, and the promotion figures), ``classification``, ``report`` (the HTML
    report) and ``best``; return whether the best candidate should replace production.
    ``fold_models`` (``folds`` > 1) adds the fold models and their ensemble as candidates."""
    setup_logging()
    rule = {"promotion_metric": promotion_metric, "promotion_margin": promotion_margin,
            "promotion_rule": promotion_rule, "promotion_min": promotion_min,
            "promotion_min_cancers": promotion_min_cancers}
    result = run(
        dataset_uri=dataset_uri, split_uri=split_uri, params={**params, **rule},
        checkpoint_uris=[baseline.metadata["uri"], unfreeze.metadata["uri"]],
        out_uri=run_uri(store_uri, run_id, COMPONENT),
        production_uri=production_model_uri(store_uri, model_name),
        folds=[dict(member) for member in fold_models],
    )
    decision = dict(result["decision"])
    if decision.get("production_sha256") == result["best_sha256"]:
        decision.update(promote=False, reason="this model is already in production")
    log_numbers(metrics, result["metrics"])
    log_numbers(metrics, promotion_numbers(decision), "promotion.")
    log_classification(classification, result)
    Path(report.path).write_bytes(get_bytes(result["report_uri"]))
    record_best(best, result, decision, run_id, kfp_run_id)
    return bool(decision["promote"])
