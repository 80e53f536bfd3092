"""The promotion rule: does the chosen candidate beat the production model?

Both models are scored on the **current** split in the same evaluation (production is
re-evaluated, not remembered from when it was promoted, on an older and smaller test split), and
compared on the same units:

- ``paired_bootstrap`` (default): the difference candidate - production of the promotion metric
  with a paired bootstrap over patients (``mammo.stats.paired_difference``: both models on the
  same resamples); promote when the interval's lower bound exceeds ``margin``.
- ``margin``: promote when the observed difference exceeds ``margin`` (the old rule, now on the
  same split for both models).

Either way the candidate must clear an absolute floor, ``promotion_min`` (AUC 0.5 = chance by
default), with its own interval: its one-sided lower bound at ``FLOOR_ALPHA`` (0.5 %: the lower end
of its 99 % interval, ``mammo.stats.bootstrap``) must lie above it, under either rule, so a
chance-level model is promoted at most about 0.5 % of the time (``mammo bench coverage`` measures
it). And the rule's split must hold at least ``promotion_min_cancers`` cancer breasts: below that
nothing is promoted. That floor is the whole rule when nothing is in production yet. For a loss
(minimised) every comparison is mirrored: the floor is a ceiling and "beats" means lower.

``decide`` computes the figures (both models with intervals, the difference, the floor bound,
the cancers) and ``judge`` decides from them; the promoter calls ``judge`` again on the recorded
figures with its own rule, so every path to production applies the same rule. numpy/pandas only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from mammo.config import (
    DEFAULT_PROMOTION_MARGIN,
    DEFAULT_PROMOTION_METRIC,
    DEFAULT_PROMOTION_MIN,
    DEFAULT_PROMOTION_MIN_CANCERS,
    DEFAULT_PROMOTION_RULE,
    PROMOTION_RULES,
    metric_mode,
)
from mammo.errors import ConfigError
from mammo import metric_registry
from mammo.stats import BootstrapSettings, bootstrap, paired_difference

RULES = PROMOTION_RULES
#: The splits and levels the evaluator reports every candidate's figures on.
SPLITS = ("val", "test")
LEVELS = ("image", "breast")
#: The floor is tested one-sided at this level: the candidate's bound at 1 - FLOOR_ALPHA.
FLOOR_ALPHA = 0.005


def promotable_metrics() -> tuple[str, ...]:
    """Every ``<split>.<level>.<metric>`` a promotion can be decided on, sorted: the registry's
    headline metrics (the figures the evaluator reports for every candidate and can re-measure
    for both models), never a count of the data or the training loss."""
    return tuple(sorted(f"{split}.{level}.{m.name}" for split in SPLITS for level in LEVELS
                        for m in metric_registry.headline()))


@dataclass(frozen=True)
class PromotionRule:
    """The pipeline's promotion parameters."""

    metric: str = DEFAULT_PROMOTION_METRIC
    rule: str = DEFAULT_PROMOTION_RULE
    margin: float = DEFAULT_PROMOTION_MARGIN
    floor: float = DEFAULT_PROMOTION_MIN
    min_cancers: int = DEFAULT_PROMOTION_MIN_CANCERS

    @property
    def split(self) -> str:
        return self.metric.split(".")[0]

    @property
    def level(self) -> str:
        return self.metric.split(".")[1]

    @property
    def name(self) -> str:
        return self.metric.split(".", 2)[2]

    def check(self) -> None:
        """A usable rule: known rule name, ``<split>.<level>.<metric>`` naming a figure the
        evaluator reports for every candidate (``promotable_metrics``), a finite margin of 0 or
        more, a finite floor, a whole number of cancers, 0 or more; ConfigError otherwise. The pipeline's first step and the promoter
        call this, so a typo fails before hours of training, not after."""
        if self.rule not in RULES:
            raise ConfigError(f"promotion rule {self.rule!r}: one of {', '.join(RULES)}")
        if self.metric not in promotable_metrics():
            raise ConfigError(
                f"promotion metric {self.metric!r}: the evaluator reports no such metric; use "
                f"<split>.<level>.<metric> with split {'|'.join(SPLITS)}, level {'|'.join(LEVELS)} and metric "
                f"{'|'.join(m.name for m in metric_registry.headline())}, e.g. test.breast.auc"
            )
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not 0 <= self.margin < float("inf"):
            raise ConfigError(f"promotion margin {self.margin}: must be a finite number, 0 or more")
        if not -float("inf") < self.floor < float("inf"):
            raise ConfigError(f"promotion_min {self.floor}: must be a finite number")
        if isinstance(self.min_cancers, bool) or not isinstance(self.min_cancers, int) or self.min_cancers < 0:
            raise ConfigError(f"promotion_min_cancers {self.min_cancers!r}: must be a whole number, 0 or more")

    def record(self) -> dict[str, Any]:
        return {"rule": self.rule, "metric": self.metric, "margin": self.margin, "floor": self.floor,
                "min_cancers": self.min_cancers}

    @classmethod
    def of(cls, record: dict[str, Any]) -> PromotionRule:
        """The rule a verdict was decided under (its ``record``)."""
        return cls(**{key: record[key] for key in ("rule", "metric", "margin", "floor", "min_cancers") if key in record})


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _interval(figure: dict[str, Any]) -> str:
    if figure.get("low") is None:
        return f"{_fmt(figure.get('value'))} (no interval)"
    return f"{_fmt(figure.get('value'))} [{_fmt(figure['low'])}, {_fmt(figure['high'])}]"


def _units(frame: pd.DataFrame, level: str) -> pd.DataFrame:
    key = "image_id" if level == "image" else "breast_id"
    return frame.drop_duplicates(key).set_index(key)


def _cancers(frame: pd.DataFrame) -> int:
    """Cancer breasts among the decision's units (images of one breast count once)."""
    cancers = frame[frame["label"] == 1]
    return int(cancers["breast_id"].nunique()) if "breast_id" in cancers.columns else int(len(cancers))


def decide(
    rule: PromotionRule,
    candidate: pd.DataFrame,
    candidate_threshold: float | None,
    settings: BootstrapSettings,
    *,
    production: pd.DataFrame | None = None,
    production_threshold: float | None = None,
    production_error: str | None = None,
    production_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict for ``candidate`` against ``production`` (both: predictions of the rule's
    split at the rule's level, with patient_id, label, prob and image_id or breast_id), or
    against the floor alone when nothing is in production (``production`` None and no
    ``production_error``). ``production_error``: production exists but could not be evaluated,
    which never promotes. ``production_info`` (URI, sha256) is recorded as it is. The figures
    are computed here; ``judge`` decides from them."""
    rule.check()
    name = rule.name
    verdict: dict[str, Any] = {
        **rule.record(), **settings.record(), "production_info": dict(production_info or {}),
        "against_production": production is not None or production_error is not None,
        "production_error": production_error, "cancers": _cancers(candidate),
        "candidate": None, "candidate_ci": None, "floor_level": 1 - 2 * FLOOR_ALPHA, "floor_ci": None,
        "production": None, "production_ci": None, "difference": None, "difference_ci": None, "p_not_better": None,
    }
    if production_info:
        verdict["production_sha256"] = production_info.get("sha256")
    if candidate.empty:
        return {**verdict, "promote": False, "reason": f"the {rule.split} split has no predictions to decide on"}

    sign = 1.0 if metric_mode(rule.metric) == "max" else -1.0
    units = candidate
    if production is not None:
        a, b = _units(candidate, rule.level), _units(production, rule.level)
        common = a.index.intersection(b.index)
        a, b = a.loc[common], b.loc[common]
        compared = paired_difference(
            a["label"], a["prob"], b["prob"], a["patient_id"], name, settings,
            threshold_a=candidate_threshold, threshold_b=production_threshold,
        )
        other, diff = _figure(b, production_threshold, settings, name), compared["difference"]
        verdict.update(
            n_units=compared["n_units"], n_patients=compared["n_patients"], cancers=_cancers(a.reset_index()),
            production=other["value"], production_ci={"low": other["low"], "high": other["high"]},
            difference=diff["value"], difference_ci={"low": diff["low"], "high": diff["high"]},
            p_not_better=compared["p_not_better"] if sign > 0 else (
                None if compared["p_not_better"] is None else 1 - compared["p_not_better"]),
        )
        units = a
    else:
        verdict.update(n_units=int(len(candidate)), n_patients=int(candidate["patient_id"].nunique()))
    own = _figure(units, candidate_threshold, settings, name)
    strict = _figure(units, candidate_threshold, replace(settings, level=1 - 2 * FLOOR_ALPHA), name)
    verdict.update(candidate=own["value"], candidate_ci={"low": own["low"], "high": own["high"], "reason": own.get("reason")},
                   floor_ci={"low": strict["low"], "high": strict["high"], "reason": strict.get("reason")})
    promote, reason = judge(rule, verdict)
    return {**verdict, "promote": promote, "reason": reason}


def _figure(frame: pd.DataFrame, threshold: float | None, settings: BootstrapSettings, name: str) -> dict[str, Any]:
    return bootstrap(frame["label"], frame["prob"], frame["patient_id"], threshold, settings, which=(name,))[name]


def judge(rule: PromotionRule, verdict: dict[str, Any]) -> tuple[bool, str]:
    """Promote or not, and why (one line), from a verdict's figures (``decide``) under
    ``rule``: enough cancers, the floor cleared by the candidate's strict bound, production
    evaluated, and - against a production model - the rule's comparison. The evaluator decides
    with it and the promoter decides again with it on the recorded figures."""
    rule.check()
    sign = 1.0 if metric_mode(rule.metric) == "max" else -1.0
    own = {"value": verdict.get("candidate"), **(verdict.get("candidate_ci") or {})}
    if own["value"] is None:
        return False, f"the candidate's {rule.metric} is undefined"
    # A count; 2.0 once the verdict has travelled through KFP's artifact metadata (a protobuf
    # Struct holds every number as a double).
    cancers = verdict.get("cancers")
    if isinstance(cancers, float) and cancers.is_integer():
        cancers = int(cancers)
    if not isinstance(cancers, int) or isinstance(cancers, bool) or cancers < rule.min_cancers:
        return False, (f"the {rule.split} split has {cancers} cancer breast(s), fewer than "
                       f"promotion_min_cancers={rule.min_cancers}; not promoted")
    strict = verdict.get("floor_ci") or {}
    bound = strict.get("low") if sign > 0 else strict.get("high")
    if bound is None:
        why = strict.get("reason") or "too few cases"
        return False, f"the candidate's {rule.metric} {_interval(own)} has no interval ({why}); not promoted"
    clears_floor = sign * (bound - rule.floor) > 0
    what = f"one-sided {100 * (1 - FLOOR_ALPHA):g}% {'lower' if sign > 0 else 'upper'} bound"
    floor_text = (f"its {what} {_fmt(bound)} is {'' if clears_floor else 'not '}{'above' if sign > 0 else 'below'} "
                  f"the floor promotion_min={rule.floor:g}")
    if verdict.get("production_error") is not None:
        return False, f"the production model could not be re-evaluated ({verdict['production_error']}); not promoted"
    if not verdict.get("against_production"):
        return clears_floor, f"no production model yet; candidate {rule.metric} {_interval(own)}: {floor_text}"
    diff = verdict.get("difference")
    if diff is None:
        return False, f"the difference in {rule.metric} is undefined; not promoted"
    gain = sign * diff
    interval = verdict.get("difference_ci") or {}
    low, high = interval.get("low"), interval.get("high")
    gain_ci = None if low is None or high is None else sorted((sign * low, sign * high))
    if rule.rule == "margin":
        beats = gain > rule.margin
        how = f"difference {gain:+.3f} {'exceeds' if beats else 'does not exceed'} the margin {rule.margin:g}"
    else:
        beats = gain_ci is not None and gain_ci[0] > rule.margin
        shown = "no interval" if gain_ci is None else f"[{gain_ci[0]:+.3f}, {gain_ci[1]:+.3f}]"
        level = verdict.get("level", 0.95)
        how = (f"difference {gain:+.3f}, {int(round(level * 100))}% interval {shown}: lower bound "
               f"{'exceeds' if beats else 'does not exceed'} the margin {rule.margin:g}")
    production = {"value": verdict.get("production"), **(verdict.get("production_ci") or {})}
    reason = (f"{rule.metric}: candidate {_interval(own)} vs production {_interval(production)} "
              f"on the same {verdict.get('n_patients')} patients; {how}" + ("" if clears_floor else f"; {floor_text}"))
    return beats and clears_floor, reason


def confirm(rule: PromotionRule, verdict: dict[str, Any]) -> tuple[bool, str]:
    """The evaluator's verdict, decided again where the promotion happens: it must have been
    decided under ``rule`` (the promoter's), and ``judge`` must say promote on its recorded
    figures. A verdict of another rule, or a hand-edited "promote" its figures do not support,
    is refused with the reason."""
    recorded = {key: verdict.get(key) for key in rule.record()}
    if recorded != rule.record():
        differ = ", ".join(f"{key} {recorded[key]!r} (promoter: {value!r})"
                           for key, value in rule.record().items() if recorded[key] != value)
        return False, f"the evaluation was decided under another promotion rule: {differ}; not promoted"
    promote, reason = judge(rule, verdict)
    if not verdict.get("promote"):
        return False, str(verdict.get("reason") or reason)
    return promote, reason


def recheck(verdict: dict[str, Any], production_sha256: str | None, candidate_sha256: str | None) -> dict[str, Any]:
    """The evaluator's verdict, checked again where the promotion happens (under the promotion
    lock): a "promote" holds only against the production model it was decided against. When
    production has changed since (another run promoted in between), the candidate was never
    compared with the new model, and a statistical comparison cannot be repeated without both
    models' predictions: not promoted, and the next evaluation compares again."""
    decision = {
        "metric": verdict.get("metric"), "margin": verdict.get("margin"), "rule": verdict.get("rule"),
        "floor": verdict.get("floor"), "min_cancers": verdict.get("min_cancers"), "cancers": verdict.get("cancers"),
        "candidate": verdict.get("candidate"), "production": verdict.get("production"),
    }
    if candidate_sha256 is not None and candidate_sha256 == production_sha256:
        return {**decision, "promote": False, "reason": "this model is already in production"}
    compared = verdict.get("production_sha256")
    if compared != production_sha256:
        was = "no production model" if compared is None else f"production {compared[:12]}"
        now = "none" if production_sha256 is None else production_sha256[:12]
        return {**decision, "promote": False,
                "reason": f"production changed since the evaluation (it compared against {was}, production is now {now}); "
                          "not promoted without a comparison with the new production model"}
    return {**decision, "promote": bool(verdict.get("promote")), "reason": str(verdict.get("reason"))}
