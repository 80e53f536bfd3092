"""Every figure of a model's predictions, declared once: its name, what it is computed from,
its direction, its titles, and where it is shown.

A metric is a vectorised function of weighted counts. The same function gives the observed
value (every weight 1: ``mammo.metrics.binary_metrics``) and thousands of bootstrap resamples
at once (one row of weights per resample: ``mammo.stats``), so a figure and its interval can
never disagree. Everything that lists metrics reads this table when it runs: the evaluation and
its intervals, the headline figures and the promotion rule's choices, the subgroup table, the
HTML report, the tables commands print and the per-epoch Pushgateway gauges. Adding a metric is
one ``Metric`` here (``registered`` adds one for a while, for tests).

Two kinds, by what they need:

- ``ranking``: threshold-free, from the ROC curve's cumulative sums (``Curve``);
- ``threshold``: at the operating threshold, from the counts there (``AtThreshold``).

numpy only: every layer may import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["ranking", "threshold"]
Level = Literal["image", "breast"]


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0 (an undefined figure, never an error)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den > 0, out, np.nan)


@dataclass(frozen=True)
class Curve:
    """One block of weightings (rows) of units sorted by score, descending.

    ``tp``/``fp``: cumulative positive/negative weight when flagging every score at or above
    that of run ``k`` (runs: distinct scores); ``gpos``/``gneg``: the weight of each run;
    ``pos``/``neg``: the totals per row; ``wpos``/``wneg``: per-unit weights; ``scores``: the
    sorted scores. Weights and sums are float64 (``mammo.stats.weighted_metrics``)."""

    tp: np.ndarray
    fp: np.ndarray
    gpos: np.ndarray
    gneg: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    wpos: np.ndarray
    wneg: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class AtThreshold:
    """Weighted counts at the operating threshold (flagged: score >= threshold), per row."""

    tp: np.ndarray
    fp: np.ndarray
    pos: np.ndarray
    neg: np.ndarray


@dataclass(frozen=True)
class Metric:
    """One figure. ``compute`` takes a ``Curve`` (ranking) or ``AtThreshold`` (threshold) and
    returns one value per row, NaN where undefined.

    ``headline``: one of the figures worth a glance (command results, KFP metrics, the report's
    cards) and a metric the promotion rule can decide on; ``column``: its title in the tables
    commands print (None: not there); ``subgroups``: in the report's subgroup table;
    ``pushed``: the level whose validation value is pushed every epoch as ``mammo_val_<name>``
    (None: not pushed); ``report``: a column of the report's table of all figures.

    ``interval``: how ``mammo.stats`` gives its interval: ``auc`` (the score interval of the
    Mann-Whitney AUC), ``proportion`` (an exact binomial interval of the share ``share`` gives:
    from 0/1 ``labels`` and ``flagged``, the units counted and the units they are counted out
    of) or ``bootstrap`` (percentile interval of patient resamples)."""

    name: str
    title: str
    kind: Kind
    compute: Callable[..., np.ndarray]
    higher_is_better: bool = True
    headline: bool = False
    column: str | None = None
    subgroups: bool = False
    pushed: Level | None = None
    report: bool = True
    interval: Literal["auc", "proportion", "bootstrap"] = "bootstrap"
    share: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


def _auc(c: Curve) -> np.ndarray:
    """Trapezoids of the ROC curve: tied scores count one half (scikit-learn's roc_auc_score)."""
    return ratio(((c.tp - 0.5 * c.gpos) * c.gneg).sum(axis=1), c.pos * c.neg)


def _pr_auc(c: Curve) -> np.ndarray:
    """Average precision, sum of (R_k - R_k-1) * P_k (scikit-learn's average_precision_score)."""
    flagged = c.tp + c.fp
    precision = np.divide(c.tp, flagged, out=np.zeros_like(c.tp), where=flagged > 0)
    return ratio((c.gpos * precision).sum(axis=1), c.pos)


def _pf1(c: Curve) -> np.ndarray:
    """Probabilistic F1 (RSNA 2023): precision and recall from summed probabilities; 0 when
    no probability mass falls on a cancer, NaN without cancers."""
    p = np.clip(np.asarray(c.scores, dtype=np.float64), 0.0, 1.0)
    ctp, cfp = c.wpos @ p, c.wneg @ p
    precision, recall = ratio(ctp, ctp + cfp), ratio(ctp, c.pos)
    return np.where((ctp == 0) & (c.pos > 0), 0.0, ratio(2 * precision * recall, precision + recall))


#: The table, in display order.
REGISTRY: list[Metric] = [
    Metric("auc", "ROC-AUC", "ranking", _auc, headline=True, column="AUC", subgroups=True, pushed="image",
           interval="auc"),
    Metric("pr_auc", "PR-AUC", "ranking", _pr_auc, headline=True, column="PR-AUC", pushed="image"),
    Metric("pf1", "pF1", "ranking", _pf1, headline=True, column="pF1", pushed="breast"),
    Metric("sensitivity", "Sensitivity", "threshold", lambda t: ratio(t.tp, t.pos),
           headline=True, column="sens", subgroups=True, interval="proportion", share=lambda y, f: (y & f, y)),
    Metric("specificity", "Specificity", "threshold", lambda t: ratio(t.neg - t.fp, t.neg),
           headline=True, column="spec", subgroups=True, interval="proportion", share=lambda y, f: (~y & ~f, ~y)),
    Metric("precision", "PPV", "threshold", lambda t: ratio(t.tp, t.tp + t.fp), headline=True,
           interval="proportion", share=lambda y, f: (y & f, f)),
    # The share flagged at the threshold: screening's recall rate.
    Metric("recall_rate", "Recall rate", "threshold", lambda t: ratio(t.tp + t.fp, t.pos + t.neg), headline=True,
           interval="proportion", share=lambda y, f: (f, np.ones_like(f))),
    Metric("f1", "F1", "threshold", lambda t: ratio(2 * t.tp, t.tp + t.fp + t.pos)),
    Metric("accuracy", "Accuracy", "threshold", lambda t: ratio(t.tp + t.neg - t.fp, t.pos + t.neg), report=False,
           interval="proportion", share=lambda y, f: (y == f, np.ones_like(f))),
]


def metrics(kind: Kind | None = None) -> list[Metric]:
    """The registered metrics (of one kind), in display order."""
    return [m for m in REGISTRY if kind is None or m.kind == kind]


def names(kind: Kind | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in metrics(kind))


def get(name: str) -> Metric:
    for metric in REGISTRY:
        if metric.name == name:
            return metric
    raise KeyError(f"unknown metric {name!r}; one of {', '.join(names())}")


def headline() -> list[Metric]:
    return [m for m in REGISTRY if m.headline]


def columns() -> list[Metric]:
    """The metrics of the tables commands print, in order."""
    return [m for m in REGISTRY if m.column]


def pushed() -> list[Metric]:
    """The metrics pushed every epoch, each at its level."""
    return [m for m in REGISTRY if m.pushed]


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """Add ``metric`` to the table for the duration of a ``with`` block."""
    if any(m.name == metric.name for m in REGISTRY):
        raise ValueError(f"metric {metric.name!r} is registered already")
    REGISTRY.append(metric)
    try:
        yield metric
    finally:
        REGISTRY.remove(metric)
