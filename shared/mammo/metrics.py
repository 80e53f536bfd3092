"""Image- and breast-level classification metrics, including the competition's probabilistic F1.

Every metric is defined for every input: values that are undefined (no positives, one class only,
empty input) are NaN (``None`` after ``to_jsonable``) instead of an exception or a scikit-learn
warning, so a validation set without cancer cases cannot crash a training run.
The competition scores breasts (``{patient_id}_{laterality}``), so ``evaluate_predictions``
reports both levels. numpy and scikit-learn only: the pipeline layer imports this module.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from mammo.errors import DataError

Aggregation = Literal["mean", "max"]
NAN = float("nan")
PREDICTION_COLUMNS = ("patient_id", "laterality", "label", "prob")


def _arrays(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.size} vs {p.size}")
    return y, p


def _ratio(num: float, den: float) -> float:
    return num / den if den else NAN


def aggregate_breasts(frame: pd.DataFrame, how: Aggregation = "mean") -> pd.DataFrame:
    """One row per breast: label = max over its images, prob = mean (or max) of its images.

    Output columns: breast_id, patient_id, laterality, label, prob, n_images (+ split when the
    input has one; all images of a patient share a split). Sorted by patient_id, laterality.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"predictions: missing required column(s): {', '.join(missing)}")
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    aggregations: dict[str, tuple[str, str]] = {
        "label": ("label", "max"),
        "prob": ("prob", how),
        "n_images": ("prob", "size"),
    }
    if "split" in frame.columns:
        aggregations["split"] = ("split", "first")
    keys = frame[["patient_id", "laterality"]].astype(str)
    grouped = (
        frame.assign(patient_id=keys["patient_id"], laterality=keys["laterality"])
        .groupby(["patient_id", "laterality"], sort=True)
        .agg(**aggregations)
        .reset_index()
    )
    grouped.insert(0, "breast_id", grouped["patient_id"] + "_" + grouped["laterality"])
    grouped["label"] = grouped["label"].astype(np.int64)
    grouped["prob"] = grouped["prob"].astype(np.float64)
    grouped["n_images"] = grouped["n_images"].astype(np.int64)
    return grouped


def pf1(labels: Any, probs: Any) -> float:
    """Probabilistic F1 (RSNA 2023): precision and recall from summed probabilities.

    NaN without positives (recall undefined); 0 when precision or recall is 0.
    """
    y, p = _arrays(labels, probs)
    n_pos = int(y.sum())
    if n_pos == 0:
        return NAN
    p = np.clip(p, 0.0, 1.0)
    ctp = float(p[y == 1].sum())
    cfp = float(p[y == 0].sum())
    if ctp == 0.0:
        return 0.0
    precision = ctp / (ctp + cfp)
    recall = ctp / n_pos
    return 2 * precision * recall / (precision + recall)


def _f1_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 of ``p >= t`` for every distinct score ``t`` (descending), by cumulative sums."""
    order = np.argsort(-p, kind="stable")
    scores = p[order]
    tp = np.cumsum(y[order])
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = tp[last_of_value]
    predicted = last_of_value + 1
    f1 = 2 * tp / (predicted + y.sum())
    return f1, scores[last_of_value]


def best_f1(labels: Any, probs: Any) -> tuple[float, float | None]:
    """Highest F1 over every distinct score used as threshold (positive when prob >= t).

    Exact (no grid); ties go to the highest threshold. (NaN, None) without positives.
    """
    y, p = _arrays(labels, probs)
    if y.sum() == 0 or not np.isfinite(p).all():
        return NAN, None
    f1, thresholds = _f1_curve(y, p)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thresholds[i])


def best_pf1_threshold(labels: Any, probs: Any) -> float | None:
    """Threshold maximising pF1 of the binarised predictions (prob >= t -> 1, else 0).

    With 0/1 predictions pF1's summed probabilities are counts (ctp = TP, cfp = FP), so binarised
    pF1 is exactly F1: this is ``best_f1``'s threshold, stated under the competition's name.
    """
    return best_f1(labels, probs)[1]


def binary_metrics(
    labels: Any, probs: Any, threshold: float = 0.5, loss: float | None = None
) -> dict[str, Any]:
    """Ranking metrics (AUC, PR-AUC, pF1, best F1) and confusion-based metrics at ``threshold``.

    Undefined values are NaN (best_threshold: None): AUC needs both classes; PR-AUC, pF1,
    best F1 and recall need positives; specificity needs negatives; precision needs at least
    one predicted positive. Non-finite probabilities (a diverged model) leave the ranking
    metrics NaN.
    """
    y, p = _arrays(labels, probs)
    n = int(y.size)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    finite = bool(np.isfinite(p).all())
    both = n_pos > 0 and n_neg > 0
    auc = float(roc_auc_score(y, p)) if both and finite else NAN
    pr_auc = float(average_precision_score(y, p)) if n_pos > 0 and finite else NAN
    best, best_threshold = best_f1(y, p)
    if n:
        tn, fp, fn, tp = (
            int(v) for v in confusion_matrix(y, p >= threshold, labels=[0, 1]).ravel()
        )
    else:
        tn = fp = fn = tp = 0
    recall = _ratio(tp, tp + fn)
    return {
        "n": n,
        "n_pos": n_pos,
        "prevalence": _ratio(n_pos, n),
        "loss": None if loss is None else float(loss),
        "auc": auc,
        "pr_auc": pr_auc,
        "pf1": pf1(y, p) if finite else NAN,
        "best_f1": best,
        "best_threshold": best_threshold,
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": recall,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "recall_rate": _ratio(tp + fp, n),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def evaluate_predictions(
    frame: pd.DataFrame,
    threshold_image: float = 0.5,
    threshold_breast: float = 0.5,
    how: Aggregation = "mean",
    loss: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Image-level and breast-level metrics of a predictions frame (patient_id, laterality,
    label, prob); ``loss`` is the image-level loss and is reported there only."""
    breasts = aggregate_breasts(frame, how)
    return {
        "image": binary_metrics(frame["label"], frame["prob"], threshold_image, loss),
        "breast": binary_metrics(breasts["label"], breasts["prob"], threshold_breast),
    }


def format_metric(value: Any, digits: int = 4) -> str:
    """Human-readable figure for logs and reports: floats rounded, undefined values "n/a"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


#: Figures worth a glance (command output, the evaluator's result, KFP metrics); the full set
#: stays in metrics/history files. ``loss`` is image-level and only known while training.
#: ``recall_rate`` is the share flagged at the threshold (screening's recall rate).
HEADLINE_KEYS = (
    "loss", "auc", "pr_auc", "pf1", "sensitivity", "specificity", "precision", "recall_rate",
    "n", "n_pos", "prevalence",
)


def headline(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"image": {...}, "breast": {...}}`` cut down to ``HEADLINE_KEYS`` (missing ones None).

    A level that carries confidence intervals (``ci``: ``{metric: {"low", "high", ...}}``, added
    by the evaluation) keeps those of the headline figures, as ``ci: {metric: {"low", "high"}}``."""
    out = {}
    for level in ("image", "breast"):
        values = metrics[level]
        row = {k: values.get(k) for k in HEADLINE_KEYS}
        intervals = values.get("ci")
        if isinstance(intervals, dict):
            row["ci"] = {
                k: {"low": intervals[k].get("low"), "high": intervals[k].get("high")}
                for k in HEADLINE_KEYS if isinstance(intervals.get(k), dict)
            }
        out[level] = row
    return out
