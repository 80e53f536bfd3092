"""Evaluate one or more checkpoints on the validation and test splits.

The operating threshold is chosen on validation (maximum breast-level pF1 by default, F1 as an
option) and applied unchanged to test, so the test figures are an honest estimate. With several
checkpoints, each is scored the same way and ranked by a validation metric; the best one's
figures head ``metrics.json`` and the report.

``run_evaluation`` writes the files (metrics.json, predictions, plots, report) and returns their
content as an ``Evaluation``, so callers (the evaluator component) need not read them back;
``evaluate`` returns its short summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mammo.config import EvalConfig, dump_config, lookup_metric, metric_mode
from mammo.data.augment import BatchTransform
from mammo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mammo.engine.data import SplitData, eval_loader, load_split_data, require
from mammo.engine.loop import gather_predictions, predict
from mammo.engine.runtime import Runtime, runtime_for, seed_everything
from mammo.jsonio import to_jsonable, write_json
from mammo.metrics import (
    aggregate_breasts,
    best_f1,
    best_pf1_threshold,
    evaluate_predictions,
    format_metric,
    headline,
)
from mammo.report import write_plots, write_report
from mammo.storage.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
METRICS_NAME = "metrics.json"
PREDICTIONS_IMAGE = "predictions_image.csv"
PREDICTIONS_BREAST = "predictions_breast.csv"
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Evaluation:
    """What ``run_evaluation`` wrote to ``out``, in memory.

    ``metrics`` is the content of metrics.json (best candidate, threshold, its val/test metrics,
    every candidate ranked); ``predictions`` and ``breasts`` are the image- and breast-level
    predictions of every candidate (columns ``split`` and ``checkpoint`` tell them apart), as in
    predictions_image.csv and predictions_breast.csv."""

    out: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    breasts: pd.DataFrame

    @property
    def best(self) -> str:
        return self.metrics["best"]

    def best_breasts(self, split: str) -> pd.DataFrame:
        """The best candidate's breast-level predictions on ``split``."""
        b = self.breasts
        return b[(b["checkpoint"] == self.best) & (b["split"] == split)]

    def summary(self) -> dict[str, Any]:
        """The short form ``mammo evaluate`` prints: best candidate, threshold, headline figures."""
        m = self.metrics
        return {
            "out": str(self.out),
            "best": m["best"],
            "threshold": m["threshold"],
            "val": headline(m["val"]),
            "test": headline(m["test"]),
            "ranking": [
                {"name": c["name"], m["rank_metric"]: lookup_metric(c["val"], m["rank_metric"])}
                for c in m["candidates"]
            ],
        }


def candidate_names(paths: list[str]) -> list[str]:
    """Short unique names: the file name, prefixed by its folder where names collide."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(p).parent.name}/{Path(p).name}" for p in paths]


def choose_threshold(breasts: pd.DataFrame, metric: str) -> float | None:
    """The breast-level threshold that maximises ``metric`` (pf1 or f1) on validation."""
    labels, probs = breasts["label"].to_numpy(), breasts["prob"].to_numpy()
    if metric == "pf1":
        return best_pf1_threshold(labels, probs)
    return best_f1(labels, probs)[1]


def _predict_split(model, data: SplitData, name: str, config: EvalConfig, image_size: int, runtime: Runtime, in_channels: int) -> pd.DataFrame:
    """Image probabilities of one split; in a distributed run each process predicts its shard
    and every process gets all of them."""
    rows = data.rows(name)
    columns = ["patient_id", "image_id", "laterality", "breast_id", "label", "prob", "split"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    sized = config.model_copy(update={"data": config.data.model_copy(update={"image_size": image_size})})
    device = runtime.device
    loader = eval_loader(rows, sized, runtime)
    preds = gather_predictions(
        predict(model, loader, BatchTransform(None, in_channels).to(device), runtime.precision, device, desc=f"predict {name}"),
        runtime,
    )
    picked = rows.iloc[preds.index]
    return pd.DataFrame(
        {
            "patient_id": picked["patient_id"].to_numpy(),
            "image_id": picked["image_id"].to_numpy(),
            "laterality": picked["laterality"].to_numpy(),
            "breast_id": picked["breast_id"].to_numpy(),
            "label": picked["cancer"].to_numpy().astype(int),
            "prob": preds.probs,
            "split": name,
        }
    )


def score_candidate(images: pd.DataFrame, config: EvalConfig) -> dict[str, Any]:
    """Threshold from val, then image- and breast-level metrics for val and test."""
    how = config.data.breast_aggregation
    val = images[images["split"] == "val"]
    threshold = choose_threshold(aggregate_breasts(val, how), config.threshold_metric) if len(val) else None
    applied = 0.5 if threshold is None else threshold
    result: dict[str, Any] = {"threshold": threshold, "threshold_metric": config.threshold_metric}
    for name in SPLITS:
        part = images[images["split"] == name]
        result[name] = evaluate_predictions(part, threshold_image=applied, threshold_breast=applied, how=how)
    return to_jsonable(result)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of ``config``; write metrics, predictions, plots and report;
    return the summary (``Evaluation.summary``)."""
    return run_evaluation(config).summary()


def run_evaluation(config: EvalConfig, runtime: Runtime | None = None) -> Evaluation:
    """Evaluate every checkpoint of ``config``; write metrics, predictions, plots and report
    to ``config.out`` and return them. Several processes share the predicting; the main one
    writes (the others return the same figures)."""
    with runtime_for(config, runtime) as made:
        return _run_evaluation(config, made)


def _run_evaluation(config: EvalConfig, runtime: Runtime) -> Evaluation:
    checkpoints = require(config.checkpoints, "--checkpoint")
    out = Path(require(config.out, "--out (out)"))
    seed_everything(config.seed, config.deterministic)
    data = load_split_data(config)
    size_given = "image_size" in config.data.model_fields_set

    candidates, image_frames = [], []
    for path, name in zip(checkpoints, candidate_names(checkpoints)):
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, source=str(path)).to(runtime.device)
        image_size = config.data.image_size if size_given else int(payload["image_size"])
        in_channels = int(payload["model_config"]["in_channels"])
        log.info("evaluating %s (%s, epoch %s, %d px)", name, payload["stage"], payload["epoch"], image_size)
        frames = [
            _predict_split(model, data, split, config, image_size, runtime, in_channels)
            for split in SPLITS
        ]
        images = pd.concat([f for f in frames if not f.empty] or frames, ignore_index=True)
        scores = score_candidate(images, config)
        candidates.append(
            {
                "name": name,
                "path": str(path),
                "stage": payload["stage"],
                "epoch": payload["epoch"],
                "backbone": payload["model_config"]["backbone"],
                "image_size": image_size,
                "split_fingerprint": payload["split_fingerprint"],
                **scores,
            }
        )
        image_frames.append(images.assign(checkpoint=name))

    order = rank_candidates(candidates, config.rank_metric)
    best = candidates[order[0]]
    for rank, i in enumerate(order, start=1):
        candidates[i]["rank"] = rank
    metrics = {
        "best": best["name"],
        "rank_metric": config.rank_metric,
        "threshold": best["threshold"],
        "threshold_metric": config.threshold_metric,
        "val": best["val"],
        "test": best["test"],
        "candidates": [candidates[i] for i in order],
        "split_fingerprint": data.fingerprint,
    }
    predictions = pd.concat(image_frames, ignore_index=True)
    breasts = pd.concat(
        [
            aggregate_breasts(part, config.data.breast_aggregation).assign(split=split, checkpoint=ckpt)
            for (ckpt, split), part in predictions.groupby(["checkpoint", "split"], sort=False)
        ],
        ignore_index=True,
    )
    if runtime.is_main:
        write_text_atomic(out / "config.yaml", dump_config(config))
        _write_csv(out / PREDICTIONS_IMAGE, predictions)
        _write_csv(out / PREDICTIONS_BREAST, breasts)
        best_images = predictions[predictions["checkpoint"] == best["name"]]
        best_breasts = breasts[breasts["checkpoint"] == best["name"]]
        plots = write_plots(out, best_images, best_breasts)
        write_json(out / METRICS_NAME, metrics)
        write_report(out / REPORT_NAME, metrics, data.summary, plots)
    log.info("best candidate: %s (%s %s)", best["name"], config.rank_metric, format_metric(lookup_metric(best["val"], config.rank_metric)))
    return Evaluation(out=out, metrics=to_jsonable(metrics), predictions=predictions, breasts=breasts)


def rank_candidates(candidates: list[dict[str, Any]], key: str) -> list[int]:
    """Indices best first by ``key`` on val; undefined values rank last, ties keep input order."""
    sign = -1.0 if metric_mode(key) == "max" else 1.0

    def sort_key(i: int) -> tuple[int, float, int]:
        value = lookup_metric(candidates[i]["val"], key)
        return (1, 0.0, i) if value is None else (0, sign * value, i)

    return sorted(range(len(candidates)), key=sort_key)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
