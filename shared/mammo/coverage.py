"""``mammo bench coverage``: do the intervals and the promotion floor mean what they say?

Simulated test splits like a screening programme's: ``patients`` women with two breasts each,
``cancers`` cancer breasts (in different women), binormal breast scores with a true breast AUC
``auc`` and a patient effect shared by both breasts (intra-class correlation ``icc``), scored
at the threshold whose true specificity is ``specificity``. For each size the share of trials
in which the 95 % interval (``mammo.stats.bootstrap``, as the evaluation computes it) holds the
true AUC, sensitivity and specificity; then the share of trials in which a **chance-level**
model (scores independent of the labels) is promoted under each rule (``mammo.promotion``):
as a first model, and against a chance-level production model (paired bootstrap). Every figure
comes with its trials and its Monte Carlo standard error. Seeded: the same arguments give the
same figures. numpy/scipy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mammo.stats import BootstrapSettings, bootstrap

#: (cancer breasts, patients) of the coverage check and of the promotion check.
COVERAGE_SIZES = ((10, 500), (20, 500), (40, 500))
PROMOTION_SIZES = ((5, 100), (10, 500), (20, 500), (40, 500))


def simulated_split(
    rng: np.random.Generator, cancers: int, patients: int, *, auc: float = 0.85, icc: float = 0.3,
) -> pd.DataFrame:
    """Breast-level predictions (patient_id, breast_id, label, prob, score) of one simulated
    split: scores N(d, 1) for cancers and N(0, 1) otherwise, d = sqrt(2) * Phi^-1(auc), with a
    patient effect of variance ``icc``; ``prob`` is the logistic of the score."""
    d = math.sqrt(2) * float(sps.norm.ppf(auc))
    n = 2 * patients
    labels = np.zeros(n, dtype=int)
    women = rng.choice(patients, cancers, replace=False)
    labels[2 * women + rng.integers(0, 2, cancers)] = 1
    patient = np.repeat(np.arange(patients), 2)
    score = d * labels + rng.normal(0, math.sqrt(icc), patients)[patient] + rng.normal(0, math.sqrt(1 - icc), n)
    return pd.DataFrame({
        "patient_id": patient, "breast_id": np.arange(n), "label": labels,
        "prob": 1 / (1 + np.exp(-score)), "score": score,
    })


def _share(hits: int, trials: int) -> dict[str, Any]:
    p = hits / trials if trials else float("nan")
    return {"rate": round(p, 4), "hits": hits, "trials": trials,
            "mc_se": round(math.sqrt(max(p * (1 - p), 1 / trials) / trials), 4) if trials else None}


def coverage(trials: int, sizes: Sequence[tuple[int, int]] = COVERAGE_SIZES, *, auc: float = 0.85,
             specificity: float = 0.9, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """Per size: the share of ``trials`` whose interval holds the true AUC, sensitivity and
    specificity, and the mean interval widths."""
    d = math.sqrt(2) * float(sps.norm.ppf(auc))
    cut = float(sps.norm.ppf(specificity))  # true specificity Phi(cut), sensitivity Phi(d - cut)
    truth = {"auc": auc, "sensitivity": float(sps.norm.cdf(d - cut)), "specificity": specificity}
    threshold = 1 / (1 + math.exp(-cut))
    settings = BootstrapSettings(resamples=0, seed=seed, level=level)
    rows = []
    for cancers, patients in sizes:
        rng = np.random.default_rng([seed, cancers, patients])
        hits = dict.fromkeys(truth, 0)
        width = dict.fromkeys(truth, 0.0)
        for _ in range(trials):
            frame = simulated_split(rng, cancers, patients, auc=auc)
            figures = bootstrap(frame["label"], frame["prob"], frame["patient_id"], threshold, settings, which=tuple(truth))
            for name, true in truth.items():
                low, high = figures[name]["low"], figures[name]["high"]
                hits[name] += low is not None and low <= true <= high
                width[name] += (high - low) if low is not None else 1.0
        rows.append({
            "cancers": cancers, "patients": patients,
            **{name: {**_share(hits[name], trials), "truth": round(truth[name], 4),
                      "mean_width": round(width[name] / trials, 4)} for name in truth},
        })
    return rows


def chance_promotion(trials: int, production_trials: int, sizes: Sequence[tuple[int, int]] = PROMOTION_SIZES, *,
                     resamples: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Per size and rule: the share of trials in which a chance-level candidate is promoted as
    a first model (``trials``) and against a chance-level production model
    (``production_trials``, a paired bootstrap of ``resamples`` each). ``promotion_min_cancers``
    is 0 here, so what is measured is the floor itself (the minimum refuses small splits on
    top of it)."""
    from mammo.promotion import RULES, PromotionRule, decide

    settings = BootstrapSettings(resamples=resamples, seed=seed)
    rows = []
    for cancers, patients in sizes:
        for rule_name in RULES:
            rule = PromotionRule(rule=rule_name, min_cancers=0)
            rng = np.random.default_rng([seed, cancers, patients, RULES.index(rule_name)])
            first = sum(bool(decide(rule, simulated_split(rng, cancers, patients, auc=0.5), 0.5, settings)["promote"])
                        for _ in range(trials))
            against = 0
            for _ in range(production_trials):
                candidate = simulated_split(rng, cancers, patients, auc=0.5)
                production = candidate.assign(prob=rng.random(len(candidate)))
                against += bool(decide(rule, candidate, 0.5, settings, production=production,
                                       production_threshold=0.5)["promote"])
            rows.append({"cancers": cancers, "patients": patients, "rule": rule_name,
                         "first_model": _share(first, trials), "against_production": _share(against, production_trials)})
    return rows


def bench_coverage(trials: int = 2000, promotion_trials: int = 2000, production_trials: int = 200,
                   seed: int = 0) -> dict[str, Any]:
    """Everything above as one JSON-ready result, with the seconds it took."""
    start = time.perf_counter()
    covered = coverage(trials, seed=seed)
    middle = time.perf_counter()
    promoted = chance_promotion(promotion_trials, production_trials, seed=seed)
    end = time.perf_counter()
    worst_coverage = min(row[name]["rate"] for row in covered for name in ("auc", "sensitivity", "specificity"))
    worst_promotion = max(max(row["first_model"]["rate"], row["against_production"]["rate"]) for row in promoted)
    return {
        "scenario": {"breasts_per_patient": 2, "auc": 0.85, "icc": 0.3, "specificity": 0.9, "level": 0.95,
                     "promotion": "chance-level candidate (AUC 0.5), promotion_min 0.5, promotion_min_cancers 0"},
        "coverage": covered,
        "chance_promotion": promoted,
        "worst_coverage": worst_coverage,
        "worst_chance_promotion": worst_promotion,
        "mc_se_max": max([row[n]["mc_se"] for row in covered for n in ("auc", "sensitivity", "specificity")]
                         + [row[k]["mc_se"] for row in promoted for k in ("first_model", "against_production")]),
        "seed": seed,
        "seconds": {"coverage": round(middle - start, 1), "promotion": round(end - middle, 1)},
    }
