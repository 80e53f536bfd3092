"""Metrics against scikit-learn, a literal pF1 loop and brute-force threshold search."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mammo.errors import DataError
from mammo.jsonio import to_jsonable
from mammo.metrics import (
    aggregate_breasts,
    best_f1,
    best_pf1_threshold,
    binary_metrics,
    evaluate_predictions,
    headline,
    pf1,
)


def reference_pf1(labels: list[int], probs: list[float]) -> float:
    """The competition's formula, written out as plainly as possible."""
    ctp = cfp = 0.0
    positives = 0
    for y, p in zip(labels, probs):
        p = min(max(p, 0.0), 1.0)
        if y == 1:
            positives += 1
            ctp += p
        else:
            cfp += p
    precision = ctp / (ctp + cfp) if ctp + cfp > 0 else 0.0
    recall = ctp / positives
    if precision > 0 and recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def random_case(seed: int, n: int = 300, rounding: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ~15% positives and informative, tie-heavy scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(int)
    y[0], y[1] = 1, 0
    p = np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0, 1)
    return y, (np.round(p, rounding) if rounding is not None else p)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_binary_metrics_agree_with_scikit_learn(seed: int) -> None:
    y, p = random_case(seed)
    m = binary_metrics(y, p, threshold=0.45, loss=np.float32(0.25))
    pred = (p >= 0.45).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (
        int(((pred == 1) & (y == 1)).sum()),
        int(((pred == 1) & (y == 0)).sum()),
        int(((pred == 0) & (y == 0)).sum()),
        int(((pred == 0) & (y == 1)).sum()),
    )
    assert (m["n"], m["n_pos"], m["prevalence"]) == (len(y), int(y.sum()), pytest.approx(y.mean()))
    assert m["loss"] == 0.25 and m["threshold"] == 0.45
    assert m["pf1"] == pytest.approx(reference_pf1(y.tolist(), p.tolist()))
    for key, value in m.items():
        assert value is None or type(value) in (int, float), key


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_pf1_matches_the_literal_formula_including_clipping(seed: int) -> None:
    y, p = random_case(seed, rounding=None)
    p = p * 1.4 - 0.2  # values outside [0, 1] must be clipped
    assert pf1(y, p) == pytest.approx(reference_pf1(y.tolist(), p.tolist()))
    assert pf1([1, 0], [0.0, 0.7]) == 0.0
    assert pf1([1, 1, 0], [1.0, 1.0, 0.0]) == 1.0
    assert math.isnan(pf1([0, 0], [0.2, 0.9]))


@pytest.mark.parametrize(("seed", "rounding"), [(0, 1), (1, 2), (2, None), (3, 1)])
def test_best_f1_equals_brute_force_over_all_thresholds(seed: int, rounding: int | None) -> None:
    y, p = random_case(seed, n=120, rounding=rounding)
    brute = max((f1_score(y, (p >= t).astype(int)), -t) for t in np.unique(p))
    value, threshold = best_f1(y, p)
    assert value == pytest.approx(brute[0])
    assert threshold == pytest.approx(-brute[1])
    assert f1_score(y, (p >= threshold).astype(int)) == pytest.approx(value)


def test_best_pf1_threshold_maximises_pf1_of_binarised_predictions() -> None:
    y, p = random_case(4, n=150)
    threshold = best_pf1_threshold(y, p)
    binarised = {
        t: reference_pf1(y.tolist(), (p >= t).astype(float).tolist()) for t in np.unique(p)
    }
    best = max(binarised.values())
    assert binarised[threshold] == pytest.approx(best)
    assert threshold == max(t for t, v in binarised.items() if v == pytest.approx(best))


def test_degenerate_inputs_give_nan_not_errors_or_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = binary_metrics([], [])
        negatives = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
        positives = binary_metrics([1, 1], [0.9, 0.2])
        diverged = binary_metrics([0, 1, 1], [0.1, float("nan"), 0.9])
    assert empty["n"] == 0 and all(
        math.isnan(empty[k])
        for k in ("prevalence", "auc", "pr_auc", "pf1", "accuracy", "recall", "f1")
    )
    assert empty["best_threshold"] is None and empty["loss"] is None
    assert math.isnan(negatives["auc"]) and math.isnan(negatives["pr_auc"])
    assert math.isnan(negatives["pf1"]) and math.isnan(negatives["recall"])
    assert math.isnan(negatives["best_f1"]) and negatives["best_threshold"] is None
    assert negatives["specificity"] == pytest.approx(2 / 3) and negatives["precision"] == 0.0
    assert math.isnan(positives["auc"]) and math.isnan(positives["specificity"])
    assert positives["recall"] == 0.5 and positives["best_f1"] == 1.0
    assert math.isnan(diverged["auc"]) and diverged["best_threshold"] is None
    assert diverged["tp"] == 1 and diverged["fn"] == 1
    no_predicted = binary_metrics([0, 1], [0.1, 0.2])
    assert math.isnan(no_predicted["precision"]) and no_predicted["f1"] == 0.0


def test_to_jsonable_replaces_nan_and_numpy_types() -> None:
    out = to_jsonable(binary_metrics([0, 0], [0.1, 0.2]))
    assert out["auc"] is None and out["best_threshold"] is None
    nested = to_jsonable({"a": [np.float32(1.5), np.int64(3), float("inf")], "b": np.array([1, 2])})
    assert nested == {"a": [1.5, 3, None], "b": [1, 2]}
    assert type(nested["a"][1]) is int
    json.dumps(out, allow_nan=False)


def predictions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": ["7", "7", "7", "7", "12", "12", "12"],
            "laterality": ["L", "L", "R", "R", "L", "R", "R"],
            "label": [1, 1, 0, 0, 0, 0, 1],
            "prob": [0.2, 0.8, 0.1, 0.3, 0.4, 0.9, 0.5],
            "split": ["val"] * 7,
        }
    )


@pytest.mark.parametrize(
    ("how", "probs"), [("mean", [0.4, 0.7, 0.5, 0.2]), ("max", [0.4, 0.9, 0.8, 0.3])]
)
def test_aggregate_breasts_mean_and_max(how: str, probs: list[float]) -> None:
    breasts = aggregate_breasts(predictions(), how)
    assert list(breasts.columns) == [
        "breast_id",
        "patient_id",
        "laterality",
        "label",
        "prob",
        "n_images",
        "split",
    ]
    assert breasts["breast_id"].tolist() == ["12_L", "12_R", "7_L", "7_R"]
    assert breasts["label"].tolist() == [0, 1, 1, 0]
    assert breasts["n_images"].tolist() == [1, 2, 2, 2]
    assert breasts["prob"].tolist() == pytest.approx(probs)
    assert set(breasts["split"]) == {"val"}


def test_aggregate_breasts_rejects_missing_columns_and_handles_empty_input() -> None:
    with pytest.raises(DataError, match="missing required column.*prob"):
        aggregate_breasts(predictions().drop(columns=["prob"]))
    empty = aggregate_breasts(predictions().drop(columns=["split"]).iloc[:0])
    assert empty.empty and "breast_id" in empty.columns


def test_evaluate_predictions_reports_image_and_breast_levels() -> None:
    frame = predictions()
    result = evaluate_predictions(
        frame, threshold_image=0.5, threshold_breast=0.35, how="mean", loss=0.3
    )
    assert result["image"] == binary_metrics(frame["label"], frame["prob"], 0.5, 0.3)
    breasts = aggregate_breasts(frame, "mean")
    assert result["breast"] == binary_metrics(breasts["label"], breasts["prob"], 0.35)
    assert result["breast"]["n"] == 4 and result["breast"]["loss"] is None
    assert result["breast"]["tp"] == 2 and result["breast"]["fp"] == 1


def test_metrics_and_split_modules_do_not_import_torch() -> None:
    code = "import sys, mammo.metrics, mammo.split; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_recall_rate_and_headline_intervals() -> None:
    m = binary_metrics([0, 0, 1, 1, 0], [0.9, 0.1, 0.8, 0.2, 0.7], threshold=0.5)
    assert m["recall_rate"] == 3 / 5  # share flagged, whatever the truth
    levels = {"image": dict(m), "breast": {**m, "ci": {"auc": {"low": 0.4, "high": 0.9, "undefined": 0}, "f1": {}}}}
    short = headline(levels)
    assert "ci" not in short["image"] and short["breast"]["ci"] == {"auc": {"low": 0.4, "high": 0.9}}
    assert short["breast"]["recall_rate"] == 3 / 5 and short["breast"]["n_pos"] == 2
