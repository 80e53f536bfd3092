"""Uncertainty for every figure a reviewer asks about: patient-level bootstrap intervals,
DeLong's AUC interval, paired model comparison, operating points, calibration and subgroups.

Images of one patient are not independent (two breasts, several views, one woman), so every
interval here resamples **patients** with replacement: a resample is a vector of counts, one
per patient, and each image or breast is weighted by its patient's count. All metrics are then
computed for a whole block of resamples at once from one sort of the scores (cumulative
weighted sums over the distinct scores), so 2,000 resamples of an RSNA-sized test split take
about a second, not 2,000 scikit-learn calls. With all weights 1 the same code gives the point
estimates, which equal scikit-learn's (``roc_auc_score``, ``average_precision_score``; the
tests check it).

Intervals are percentile intervals (``level``, default 95 %) of the resampled figures; a
resample in which a figure is undefined (no cancer drawn) is left out and counted
(``undefined``). Seeded: the same ``seed`` gives the same intervals. Two models compared on
the same units (``paired_difference``) use the same resamples, so the interval of the
difference reflects the correlation between them.

``delong`` is the analytic interval for AUC with the structural components of DeLong et al.
(1988), clustered by patient as in Obuchowski (1997): with one unit per patient it is DeLong's.
numpy and scipy only (no torch): the pipeline layer may import this module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from mammo import metric_registry
from mammo.metric_registry import AtThreshold, Curve, ratio

NAN = float("nan")
#: Quantile calibration bins hold at least this many units (fewer bins at small n).
MIN_BIN_COUNT = 15
#: Small-sample warning below this many cancers (units with label 1) in a split.
MIN_CANCERS = 20
#: Weight matrices are processed in blocks of at most this many cells (memory ~ 8 bytes each,
#: a few copies).
BLOCK_CELLS = 2**22
#: An interval needs at least this many patients (fewer: none, with the reason).
MIN_PATIENTS = 2
#: How each kind of interval is made (``metric_registry.Metric.interval``), as recorded.
METHODS = {
    "auc": "score interval of the Mann-Whitney AUC (Newcombe 2006), variance x patient design effect",
    "proportion": "Clopper-Pearson on the effective n (n / patient design effect; Korn-Graubard)",
    "bootstrap": "percentile, patients resampled",
}


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed (recorded beside them in the output)."""

    resamples: int = 2000
    seed: int = 0
    level: float = 0.95

    def record(self) -> dict[str, Any]:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level,
                "unit": "patient", "method": METHODS}


# --- resampling -----------------------------------------------------------------------------


def patient_codes(patients: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """Integer code (0..P-1) of each unit's patient, and P."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(patients)).astype(str), sort=True)
    return codes.astype(np.int64), len(uniques)


def _groups(patients: Any) -> tuple[np.ndarray, int]:
    """Integer group of each unit's patient and the number of patients, in any order (for the
    analytic intervals, where the order does not matter; ``patient_codes`` fixes it for the
    resampling): integer ids, such as codes already made, are not turned into text again."""
    values = np.asarray(patients)
    if values.dtype.kind in "iu":
        uniques, inverse = np.unique(values, return_inverse=True)
        return inverse.astype(np.int64).ravel(), int(uniques.size)
    return patient_codes(values)


def resample_counts(n_patients: int, settings: BootstrapSettings) -> np.ndarray:
    """(resamples, n_patients) counts: how often each patient is drawn in each resample."""
    rng = np.random.default_rng(settings.seed)
    if n_patients == 0:
        return np.zeros((settings.resamples, 0), dtype=np.int32)
    draws = rng.integers(0, n_patients, size=(settings.resamples, n_patients), dtype=np.int64)
    draws += np.arange(settings.resamples, dtype=np.int64)[:, None] * n_patients
    counts = np.bincount(draws.ravel(), minlength=settings.resamples * n_patients)
    return counts.reshape(settings.resamples, n_patients).astype(np.int32)


def _blocks(counts: np.ndarray, codes: np.ndarray) -> Iterator[np.ndarray]:
    """Weight matrices (block, units): each unit weighted by its patient's count, float64 as
    every sum over them (``weighted_metrics``)."""
    n = max(1, codes.size)
    step = max(1, BLOCK_CELLS // n)
    for start in range(0, counts.shape[0], step):
        yield counts[start:start + step][:, codes].astype(np.float64)


# --- metrics of weighted units --------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """Scored units (images or breasts) prepared once for weighted metrics: sorted by score,
    descending, with the boundaries of runs of equal scores."""

    labels: np.ndarray  # 0/1, sorted order
    scores: np.ndarray  # sorted order, descending
    order: np.ndarray  # positions of the sorted units in the input
    starts: np.ndarray  # first position of each distinct score

    @classmethod
    def of(cls, labels: Any, scores: Any) -> Units:
        y = np.asarray(labels).astype(np.int64).ravel()
        s = np.asarray(scores, dtype=np.float64).ravel()
        if y.shape != s.shape:
            raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
        order = np.argsort(-s, kind="stable")
        sorted_scores = s[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1] if s.size else np.zeros(0, dtype=np.int64)
        return cls(y[order].astype(np.float64), sorted_scores, order, starts)

    @property
    def size(self) -> int:
        return int(self.labels.size)

    def sorted_codes(self, codes: np.ndarray) -> np.ndarray:
        """Per-unit values (e.g. patient codes) in this sorted order."""
        return np.asarray(codes)[self.order]


def weighted_metrics(
    units: Units, weights: np.ndarray, threshold: float | None, which: Iterable[str] | None = None,
    specificities: Sequence[float] = (), sensitivities: Sequence[float] = (),
) -> dict[str, np.ndarray]:
    """Metrics of ``units`` under each row of ``weights`` (block, units in sorted order:
    ``units.order``; see ``Units.sorted_codes``).

    Returns arrays of length ``block``: the registered metrics named in ``which`` (default:
    all; threshold metrics only when a ``threshold`` is given), ``sens@spec=<s>`` for each of
    ``specificities`` (the highest sensitivity of any threshold whose specificity is at least
    s) and ``spec@sens=<s>``. NaN where a figure is undefined (no positives or negatives in
    that resample). Every sum is float64, whatever the weights' dtype: in float32 the AUC's
    products of counts (up to positives x negatives) lose digits at RSNA's size.
    """
    which = metric_registry.names() if which is None else tuple(which)
    chosen = [metric_registry.get(name) for name in which]
    w = np.atleast_2d(weights).astype(np.float64, copy=False)
    y = units.labels.astype(w.dtype)
    out: dict[str, np.ndarray] = {}
    if units.size == 0:
        nan = np.full(w.shape[0], np.nan)
        return {name: nan for name in which}
    wpos = w * y
    wneg = w - wpos
    if units.starts.size == units.size:  # no tied scores: every unit is its own run
        gpos, gneg = wpos, wneg
    else:
        gpos = np.add.reduceat(wpos, units.starts, axis=1)
        gneg = np.add.reduceat(wneg, units.starts, axis=1)
    tp = np.cumsum(gpos, axis=1)  # TP when flagging every score >= that of run k
    fp = np.cumsum(gneg, axis=1)
    pos, neg = tp[:, -1], fp[:, -1]
    curve = Curve(tp=tp, fp=fp, gpos=gpos, gneg=gneg, pos=pos, neg=neg, wpos=wpos, wneg=wneg, scores=units.scores)
    for metric in chosen:
        if metric.kind == "ranking":
            out[metric.name] = metric.compute(curve)
    both = (pos > 0) & (neg > 0)
    last = tp.shape[1] - 1
    for s in specificities:  # the highest sensitivity with FP <= (1 - s) * negatives
        allowed = (fp <= (1 - s) * neg[:, None] + 1e-9).sum(axis=1)
        got = np.take_along_axis(tp, np.maximum(allowed - 1, 0)[:, None], axis=1)[:, 0]
        sens = np.where(allowed > 0, ratio(got, pos), 0.0)
        out[f"sens@spec={s:g}"] = np.where(both, sens, np.nan)
    for s in sensitivities:  # the highest specificity with TP >= s * positives
        reached = (tp >= s * pos[:, None] - 1e-9).sum(axis=1)
        first = np.clip(last + 1 - reached, 0, last)
        got = np.take_along_axis(fp, first[:, None], axis=1)[:, 0]
        out[f"spec@sens={s:g}"] = np.where(both & (reached > 0), 1 - ratio(got, neg), np.nan)
    at_threshold = [metric for metric in chosen if metric.kind == "threshold"]
    if threshold is not None and at_threshold:
        flagged = (units.scores >= threshold).astype(w.dtype)
        counts = AtThreshold(tp=wpos @ flagged, fp=wneg @ flagged, pos=pos, neg=neg)
        out.update({metric.name: metric.compute(counts) for metric in at_threshold})
    return out


def point_metrics(labels: Any, scores: Any, threshold: float | None = None, **kwargs: Any) -> dict[str, float]:
    """The figures of ``weighted_metrics`` with every weight 1 (the observed values)."""
    units = Units.of(labels, scores)
    values = weighted_metrics(units, np.ones((1, units.size)), threshold, **kwargs)
    return {name: float(v[0]) for name, v in values.items()}


# --- intervals ------------------------------------------------------------------------------


def _interval(values: np.ndarray, level: float) -> dict[str, Any]:
    """Percentile interval of bootstrap values; none (with the reason) when most resamples
    leave the figure undefined or every resample gives the same value (a zero-width
    "interval" that only says the resampling cannot move it)."""
    finite = values[np.isfinite(values)]
    undefined = int(values.size - finite.size)
    if finite.size < max(10, values.size // 2):  # mostly undefined: no honest interval
        return _none(f"undefined in {undefined} of {values.size} resamples", undefined)
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    if high - low <= 0:
        return _none(f"every resample gives {float(low):.3f}: the bootstrap cannot estimate it", undefined)
    return {**_bounds(low, high), "undefined": undefined}


def _none(reason: str, undefined: int = 0) -> dict[str, Any]:
    return {"low": None, "high": None, "undefined": undefined, "reason": reason}


def _bounds(low: float, high: float) -> dict[str, Any]:
    return {"low": round(float(low), 6), "high": round(float(high), 6), "undefined": 0, "reason": None}


def _z(level: float) -> float:
    return float(sps.norm.ppf(0.5 + level / 2))


def _solve(f: Any, a: float, b: float) -> float:
    """The root of ``f`` between ``a`` (f <= 0) and ``b`` (f >= 0) by bisection: 60 halvings
    (far below the 6 decimals reported), the same on every machine."""
    for _ in range(60):
        mid = 0.5 * (a + b)
        if f(mid) <= 0:
            a = mid
        else:
            b = mid
    return 0.5 * (a + b)


def auc_variance(theta: float, m: float, n: float) -> float:
    """Variance of the Mann-Whitney AUC of ``m`` positives and ``n`` negatives at a true AUC
    ``theta``: Hanley & McNeil's formula with Newcombe's (2006) N* = (m + n) / 2 in place of
    both sample sizes, which keeps it honest when one class is small."""
    star = (m + n) / 2 - 1
    q1 = theta * (1 - theta) ** 2 / (2 - theta)  # Q1 - theta^2
    q2 = theta * theta * (1 - theta) / (1 + theta)  # Q2 - theta^2
    return (theta * (1 - theta) + star * (q1 + q2)) / (m * n)


def auc_interval(labels: Any, scores: Any, patients: Any, level: float) -> dict[str, Any]:
    """The AUC's interval: the values theta with (AUC - theta)^2 <= z^2 * deff * V(theta)
    (``auc_variance``: the variance at theta, not at the estimate, so an AUC that is high by
    chance does not get a narrow interval; a score interval, Newcombe 2006). ``deff``, the
    patient design effect, is clustered over unclustered DeLong variance (at least 1): several
    units of one patient count for less than independent ones. Never of zero width; none with
    fewer than ``MIN_PATIENTS`` patients or without both classes."""
    y = np.asarray(labels).astype(np.int64).ravel()
    m, n = int(y.sum()), int(y.size - y.sum())
    codes, k = _groups(patients)
    if m == 0 or n == 0:
        return _none("needs cancers and non-cancers")
    if k < MIN_PATIENTS:
        return _none(f"fewer than {MIN_PATIENTS} patients")
    plain, clustered = delong(y, scores), delong(y, scores, codes)
    auc = float(plain["auc"])
    deff = 1.0
    if plain["se"] and clustered["se"] and m > 1 and n > 1:
        deff = max(1.0, (clustered["se"] / plain["se"]) ** 2)
    q2 = _z(level) ** 2 * deff

    def excess(theta: float) -> float:  # > 0 outside the interval
        return (auc - theta) ** 2 - q2 * auc_variance(theta, m, n)

    low = 0.0 if auc <= 0 else _solve(lambda t: -excess(t), 0.0, auc)
    high = 1.0 if auc >= 1 else _solve(excess, auc, 1.0)
    return {**_bounds(low, high), "design_effect": round(deff, 4)}


def proportion_interval(counted: Any, out_of: Any, patients: Any, level: float) -> dict[str, Any]:
    """Interval of the share of ``out_of`` units that are ``counted`` (0/1 per unit):
    Clopper-Pearson (exact binomial, never narrower than nominal) on the effective sample
    size n / deff, where ``deff`` (at least 1) is the patient-clustered over the binomial
    variance (Korn & Graubard 1998). 160 of 160 gives [0.977, 1], not [1, 1]."""
    hit = np.asarray(counted, dtype=bool).ravel()
    den = np.asarray(out_of, dtype=bool).ravel()
    codes, _ = _groups(patients)
    n = int(den.sum())
    if n == 0:
        return _none("no units to count")
    k = int((hit & den).sum())
    ni = np.bincount(codes[den], minlength=codes.max() + 1 if codes.size else 0)
    ki = np.bincount(codes[hit & den], minlength=ni.size)
    groups = int((ni > 0).sum())
    if groups < MIN_PATIENTS:
        return _none(f"fewer than {MIN_PATIENTS} patients")
    p = k / n
    deff = 1.0
    if 0 < k < n:
        clustered = groups / (groups - 1) * float(((ki - p * ni) ** 2).sum()) / n**2
        deff = max(1.0, clustered / (p * (1 - p) / n))
    n_eff = n / deff
    k_eff = p * n_eff
    alpha = 1 - level
    low = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k_eff, n_eff - k_eff + 1))
    high = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k_eff + 1, n_eff - k_eff))
    return {**_bounds(low, high), "design_effect": round(deff, 4)}


def bootstrap(
    labels: Any, scores: Any, patients: Any, threshold: float | None, settings: BootstrapSettings,
    *, which: Iterable[str] | None = None, specificities: Sequence[float] = (), sensitivities: Sequence[float] = (),
) -> dict[str, dict[str, Any]]:
    """Point value and patient-level interval of each metric: ``{name: {"value", "low",
    "high", "undefined", "reason", "method"}}``. The interval is the one the registry names
    (``Metric.interval``): the AUC's score interval, an exact binomial interval for a share of
    units (sensitivity, specificity, PPV, recall rate, accuracy), a percentile bootstrap over
    patients for the rest and the operating points. ``low``/``high`` None with a ``reason``
    when no honest interval can be given."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    units = Units.of(y, s)
    codes, n_patients = patient_codes(patients)
    kwargs = {"which": which, "specificities": specificities, "sensitivities": sensitivities}
    point = weighted_metrics(units, np.ones((1, units.size)), threshold, **kwargs)
    registered = {m.name: m for m in metric_registry.metrics()}
    kind = {name: registered[name].interval if name in registered else "bootstrap" for name in point}
    resampled = [name for name in point if kind[name] == "bootstrap"]
    draws: dict[str, np.ndarray] = {}
    if resampled and n_patients >= MIN_PATIENTS and settings.resamples > 0:
        counts = resample_counts(n_patients, settings)
        registry_names = [n for n in resampled if n in registered]
        rest = {"specificities": specificities, "sensitivities": sensitivities}
        parts = [weighted_metrics(units, block, threshold, which=registry_names, **rest)
                 for block in _blocks(counts, units.sorted_codes(codes))]
        draws = {name: np.concatenate([part[name] for part in parts]) for name in resampled}
    flagged = s >= threshold if threshold is not None else None
    positive = y.astype(bool)
    result = {}
    for name, value in point.items():
        figure: dict[str, Any] = {"value": _finite(value[0])}
        if figure["value"] is None:
            figure.update(_none("the figure is undefined"))
        elif kind[name] == "auc":
            figure.update(auc_interval(y, s, codes, settings.level))
        elif kind[name] == "proportion" and flagged is not None:
            counted, out_of = registered[name].share(positive, flagged)
            figure.update(proportion_interval(counted, out_of, codes, settings.level))
        elif n_patients < MIN_PATIENTS:
            figure.update(_none(f"fewer than {MIN_PATIENTS} patients"))
        elif name in draws:
            figure.update(_interval(draws[name], settings.level))
        else:
            figure.update(_none("no resamples"))
        result[name] = {**figure, "method": kind[name]}
    return result


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def paired_difference(
    labels: Any, scores_a: Any, scores_b: Any, patients: Any, metric: str, settings: BootstrapSettings,
    *, threshold_a: float | None = None, threshold_b: float | None = None,
) -> dict[str, Any]:
    """``metric`` of model A minus model B on the same units, with a paired patient-level
    bootstrap: both models are scored on the same resamples. Returns both models' values and
    intervals, the difference, its interval and ``p_not_better``: the share of resamples in
    which A does not beat B (a one-sided bootstrap p-value for "A is better")."""
    if metric not in metric_registry.names():
        raise ValueError(f"metric {metric!r} cannot be compared; one of {', '.join(sorted(metric_registry.names()))}")
    a, b = Units.of(labels, scores_a), Units.of(labels, scores_b)
    codes, n_patients = patient_codes(patients)
    ones = np.ones((1, a.size))
    pa = weighted_metrics(a, ones, threshold_a, which=(metric,))[metric][0]
    pb = weighted_metrics(b, ones, threshold_b, which=(metric,))[metric][0]
    da, db = [], []
    counts = resample_counts(n_patients, settings)
    for block in _blocks(counts, codes):  # the same resamples for both models
        da.append(weighted_metrics(a, block[:, a.order], threshold_a, which=(metric,))[metric])
        db.append(weighted_metrics(b, block[:, b.order], threshold_b, which=(metric,))[metric])
    va = np.concatenate(da) if da else np.zeros(0)
    vb = np.concatenate(db) if db else np.zeros(0)
    diff = va - vb
    finite = diff[np.isfinite(diff)]
    return {
        "metric": metric,
        "a": {"value": _finite(pa), **_interval(va, settings.level)},
        "b": {"value": _finite(pb), **_interval(vb, settings.level)},
        "difference": {"value": _finite(pa - pb), **_interval(diff, settings.level)},
        "p_not_better": float((finite <= 0).mean()) if finite.size else None,
        "n_units": a.size,
        "n_patients": n_patients,
        **settings.record(),
    }


# --- DeLong ---------------------------------------------------------------------------------


def delong(labels: Any, scores: Any, clusters: Any = None, level: float = 0.95) -> dict[str, Any]:
    """AUC with DeLong's variance; with ``clusters`` (patient ids) Obuchowski's clustered form,
    which accounts for several correlated units per patient. Wald interval clipped to [0, 1].
    The variance needs two positives and two negatives (two patients of each with clusters):
    with fewer, ``se``, ``low`` and ``high`` are None and ``reason`` says why."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    method = "delong" if clusters is None else "delong-clustered"
    if m == 0 or n == 0:
        return {"auc": None, "se": None, "low": None, "high": None, "reason": "needs cancers and non-cancers",
                "method": method}
    ranks_all = sps.rankdata(np.r_[pos, neg])
    v10 = (ranks_all[:m] - sps.rankdata(pos)) / n  # per positive: share of negatives below (ties 1/2)
    v01 = 1 - (ranks_all[m:] - sps.rankdata(neg)) / m  # per negative: share of positives above
    auc = float(v10.mean())
    if clusters is None:
        k10, k01 = m, n
    else:
        codes, k = _groups(clusters)
        cpos, cneg = codes[y == 1], codes[y == 0]
        k10, k01 = len(np.unique(cpos)), len(np.unique(cneg))
    if k10 < 2 or k01 < 2:  # a variance component from one value: not estimable, not 0
        unit = "cancer" if clusters is None else "patient with a cancer"
        other = "non-cancer" if clusters is None else "patient with a non-cancer"
        short = f"one {unit}" if k10 < 2 else f"one {other}"
        return {"auc": auc, "se": None, "low": None, "high": None,
                "reason": f"{short}: DeLong's variance needs at least two of each", "method": method}
    if clusters is None:
        var = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    else:
        s10 = np.bincount(cpos, weights=v10, minlength=k) - np.bincount(cpos, minlength=k) * auc
        s01 = np.bincount(cneg, weights=v01, minlength=k) - np.bincount(cneg, minlength=k) * auc
        var10 = k10 / (k10 - 1) * (s10**2).sum() / m
        var01 = k01 / (k01 - 1) * (s01**2).sum() / n
        cov = k / (k - 1) * (s10 * s01).sum()
        var = var10 / m + var01 / n + 2 * cov / (m * n)
    se = math.sqrt(max(var, 0.0))
    z = float(sps.norm.ppf(0.5 + level / 2))
    return {"auc": auc, "se": se, "low": max(0.0, auc - z * se), "high": min(1.0, auc + z * se), "reason": None,
            "method": method}


# --- calibration ----------------------------------------------------------------------------


def _wilson(k: float, n: float, level: float) -> tuple[float | None, float | None]:
    if n <= 0:
        return None, None
    z = float(sps.norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration(
    labels: Any, probs: Any, bins: int = 10, strategy: Literal["uniform", "quantile"] = "quantile",
    level: float = 0.95,
) -> dict[str, Any]:
    """Brier score, expected calibration error (ECE: count-weighted mean |observed - predicted|
    over the bins) and the reliability table: per bin its range, count, cancers, mean predicted
    probability, observed rate and the observed rate's Wilson interval. ``quantile`` bins hold
    equal counts (readable at small n); ``uniform`` bins split [0, 1] evenly (empty bins left out)."""
    y = np.asarray(labels).astype(np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 0.0, 1.0)
    result: dict[str, Any] = {"strategy": strategy, "bins_requested": bins, "n": int(y.size)}
    if y.size == 0 or not np.isfinite(p).all():
        return {**result, "brier": None, "ece": None, "bins": []}
    if strategy == "quantile":
        # Readable at small n: no fewer than MIN_BIN_COUNT units per bin (at least 2 bins).
        bins = max(2, min(bins, y.size // MIN_BIN_COUNT))
        edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    else:
        edges = np.linspace(0, 1, bins + 1)
    if edges.size < 2:
        edges = np.array([p.min(), p.max() + 1e-12])
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, edges.size - 2)
    rows, ece = [], 0.0
    for b in range(edges.size - 1):
        inside = which == b
        count = int(inside.sum())
        if count == 0:
            continue
        observed, predicted = float(y[inside].mean()), float(p[inside].mean())
        low, high = _wilson(float(y[inside].sum()), count, level)
        ece += count / y.size * abs(observed - predicted)
        rows.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
            "cancers": int(y[inside].sum()), "predicted": predicted, "observed": observed,
            "observed_low": low, "observed_high": high,
        })
    return {**result, "bins_used": len(rows), "brier": float(np.mean((p - y) ** 2)), "ece": float(ece), "bins": rows}


# --- subgroups ------------------------------------------------------------------------------

#: Metadata columns reported as subgroups when present; ``view`` only at image level (a
#: breast has several views).
SUBGROUP_COLUMNS = ("site_id", "machine_id", "view", "density", "age_band", "implant")
IMAGE_ONLY_COLUMNS = ("view",)
AGE_BANDS = ((0, 50, "<50"), (50, 60, "50-59"), (60, 70, "60-69"), (70, 200, "70+"))


def age_band(age: Any) -> str | None:
    try:
        value = float(age)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return next((name for low, high, name in AGE_BANDS if low <= value < high), None)


def with_age_band(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an ``age_band`` column derived from ``age`` (when it has one)."""
    if "age" not in frame.columns or "age_band" in frame.columns:
        return frame
    return frame.assign(age_band=[age_band(a) for a in frame["age"]])


_BAND_NAMES = [name for *_, name in AGE_BANDS]


def subgroup_order(column: str, value: str) -> tuple[int, float, str]:
    """Where a subgroup's ``value`` (as text) sorts in its ``column``: age bands in band order,
    numbers by value (machine 21 before 197), other text alphabetically after numbers,
    ``missing`` last."""
    if value == "missing":
        return (3, 0.0, value)
    if column == "age_band" and value in _BAND_NAMES:
        return (0, float(_BAND_NAMES.index(value)), value)
    try:
        number = float(value)
    except ValueError:
        return (2, 0.0, value)
    return (1, number, value) if math.isfinite(number) else (2, 0.0, value)


def subgroups(
    frame: pd.DataFrame, threshold: float | None, settings: BootstrapSettings, *, level: str,
    columns: Sequence[str] = SUBGROUP_COLUMNS, which: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Metrics with intervals for every value of every metadata column ``frame`` has (rows are
    units with ``patient_id``, ``label``, ``prob``): n, patients, cancers, and ``which``
    (default: the registry's subgroup metrics). Values in ``subgroup_order``."""
    if which is None:
        which = [m.name for m in metric_registry.metrics() if m.subgroups]
    rows = []
    frame = with_age_band(frame)
    for column in columns:
        if column not in frame.columns or (level == "breast" and column in IMAGE_ONLY_COLUMNS):
            continue
        values = frame[column]
        if values.isna().all():
            continue
        groups = dict(tuple(frame.groupby(values.astype(str).where(values.notna(), "missing"), sort=False)))
        for value in sorted(groups, key=lambda key: subgroup_order(column, key)):
            part = groups[value]
            figures = bootstrap(part["label"], part["prob"], part["patient_id"], threshold, settings, which=which)
            rows.append({
                "column": column, "value": value, "level": level, "n": int(len(part)),
                "patients": int(part["patient_id"].nunique()), "cancers": int(part["label"].sum()),
                **figures,
            })
    return rows


# --- warnings -------------------------------------------------------------------------------


def small_sample_warnings(counts: dict[str, int], minimum: int = MIN_CANCERS) -> list[str]:
    """A warning per split whose cancer count (``{split: cancers}``) is below ``minimum``."""
    return [
        f"the {split} split has only {n} cancer breast(s) (fewer than {minimum}): its figures are "
        "uncertain; read the intervals, not the point values"
        for split, n in counts.items() if n < minimum
    ]


# --- cost -----------------------------------------------------------------------------------


@dataclass
class BenchResult:
    images: int
    breasts: int
    patients: int
    resamples: int
    seconds: dict[str, float] = field(default_factory=dict)


def bench(
    images: int = 8000, patients: int = 1800, resamples: int = 2000, seed: int = 0, subgroup_resamples: int = 1000
) -> dict[str, Any]:
    """Time the bootstrap on a synthetic split of RSNA's test size (about 8,000 images of
    1,800 patients, ~2 % cancer breasts): image- and breast-level intervals of every metric
    with operating points, a paired comparison and the subgroup table."""
    rng = np.random.default_rng(seed)
    patient = np.sort(rng.integers(0, patients, images))
    patient[:patients] = np.arange(patients)  # every patient has an image
    side = rng.integers(0, 2, images)
    breast = patient * 2 + side
    cancer_breasts = rng.random(patients * 2) < 0.02
    label = cancer_breasts[breast].astype(int)
    prob = 1 / (1 + np.exp(-(rng.normal(size=images) + 1.5 * label - 3)))
    other = 1 / (1 + np.exp(-(rng.normal(size=images) + 1.2 * label - 3)))
    frame = pd.DataFrame({
        "patient_id": patient.astype(str), "laterality": np.where(side, "R", "L"), "label": label,
        "prob": prob, "other": other, "site_id": rng.integers(1, 3, images),
        "view": rng.choice(["CC", "MLO"], images), "age": rng.normal(59, 10, images).round(),
        "density": rng.choice(list("ABCD"), images), "implant": (rng.random(images) < 0.02).astype(int),
        "machine_id": rng.choice([21, 29, 48, 49, 93], images),
    })
    breasts = frame.groupby(["patient_id", "laterality"], sort=True).agg(
        label=("label", "max"), prob=("prob", "mean"), other=("other", "mean"),
        site_id=("site_id", "first"), age=("age", "first"), density=("density", "first"),
        implant=("implant", "first"), machine_id=("machine_id", "first"),
    ).reset_index()
    settings = BootstrapSettings(resamples=resamples, seed=seed)
    ops = {"specificities": (0.9, 0.95), "sensitivities": (0.9, 0.95)}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    bootstrap(frame["label"], frame["prob"], frame["patient_id"], 0.1, settings, **ops)
    seconds["image_level"] = time.perf_counter() - start
    start = time.perf_counter()
    bootstrap(breasts["label"], breasts["prob"], breasts["patient_id"], 0.1, settings, **ops)
    seconds["breast_level"] = time.perf_counter() - start
    start = time.perf_counter()
    paired_difference(breasts["label"], breasts["prob"], breasts["other"], breasts["patient_id"], "auc", settings)
    seconds["paired_auc"] = time.perf_counter() - start
    start = time.perf_counter()
    delong(breasts["label"], breasts["prob"], breasts["patient_id"])
    seconds["delong"] = time.perf_counter() - start
    start = time.perf_counter()
    sub = BootstrapSettings(resamples=min(resamples, subgroup_resamples), seed=seed)
    subgroups(breasts, 0.1, sub, level="breast")  # as the evaluation does: images for the view only
    subgroups(frame, 0.1, sub, level="image", columns=IMAGE_ONLY_COLUMNS)
    seconds["subgroups"] = time.perf_counter() - start
    start = time.perf_counter()
    calibration(breasts["label"], breasts["prob"])
    seconds["calibration"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return {
        "images": images, "breasts": int(len(breasts)), "patients": patients,
        "cancer_breasts": int(breasts["label"].sum()), "resamples": resamples,
        "subgroup_resamples": min(resamples, subgroup_resamples),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


# --- one split at one level -----------------------------------------------------------------

_LONG = {"sens": "sensitivity", "spec": "specificity"}


def describe(
    frame: pd.DataFrame, threshold: float | None, settings: BootstrapSettings, *,
    specificities: Sequence[float] = (0.9, 0.95), sensitivities: Sequence[float] = (0.8, 0.9),
    bins: int = 10, strategy: Literal["uniform", "quantile"] = "quantile",
) -> dict[str, Any]:
    """What a reviewer needs beside the point figures of one split at one level (rows are
    units with patient_id, label, prob): ``ci`` (interval of every registered metric),
    ``operating_points`` (sensitivity at each specificity, specificity at each sensitivity,
    with intervals), ``delong`` (AUC, clustered by patient) and ``calibration``. With
    ``settings.resamples`` 0 the intervals are left out (values only)."""
    labels, probs, patients = frame["label"].to_numpy(), frame["prob"].to_numpy(), frame["patient_id"].to_numpy()
    ops = {"specificities": tuple(specificities), "sensitivities": tuple(sensitivities)}
    if settings.resamples > 0:
        figures = bootstrap(labels, probs, patients, threshold, settings, **ops)
    else:
        figures = {name: {"value": _finite(v), "low": None, "high": None, "undefined": 0}
                   for name, v in point_metrics(labels, probs, threshold, **ops).items()}
    points = []
    for name in list(figures):
        if "@" in name:
            measure, target = name.split("@")
            fixed, at = target.split("=")
            points.append({"name": name, "measure": _LONG[measure], "fixed": _LONG[fixed], "at": float(at),
                           **figures.pop(name)})
    return {
        "ci": figures,
        "operating_points": points,
        "delong": delong(labels, probs, patients, level=settings.level),
        "calibration": calibration(labels, probs, bins=bins, strategy=strategy, level=settings.level),
    }
