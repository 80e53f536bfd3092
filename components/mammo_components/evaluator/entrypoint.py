"""Evaluator: scores checkpoints fetched by URI on val and test, names the best candidate and
publishes metrics, predictions, plots and the HTML report.

With a production pointer it also re-evaluates the production model on the same splits and
decides promotion (``mammo.promotion``: a paired bootstrap over patients by default); the
verdict is in the result (``decision``), the report and ``metrics.json``.

The result also carries what the pipeline shows as KFP ClassificationMetrics: the test ROC
curve and the confusion matrix at the operating threshold, both at breast level (the unit the
competition scores).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from mammo import storage
from mammo.config import lookup_metric
from mammo.ensemble import ENSEMBLE_FILE, ENSEMBLE_WEIGHTS
from mammo.errors import ConfigError, IntegrityError, MammoError
from mammo.metrics import headline
from mammo.split_ledger import trained_patients
from mammo.storage.parallel import run_parallel
from mammo_components.inputs import (
    fetch_checkpoint,
    fetch_split,
    fetch_stage_inputs,
    normalize_uri,
    optional_manifest,
    parse_params,
)
from mammo_components.publishing import publish_outputs
from mammo_components.telemetry import run_id_from_uri, telemetry_step

log = logging.getLogger(__name__)
COMPONENT = "evaluator"
#: The trainers' history, published beside their checkpoints (the report's training curves).
HISTORY_NAME = "history.json"
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


def fetch_history(uri: str, checkpoint: Path) -> None:
    """The training history published beside a checkpoint (``history.json`` in its folder's
    manifest), copied beside the local checkpoint for the report's training curves; nothing
    when the folder has none."""
    folder = uri.rpartition("/")[0]
    manifest = optional_manifest(folder)
    if manifest is not None and HISTORY_NAME in manifest.objects:
        storage.get_file(storage.join(folder, HISTORY_NAME), checkpoint.parent / HISTORY_NAME,
                         sha256=manifest.objects[HISTORY_NAME].sha256)


def fetch_production(production_uri: str, work: Path) -> tuple[Path | None, dict[str, Any]]:
    """The production model behind a production pointer (``models/<name>/production``), fetched
    and verified against its manifest: (local checkpoint, its record), (None, {}) when nothing
    was promoted yet, or (None, {"error": ...}) when it cannot be had (it is then not
    re-evaluated, and the candidate is not promoted)."""
    try:
        manifest = optional_manifest(production_uri)
        if manifest is None:
            return None, {}
        key = manifest.metadata.get("checkpoint")
        if not key or key not in manifest.objects:
            raise ConfigError(f"{storage.join(production_uri, 'manifest.json')}: names no checkpoint it lists")
        uri = storage.join(production_uri, key)
        path, sha256 = fetch_checkpoint(uri, work)
    except MammoError as err:
        log.warning("production model unavailable: %s", err)
        return None, {"uri": production_uri, "error": str(err)}
    record = {key: manifest.metadata.get(key) for key in ("source_uri", "promoted_at", "run_id", "threshold")}
    return path, {"uri": uri, "sha256": sha256, **record}


def _store_splits(split_uri: str) -> Any:
    """``mammo.split_ledger.trained_patients`` of the store holding ``split_uri``
    (``<store>/splits/<fingerprint>``); None for a split outside a store's layout."""
    store, found, _ = normalize_uri(split_uri).rpartition("/splits/")
    return trained_patients(store) if found and store else None


#: The stages each fold trains, in the order their checkpoints are evaluated.
FOLD_STAGES = ("baseline", "unfreeze")


def check_fold_checkpoints(folds: list[dict[str, Any]], fetched: dict[str, tuple[Path, str]]) -> None:
    """Every fold checkpoint is the one its trainer recorded (``IntegrityError`` otherwise)."""
    for member in folds:
        for stage in FOLD_STAGES:
            uri, expected = normalize_uri(member[stage]["uri"]), member[stage]["sha256"]
            if fetched[uri][1] != expected:
                raise IntegrityError(f"{uri}: sha256 {fetched[uri][1]} is not fold {member['fold']}'s {expected}")


def fold_split_patients(folds: list[dict[str, Any]], work: Path) -> dict[str, set[str]]:
    """The train and val patients of each fold model's split, by that split.csv's sha256 (its
    manifest's): the fold splits live in the run folder, not among the store's splits."""
    from mammo.split import SPLIT_CSV, read_split

    seen = {}
    for member in folds:
        uri = normalize_uri(member["split_uri"])
        rows, _ = read_split(fetch_split(uri, work))
        seen[storage.read_manifest(uri).objects[SPLIT_CSV].sha256] = set(rows.loc[rows["split"] != "test", "patient_id"].astype(str))
    return seen


def with_fold_splits(store_lookup: Any, folds: dict[str, set[str]]) -> Any:
    """The store's split lookup (``mammo.split_ledger.trained_patients``) that also knows the
    fold splits, so a fold model is checked against this split's test patients like any other."""
    if not folds:
        return store_lookup

    def lookup(split_sha256: str) -> set[str] | None:
        if split_sha256 in folds:
            return folds[split_sha256]
        return store_lookup(split_sha256) if store_lookup is not None else None

    return lookup


def publishable_ensemble(out_dir: Path, out_uri: str, uri_of: dict[str, str]) -> tuple[str, str]:
    """Point ``ensemble.json``'s members at their URIs in storage (the evaluation wrote local
    paths); return the URI and sha256 of the ensemble's one file (``ensemble.pt``, the
    candidate the promoter may copy to production) as it will be published in ``out_uri``."""
    from mammo.jsonio import write_json
    from mammo.storage.integrity import sha256_file

    path = out_dir / ENSEMBLE_FILE
    content = json.loads(path.read_text())
    for member in content["members"]:
        member["checkpoint"] = uri_of[member["checkpoint"]]
    write_json(path, content)
    return storage.join(out_uri, ENSEMBLE_WEIGHTS), sha256_file(out_dir / ENSEMBLE_WEIGHTS)


def run(
    *,
    dataset_uri: str,
    split_uri: str,
    checkpoint_uris: list[str],
    out_uri: str,
    params: dict[str, Any],
    production_uri: str | None = None,
    workdir: str | None = None,
    run_id: str | None = None,
    folds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate checkpoints on val and test; publish metrics, predictions, plots, report.

    The threshold is chosen on val and applied unchanged to test; with several checkpoints the
    best by the rank metric on val is named. Every figure comes with a patient-level bootstrap
    interval. With `production_uri` the production model is re-evaluated on the same splits and the
    promotion rule of `params` (`mammo.promotion`) decides whether the best candidate beats it:
    the result's `decision`. Returns the result (README: Result).

    Args:
        dataset_uri: As for the trainers: `train.csv` and the PNGs.
        split_uri: As for the trainers: the published split.
        checkpoint_uris: Checkpoints to evaluate, e.g. both trainers' `best_uri`; each verified by sha256
            before loading. They are named `<folder>/<file>` when file names collide
            (`baseline_trainer/best_auc.pt`); two candidates that would get the same name are refused.
        out_uri: Output folder, `<store>/runs/<run-id>/evaluator`.
        params: `PipelineParams`: `threshold_metric`, `threshold_source`, `rank_metric`, `image_size`
            (use the trainers' value), `batch_size`, `workers`, `device`, `evaluate_set` (any
            `EvalConfig` key, e.g. `stats.resamples=500`), and the promotion rule: `promotion_rule`,
            `promotion_metric`, `promotion_margin`, `promotion_min`, `promotion_min_cancers`.
        production_uri: The production pointer `<store>/models/<name>/production`: its model (verified
            against the manifest) is scored like a candidate, never ranked, and compared with the best
            candidate. Nothing there yet: the candidate faces the floor alone. There but unreadable: not
            promoted, and the report says why.
        workdir: Local cache and scratch (default: `$MAMMO_CACHE_DIR` or `~/.cache/mammo`).
        run_id: Telemetry label (default: `<run-id>` of `out_uri`).
        folds: `folds` > 1: the fold models, one entry per fold with both stages' best checkpoint URI and
            sha256 (the pipeline's fold models step). Each is verified and evaluated as a candidate
            (`fold-<i>-baseline_trainer/...`), and so is their **ensemble**: each fold's best on val by
            the rank metric is a member, its image probability the members' mean, then the breast rule
            and the threshold on val as for any candidate. `ensemble.json` (format `mammo-ensemble`:
            members' URIs and sha256, threshold) is published here, beside `ensemble.pt`, the one file
            of the members' weights, threshold and breast rule, which is the ensemble candidate's URI
            (what the promoter copies to production, verified by its sha256); `metrics.json`'s and the
            result's `ensemble` hold every fold model's and the ensemble's test breast figures with
            intervals and the paired bootstrap of the breast AUC, ensemble minus the best single fold
            model on val. Each member also scores its fold's held-out training patients:
            `predictions_oof.csv`; with `threshold_source: oof` the ensemble's threshold is chosen on
            them.
    """
    from mammo.evaluate import REPORT_NAME, candidate_names, run_evaluation
    from mammo.promotion import PromotionRule

    with telemetry_step(COMPONENT, run_id or run_id_from_uri(out_uri)):
        if not checkpoint_uris:
            raise ConfigError("checkpoint_uris: give at least one checkpoint URI to evaluate")
        out_uri = normalize_uri(out_uri)
        fold_uris = [[normalize_uri(member[stage]["uri"]) for stage in FOLD_STAGES] for member in folds or []]
        uris = [*(normalize_uri(uri) for uri in checkpoint_uris), *(uri for group in fold_uris for uri in group)]
        inputs = fetch_stage_inputs(params=parse_params(params), workdir=workdir, dataset_uri=dataset_uri, split_uri=split_uri)
        fetched = dict(run_parallel(lambda uri: fetch_checkpoint(uri, inputs.work), uris, workers=4))
        paths = [fetched[uri][0] for uri in uris]
        check_fold_checkpoints(folds or [], fetched)
        _check_names(uris, paths)
        for uri in uris:
            fetch_history(uri, fetched[uri][0])
        p = inputs.params
        rule = PromotionRule(metric=p.promotion_metric, rule=p.promotion_rule, margin=p.promotion_margin, floor=p.promotion_min,
                             min_cancers=p.promotion_min_cancers)
        rule.check()
        production_path, production = (None, {})
        if production_uri:
            production_path, production = fetch_production(normalize_uri(production_uri), inputs.work)
        out_dir = inputs.out_dir(out_uri)
        shutil.rmtree(out_dir, ignore_errors=True)
        config = inputs.config("evaluate", out_dir)
        config.checkpoints = [str(p) for p in paths]
        config.ensemble = [[str(fetched[uri][0]) for uri in group] for group in fold_uris]
        context = {
            "run_id": run_id or run_id_from_uri(out_uri), "dataset_uri": dataset_uri, "split_uri": split_uri,
            "candidate_uris": dict(zip(candidate_names([str(p) for p in paths]), uris, strict=True)),
            "params": p.model_dump(mode="json", exclude_none=True), "production": production,
        }
        # No model is scored on test patients it trained on: each checkpoint's split (its
        # split_fingerprint) is looked up among the store's splits, beside this one.
        evaluation = run_evaluation(
            config, reference=production_path, rule=rule, context=context,
            reference_error=production.get("error"),
            trained_patients=with_fold_splits(_store_splits(split_uri), fold_split_patients(folds or [], inputs.work)),
        )

        metrics = evaluation.metrics
        uri_of = {str(path): uri for path, uri in zip(paths, uris, strict=True)}
        sha_of = {uri: sha256 for uri, (_, sha256) in fetched.items()}
        if "ensemble" in metrics:
            ensemble_uri, ensemble_sha256 = publishable_ensemble(out_dir, out_uri, uri_of)
            uri_of[str(out_dir / ENSEMBLE_WEIGHTS)], sha_of[ensemble_uri] = ensemble_uri, ensemble_sha256
        best_uri = uri_of[metrics["candidates"][0]["path"]]
        result = {
            "out_uri": out_uri,
            "best_uri": best_uri,
            "best_sha256": sha_of[best_uri],
            "best_name": metrics["best"],
            "threshold": metrics["threshold"],
            "rank_metric": metrics["rank_metric"],
            "metrics": {split: headline(metrics[split]) for split in ("val", "test")},
            "bootstrap": metrics["bootstrap"],
            "warnings": metrics["warnings"],
            "decision": metrics["promotion"],
            "production": production or None,
            "report_uri": storage.join(out_uri, REPORT_NAME),
            "roc": roc_points(evaluation.best_breasts("test")),
            "confusion_matrix": confusion(metrics["test"]["breast"]),
            "ensemble": metrics.get("ensemble"),
            "candidates": [
                {
                    "name": c["name"],
                    "uri": uri_of[c["path"]],
                    "sha256": sha_of[uri_of[c["path"]]],
                    "rank": c["rank"],
                    metrics["rank_metric"]: lookup_metric(c["val"], metrics["rank_metric"]),
                }
                for c in metrics["candidates"]
            ],
        }
        publish_outputs(out_dir, out_uri, result, {"component": COMPONENT, "best_uri": best_uri, "metrics": result["metrics"]})
        log.info("best candidate: %s (%s); %s", result["best_name"], best_uri, result["decision"]["reason"])
    return result
