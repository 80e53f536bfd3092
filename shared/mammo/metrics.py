"""Image- and breast-level classification metrics, including the competition's probabilistic F1.

Every metric is defined for every input: values that are undefined (no positives, one class only,
empty input) are NaN (``None`` after ``to_jsonable``) instead of an exception or a scikit-learn
warning, so a validation set without cancer cases cannot crash a training run.
The competition scores breasts (``{patient_id}_{laterality}``), so ``evaluate_predictions``
reports both levels. The figures themselves (AUC, PR-AUC, pF1, sensitivity, ...) are the
registry's (``mammo.metric_registry``), computed by the same code as their bootstrap intervals
(``mammo.stats.point_metrics``); this module adds the counts, the loss and the best F1.
numpy, pandas and scipy only: the pipeline layer imports this module.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from mammo import metric_registry
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
    """Probabilistic F1 (RSNA 2023): precision and recall from summed probabilities (the
    registry's ``pf1``). NaN without positives (recall undefined); 0 when precision or recall is 0.
    """
    from mammo.stats import point_metrics

    y, p = _arrays(labels, probs)
    return point_metrics(y, p, which=("pf1",))["pf1"]


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


#: Targets of ``target_threshold`` compare counts, not ratios, with this slack (19 of 20 is a
#: specificity of 0.95 whatever the floating-point rounding of 1 - 1/20).
COUNT_SLACK = 1e-9


def target_threshold(labels: Any, probs: Any, kind: str, target: float) -> tuple[float | None, str | None]:
    """The threshold (a breast is flagged when prob >= threshold) reaching a target on these
    labels and probabilities (val), and ``None`` with the reason when none does.

    The candidates are the distinct scores, as for ``best_f1``. With P cancers, N non-cancers
    and n = P + N units, and TP(t), FP(t) the cancers and non-cancers with prob >= t:

    - ``specificity``: the lowest candidate with N - FP(t) >= target * N (the most sensitive
      threshold whose specificity is at least the target); needs non-cancers;
    - ``sensitivity``: the highest candidate with TP(t) >= target * P (the most specific
      threshold whose sensitivity is at least the target); needs cancers;
    - ``recall_rate``: the lowest candidate with TP(t) + FP(t) <= target * n (as many flagged
      as the budget allows, never more); needs no cancers.

    None when no candidate qualifies (e.g. specificity 0.95 when the top score is shared by
    more than 5 % of the non-cancers: only flagging nothing would reach it)."""
    y, p = _arrays(labels, probs)
    if y.size == 0:
        return None, "no units to choose it on"
    if not np.isfinite(p).all():
        return None, "non-finite probabilities"
    n_pos = int(y.sum())
    n_neg = int(y.size) - n_pos
    order = np.argsort(-p, kind="stable")
    scores = p[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(y[order])[last_of_value]  # flagging every score >= scores[last_of_value[k]]
    fp = last_of_value + 1 - tp
    thresholds = scores[last_of_value]  # descending
    if kind == "specificity":
        if n_neg == 0:
            return None, "no non-cancer breasts to fix a specificity on"
        ok = np.flatnonzero(n_neg - fp >= target * n_neg - COUNT_SLACK)
        if ok.size == 0:
            return None, f"no threshold reaches specificity {target:g} (the top score is a non-cancer's)"
        return float(thresholds[ok[-1]]), None
    if kind == "sensitivity":
        if n_pos == 0:
            return None, "no cancer breasts to fix a sensitivity on"
        ok = np.flatnonzero(tp >= target * n_pos - COUNT_SLACK)
        return float(thresholds[ok[0]]), None
    if kind == "recall_rate":
        ok = np.flatnonzero(tp + fp <= target * y.size + COUNT_SLACK)
        if ok.size == 0:
            return None, f"no threshold flags at most {target:g} of the breasts (the top score is shared by more)"
        return float(thresholds[ok[-1]]), None
    raise ValueError(f"unknown target {kind!r}; one of specificity, sensitivity, recall_rate")


def binary_metrics(
    labels: Any, probs: Any, threshold: float | None = 0.5, loss: float | None = None
) -> dict[str, Any]:
    """Every registered metric (ranking ones, and the others at ``threshold``), the counts, the
    best F1 over all thresholds and the confusion matrix at ``threshold``.

    Undefined values are NaN (best_threshold: None): AUC needs both classes; PR-AUC, pF1,
    best F1 and recall need positives; specificity needs negatives; precision needs at least
    one predicted positive. Non-finite probabilities (a diverged model) leave the ranking
    metrics NaN. ``threshold`` None (none could be chosen): every thresholded figure NaN and
    the counts None, never a figure at a default threshold.
    """
    from mammo.stats import point_metrics

    y, p = _arrays(labels, probs)
    n = int(y.size)
    n_pos = int(y.sum())
    if threshold is None:  # no operating threshold: the thresholded figures and counts are undefined
        figures = {name: NAN for name in metric_registry.names()}
        if bool(np.isfinite(p).all()):
            figures.update(point_metrics(y, p, None))
        best, best_threshold = best_f1(y, p)
        return {
            "n": n, "n_pos": n_pos, "prevalence": _ratio(n_pos, n), "loss": None if loss is None else float(loss),
            **figures, "best_f1": best, "best_threshold": best_threshold, "threshold": None,
            "recall": NAN, "tp": None, "fp": None, "tn": None, "fn": None,
        }
    flagged = p >= threshold
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    fn, tn = n_pos - tp, n - n_pos - fp
    if bool(np.isfinite(p).all()):
        figures = point_metrics(y, p, threshold)
    else:  # the ranking figures are undefined; the thresholded ones count what was flagged
        figures = {**{name: NAN for name in metric_registry.names("ranking")},
                   **point_metrics(y, flagged.astype(np.float64), 0.5, which=metric_registry.names("threshold"))}
    best, best_threshold = best_f1(y, p)
    return {
        "n": n,
        "n_pos": n_pos,
        "prevalence": _ratio(n_pos, n),
        "loss": None if loss is None else float(loss),
        **figures,
        "best_f1": best,
        "best_threshold": best_threshold,
        "threshold": float(threshold),
        "recall": figures["sensitivity"],
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def evaluate_predictions(
    frame: pd.DataFrame,
    threshold_image: float | None = 0.5,
    threshold_breast: float | None = 0.5,
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


def headline_keys() -> tuple[str, ...]:
    """Figures worth a glance (command output, the evaluator's result, KFP metrics): the loss
    (image-level, only known while training), the registry's headline metrics and the counts;
    the full set stays in metrics/history files."""
    return ("loss", *(m.name for m in metric_registry.headline()), "n", "n_pos", "prevalence")


def headline(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"image": {...}, "breast": {...}}`` cut down to ``headline_keys()`` (missing ones None).

    A level that carries confidence intervals (``ci``: ``{metric: {"low", "high", ...}}``, added
    by the evaluation) keeps those of the headline figures, as ``ci: {metric: {"low", "high"}}``."""
    out = {}
    keys = headline_keys()
    for level in ("image", "breast"):
        values = metrics[level]
        row = {k: values.get(k) for k in keys}
        intervals = values.get("ci")
        if isinstance(intervals, dict):
            row["ci"] = {
                k: {"low": intervals[k].get("low"), "high": intervals[k].get("high")}
                for k in keys if isinstance(intervals.get(k), dict)
            }
        out[level] = row
    return out
