"""The evaluator's KFP step (``mammo_pipelines.steps.evaluator`` calls ``run_step``): evaluate
both trainers' best checkpoints, decide whether the best candidate beats production (the
pipeline's ``dsl.If`` gate), and fill the step's artifacts for the KFP UI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mammo.console import setup_logging
from mammo.storage import get_bytes, run_uri
from mammo_components.artifacts import log_numbers, write_artifact_json
from mammo_components.evaluator.entrypoint import COMPONENT, run
from mammo_components.promoter.entrypoint import decide


def log_classification(classification: Any, result: Mapping[str, Any]) -> None:
    """KFP ClassificationMetrics: the test ROC curve (when test holds both classes) and the
    confusion matrix, breast level, at the threshold chosen on val."""
    roc = result["roc"]
    if roc["fpr"]:
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    matrix = result["confusion_matrix"]
    classification.log_confusion_matrix(matrix["labels"], matrix["matrix"])


def record_best(best: Any, result: Mapping[str, Any], decision: Mapping[str, Any], run_id: str) -> None:
    """The ``best`` Model artifact (the pipeline's output, the promoter's input): metadata with
    the best candidate's URI, sha256, name, threshold, metrics, report and the verdict; file: the
    whole result with the decision."""
    best.metadata.update({
        "uri": result["best_uri"], "sha256": result["best_sha256"], "name": result["best_name"],
        "threshold": result["threshold"], "metrics": result["metrics"], "report_uri": result["report_uri"],
        "evaluation_uri": result["out_uri"], "run_id": run_id, "decision": dict(decision),
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
    baseline: Any,
    unfreeze: Any,
    best: Any,
    metrics: Any,
    classification: Any,
    report: Any,
) -> bool:
    """Evaluate the ``baseline`` and ``unfreeze`` Models' checkpoints into
    ``<store>/runs/<run_id>/evaluator``, fill ``metrics`` (val/test x image/breast),
    ``classification``, ``report`` (the HTML report) and ``best``; return whether the best
    candidate should replace production."""
    setup_logging()
    result = run(
        dataset_uri=dataset_uri, split_uri=split_uri, params=params,
        checkpoint_uris=[baseline.metadata["uri"], unfreeze.metadata["uri"]],
        out_uri=run_uri(store_uri, run_id, COMPONENT),
    )
    decision = decide(
        candidate_metrics=result["metrics"], candidate_sha256=result["best_sha256"],
        store_uri=store_uri, model_name=model_name, metric=promotion_metric, margin=promotion_margin,
    )
    log_numbers(metrics, result["metrics"])
    log_classification(classification, result)
    Path(report.path).write_bytes(get_bytes(result["report_uri"]))
    record_best(best, result, decision, run_id)
    return bool(decision["promote"])
