"""Evaluator: scores checkpoints fetched by URI on val and test, names the best candidate and
publishes metrics, predictions, plots and the HTML report.

The result also carries what the pipeline shows as KFP ClassificationMetrics: the test ROC
curve and the confusion matrix at the operating threshold, both at breast level (the unit the
competition scores).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from mammo import storage
from mammo.config import lookup_metric
from mammo.errors import ConfigError
from mammo.metrics import headline
from mammo.storage.parallel import run_parallel
from mammo_components.inputs import fetch_checkpoint, fetch_stage_inputs, normalize_uri
from mammo_components.publishing import publish_outputs
from mammo_components.telemetry import run_id_from_uri, telemetry_step

log = logging.getLogger(__name__)
COMPONENT = "evaluator"
#: KFP's ClassificationMetrics needs no more than this to draw a ROC curve.
ROC_POINTS = 200


def roc_points(breasts: pd.DataFrame, limit: int = ROC_POINTS) -> dict[str, list[float]]:
    """ROC curve of breast-level predictions, thinned to ``limit`` points (ends kept).

    scikit-learn's first threshold is +inf (nothing called positive); it becomes 1.0, so every
    threshold is a finite probability. Empty lists when only one class is present."""
    labels, probs = breasts["label"].to_numpy(), breasts["prob"].to_numpy()
    if len(np.unique(labels)) < 2:
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(labels, probs)
    if len(fpr) > limit:
        keep = np.unique(np.linspace(0, len(fpr) - 1, limit).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "thresholds": [float(v) for v in np.minimum(thresholds, 1.0)],
    }


def confusion(breast_metrics: dict[str, Any]) -> dict[str, Any]:
    """The confusion matrix of ``binary_metrics`` output, rows = truth, columns = prediction."""
    m = breast_metrics
    return {"labels": ["no cancer", "cancer"], "matrix": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]}


def _check_names(uris: list[str], paths: list[Path]) -> None:
    """The engine names candidates by file name, or folder/file name where those collide;
    two candidates with the same name could not be told apart in the report."""
    from mammo.evaluate import candidate_names

    names = candidate_names([str(p) for p in paths])
    for i, name in enumerate(names):
        if names.index(name) != i:
            other = uris[names.index(name)]
            raise ConfigError(
                f"checkpoints {other} and {uris[i]} would both be called {name!r}: "
                "evaluate checkpoints from differently named folders or files"
            )


def run(
    *,
    dataset_uri: str,
    split_uri: str,
    checkpoint_uris: list[str],
    out_uri: str,
    params: dict[str, Any],
    workdir: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint_uris`` and publish the evaluation at ``out_uri``; return the result."""
    from mammo.evaluate import REPORT_NAME, run_evaluation

    with telemetry_step(COMPONENT, run_id or run_id_from_uri(out_uri)):
        if not checkpoint_uris:
            raise ConfigError("checkpoint_uris: give at least one checkpoint URI to evaluate")
        out_uri = normalize_uri(out_uri)
        uris = [normalize_uri(uri) for uri in checkpoint_uris]
        inputs = fetch_stage_inputs(params=params, workdir=workdir, dataset_uri=dataset_uri, split_uri=split_uri)
        fetched = dict(run_parallel(lambda uri: fetch_checkpoint(uri, inputs.work), uris, workers=4))
        paths = [fetched[uri][0] for uri in uris]
        _check_names(uris, paths)
        out_dir = inputs.out_dir(out_uri)
        shutil.rmtree(out_dir, ignore_errors=True)
        config = inputs.config("evaluate", out_dir)
        config.checkpoints = [str(p) for p in paths]
        evaluation = run_evaluation(config)

        metrics = evaluation.metrics
        uri_of = {str(path): uri for path, uri in zip(paths, uris, strict=True)}
        best_uri = uri_of[metrics["candidates"][0]["path"]]
        result = {
            "out_uri": out_uri,
            "best_uri": best_uri,
            "best_sha256": fetched[best_uri][1],
            "best_name": metrics["best"],
            "threshold": metrics["threshold"],
            "rank_metric": metrics["rank_metric"],
            "metrics": {split: headline(metrics[split]) for split in ("val", "test")},
            "report_uri": storage.join(out_uri, REPORT_NAME),
            "roc": roc_points(evaluation.best_breasts("test")),
            "confusion_matrix": confusion(metrics["test"]["breast"]),
            "candidates": [
                {
                    "name": c["name"],
                    "uri": uri_of[c["path"]],
                    "sha256": fetched[uri_of[c["path"]]][1],
                    "rank": c["rank"],
                    metrics["rank_metric"]: lookup_metric(c["val"], metrics["rank_metric"]),
                }
                for c in metrics["candidates"]
            ],
        }
        publish_outputs(out_dir, out_uri, result, {"component": COMPONENT, "best_uri": best_uri, "metrics": result["metrics"]})
        log.info("best candidate: %s (%s)", result["best_name"], best_uri)
    return result
