"""The figures of one model's predictions, whoever made them: the evaluator's and ``mammo stats``'.

Both go through ``model_figures``: the threshold chosen on val by ``threshold_metric``
(``threshold_choice``), image- and breast-level metrics of val and test (``score_candidate``),
patient-level intervals, operating points (read off each split's curve and fixed on val),
DeLong, calibration, the test subgroups and the small-sample warnings (``assess``), and the
promotion verdict against a baseline or the floor (``mammo.promotion.decide``). So a figure
``mammo stats`` prints for the evaluator's own predictions is the evaluator's figure.

``read_predictions`` reads a prediction CSV from anywhere (another model, a commercial system,
a reader study) into the evaluator's frame; ``run_stats`` is ``mammo stats``. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo.config import EvalConfig, threshold_rule
from mammo.errors import ConfigError, DataError
from mammo.jsonio import to_jsonable
from mammo.metrics import aggregate_breasts, best_f1, best_pf1_threshold, evaluate_predictions, target_threshold
from mammo.promotion import PromotionRule, decide
from mammo.stats import (
    IMAGE_ONLY_COLUMNS,
    SUBGROUP_COLUMNS,
    BootstrapSettings,
    bootstrap,
    describe,
    small_sample_warnings,
    subgroups,
    with_age_band,
)

SPLITS = ("val", "test")
#: Table columns kept beside the predictions and reported as subgroups (when present).
METADATA_COLUMNS = ("site_id", "machine_id", "view", "density", "age", "implant")


def choose_threshold(breasts: pd.DataFrame, metric: str) -> float | None:
    """The breast-level threshold chosen on validation by ``metric`` (a ``threshold_metric``
    rule); None when none can be (``threshold_choice`` says why)."""
    return threshold_choice(breasts, metric)["threshold"]


def threshold_choice(breasts: pd.DataFrame, metric: str) -> dict[str, Any]:
    """How the operating threshold is chosen on the val breasts by ``metric`` (pf1, f1,
    specificity:S, sensitivity:S, recall_rate:R): ``{"rule", "threshold", "how", "reason"}``,
    ``threshold`` None with the ``reason`` when no threshold qualifies."""
    kind, target = threshold_rule(metric)
    labels, probs = breasts["label"].to_numpy(), breasts["prob"].to_numpy()
    reason = None
    if kind in ("pf1", "f1"):
        threshold = best_pf1_threshold(labels, probs) if kind == "pf1" else best_f1(labels, probs)[1]
        how = f"the val breast score that maximises {kind} (breasts with prob >= threshold flagged)"
        if threshold is None:
            reason = "val has no cancer breast" if len(labels) and not labels.sum() else "val has no scored breasts"
    else:
        threshold, reason = target_threshold(labels, probs, kind, float(target))
        how = {
            "specificity": f"the lowest val breast score at which val specificity is >= {target:g}",
            "sensitivity": f"the highest val breast score at which val sensitivity is >= {target:g}",
            "recall_rate": f"the lowest val breast score at which at most {target:g} of val breasts are flagged",
        }[kind] + " (breasts with prob >= threshold flagged)"
    return {"rule": metric, "threshold": threshold, "how": how + ", applied unchanged to test", "reason": reason}


def score_candidate(images: pd.DataFrame, config: EvalConfig) -> dict[str, Any]:
    """Threshold from val, then image- and breast-level metrics for val and test. Without a
    threshold (``threshold_choice``'s reason) the thresholded figures are undefined (None)."""
    val = images[images["split"] == "val"]
    return scores_at(images, threshold_choice(aggregate_breasts(val, config.data.breast_aggregation), config.threshold_metric), config)


def scores_at(images: pd.DataFrame, choice: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    """``score_candidate``'s record for a threshold chosen elsewhere (``choice``, as
    ``threshold_choice`` gives it): image- and breast-level metrics of every split at it."""
    how = config.data.breast_aggregation
    threshold = choice["threshold"]
    result: dict[str, Any] = {"threshold": threshold, "threshold_metric": config.threshold_metric, "threshold_choice": choice}
    for name in SPLITS:
        part = images[images["split"] == name]
        result[name] = evaluate_predictions(part, threshold_image=threshold, threshold_breast=threshold, how=how)
    return to_jsonable(result)


def assess(
    metrics: dict[str, Any], images: pd.DataFrame, breasts: pd.DataFrame, threshold: float | None,
    config: EvalConfig, settings: BootstrapSettings, subgroup_columns: Sequence[str] = SUBGROUP_COLUMNS,
) -> None:
    """Add to ``metrics`` what makes the best candidate's figures defensible: per split and
    level the patient-level intervals, operating points, DeLong and calibration; the subgroup
    table of the test split; the resampling settings; small-sample warnings."""
    stats = config.stats
    applied = threshold
    for split in SPLITS:
        for level, frame in (("image", images), ("breast", breasts)):
            part = frame[frame["split"] == split]
            metrics[split][level].update(describe(
                part, applied, settings, specificities=stats.specificities, sensitivities=stats.sensitivities,
                bins=stats.calibration_bins, strategy=stats.calibration_strategy,
            ))
            for point in metrics[split][level]["operating_points"]:
                point["threshold_from"] = f"{split}'s own curve"
    for level, frame in (("image", images), ("breast", breasts)):
        metrics["test"][level]["fixed_on_val"] = fixed_on_val(
            frame[frame["split"] == "val"], frame[frame["split"] == "test"], stats.specificities,
            stats.sensitivities, settings,
        )
    if stats.subgroup_resamples > 0:
        sub = BootstrapSettings(resamples=stats.subgroup_resamples, seed=settings.seed, level=settings.level)
        test_images, test_breasts = images[images["split"] == "test"], breasts[breasts["split"] == "test"]
        # Breast level for what is one value per breast; images only for the view.
        metrics["test"]["subgroups"] = (
            subgroups(test_breasts, applied, sub, level="breast", columns=subgroup_columns)
            + subgroups(test_images, applied, sub, level="image",
                        columns=[c for c in subgroup_columns if c in IMAGE_ONLY_COLUMNS])
        )
    metrics["bootstrap"] = {**settings.record(), "subgroup_resamples": stats.subgroup_resamples}
    metrics["warnings"] = small_sample_warnings(
        {split: int(breasts.loc[breasts["split"] == split, "label"].sum()) for split in SPLITS}
    )
    choice = metrics.get("threshold_choice") or {}
    if threshold is None:
        metrics["warnings"].append(
            f"no operating threshold ({choice.get('rule', config.threshold_metric)}): {choice.get('reason') or 'none could be chosen'}; "
            "sensitivity, specificity, PPV and the other thresholded figures are n/a"
        )


def fixed_on_val(
    val: pd.DataFrame, test: pd.DataFrame, specificities: list[float], sensitivities: list[float],
    settings: BootstrapSettings,
) -> list[dict[str, Any]]:
    """Operating points a programme could deploy: for each target (specificity S, sensitivity S)
    the threshold fixed on ``val`` by ``target_threshold`` and the test sensitivity,
    specificity and recall rate at it, with their intervals. Unlike the operating points read
    off the test ROC (an optimistic description of the curve), these are honest estimates.
    ``threshold`` None (and the figures None) with the ``reason`` when val cannot fix one."""
    rows = []
    labels, probs = val["label"].to_numpy(), val["prob"].to_numpy()
    which = ("sensitivity", "specificity", "recall_rate")
    for kind, targets in (("specificity", specificities), ("sensitivity", sensitivities)):
        for target in targets:
            threshold, reason = target_threshold(labels, probs, kind, float(target))
            row: dict[str, Any] = {"name": f"{kind}:{target!r}", "fixed": kind, "at": float(target),
                                   "threshold": threshold, "reason": reason}
            if threshold is not None and len(test):
                figures = bootstrap(test["label"].to_numpy(), test["prob"].to_numpy(), test["patient_id"].to_numpy(),
                                    threshold, settings, which=which)
                row.update(figures)
            else:
                row.update({name: {"value": None, "low": None, "high": None, "reason": reason or "no test units"}
                            for name in which})
            rows.append(row)
    return rows


def breast_frame(images: pd.DataFrame, how: str, metadata: Sequence[str] = METADATA_COLUMNS) -> pd.DataFrame:
    """``aggregate_breasts`` keeping the ``metadata`` that is one value per breast (all but view)."""
    breasts = aggregate_breasts(images, how)
    columns = [c for c in dict.fromkeys((*metadata, "age_band")) if c in images.columns and c not in IMAGE_ONLY_COLUMNS]
    if not columns:
        return breasts
    keys = images[["patient_id", "laterality"]].astype(str)
    meta = images[columns].assign(patient_id=keys["patient_id"], laterality=keys["laterality"])
    first = meta.groupby(["patient_id", "laterality"], sort=True).first().reset_index()
    return breasts.merge(first, on=["patient_id", "laterality"], how="left")


def model_figures(
    images: pd.DataFrame, breasts: pd.DataFrame, config: EvalConfig, settings: BootstrapSettings, *,
    scores: dict[str, Any] | None = None, rule: PromotionRule | None = None,
    production: tuple[pd.DataFrame, pd.DataFrame, float | None] | None = None, production_error: str | None = None,
    production_info: dict[str, Any] | None = None, subgroup_columns: Sequence[str] = SUBGROUP_COLUMNS,
) -> dict[str, Any]:
    """Every figure of one model's val and test predictions (``images`` and ``breasts`` with a
    ``split`` column): threshold, metrics, intervals, operating points, calibration, subgroups,
    warnings, and with a ``rule`` the promotion verdict against ``production`` (its images,
    breasts and threshold) or the floor alone. ``scores`` (``score_candidate``'s, when the caller
    ranked candidates by them) is completed in place rather than computed again."""
    metrics = scores if scores is not None else score_candidate(images, config)
    threshold = metrics["threshold"]
    assess(metrics, images, breasts, threshold, config, settings, subgroup_columns)
    if rule is not None:
        frame = breasts if rule.level == "breast" else images
        reference, reference_threshold = None, None
        if production is not None:
            p_images, p_breasts, reference_threshold = production
            chosen = p_breasts if rule.level == "breast" else p_images
            reference = chosen[chosen["split"] == rule.split]
        metrics["promotion"] = decide(
            rule, frame[frame["split"] == rule.split], threshold, settings, production=reference,
            production_threshold=reference_threshold, production_error=production_error, production_info=production_info,
        )
    return metrics


# --- mammo stats: prediction files from anywhere ---------------------------------------------

#: Columns every prediction file has (``cancer`` 0/1, ``probability`` in [0, 1]).
REQUIRED_COLUMNS = ("patient_id", "laterality", "cancer", "probability")
#: Columns that are neither a prediction nor a subgroup.
_NOT_SUBGROUPS = {*REQUIRED_COLUMNS, "image_id", "breast_id", "split", "checkpoint", "label", "prob", "n_images",
                  "age", "prediction", "predicted"}
LATERALITIES = ("L", "R")


def _row(i: int) -> int:
    """The file's line number of data row ``i`` (the header is line 1)."""
    return int(i) + 2


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A prediction CSV (``REQUIRED_COLUMNS``, optional ``image_id``, any metadata columns) as the
    evaluator's image frame (patient_id, image_id, laterality, breast_id, label, prob, metadata).
    Without ``image_id`` every row is one unit (an image, or a breast's score). Every mistake
    is a ``DataError`` naming the file, the row and the column."""
    where = str(path)
    if not Path(path).is_file():
        raise DataError(f"{where}: predictions file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{where}: missing required column(s): {', '.join(missing)} "
                        f"(a prediction file has {', '.join(REQUIRED_COLUMNS)}; image_id and metadata optional)")
    if raw.empty:
        raise DataError(f"{where}: no prediction rows")
    for column in ("patient_id", "laterality", *(("image_id",) if "image_id" in raw.columns else ())):
        empty = raw[column].str.strip() == ""
        if empty.any():
            raise DataError(f"{where}: row {_row(empty.idxmax())}: column {column} is empty")
    side = raw["laterality"].str.strip().str.upper()
    bad = ~side.isin(LATERALITIES)
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{where}: row {_row(i)}: column laterality must be L or R, got {raw['laterality'][i]!r}")
    label = pd.to_numeric(raw["cancer"].str.strip(), errors="coerce")
    bad = ~label.isin((0, 1))
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{where}: row {_row(i)}: column cancer must be 0 or 1, got {raw['cancer'][i]!r}")
    prob = pd.to_numeric(raw["probability"].str.strip(), errors="coerce")
    bad = ~((prob >= 0) & (prob <= 1))  # NaN and text fail both comparisons
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{where}: row {_row(i)}: column probability must be a number in [0, 1], got {raw['probability'][i]!r}")
    frame = raw.assign(patient_id=raw["patient_id"].str.strip(), laterality=side,
                       label=label.astype(np.int64), prob=prob.astype(np.float64))
    if "image_id" in frame.columns:
        frame["image_id"] = frame["image_id"].str.strip()
        dup = frame["image_id"].duplicated()
        if dup.any():
            i = dup.idxmax()
            first = frame.index[frame["image_id"] == frame["image_id"][i]][0]
            raise DataError(f"{where}: row {_row(i)}: column image_id {frame['image_id'][i]!r} is already in row {_row(first)}")
    else:  # one unit per row
        frame["image_id"] = [f"row{_row(i)}" for i in frame.index]
    frame["breast_id"] = frame["patient_id"] + "_" + frame["laterality"]
    labels = frame.groupby("breast_id")["label"]
    mixed = labels.transform("nunique") > 1
    if mixed.any():
        i = mixed.idxmax()
        other = frame.index[(frame["breast_id"] == frame["breast_id"][i]) & (frame["label"] != frame["label"][i])][0]
        first, second = sorted((i, other))
        raise DataError(
            f"{where}: row {_row(second)}: column cancer {frame['cancer'][second]} differs from row {_row(first)}'s "
            f"{frame['cancer'][first]} for the same breast (patient_id {frame['patient_id'][i]!r}, laterality "
            f"{frame['laterality'][i]}): a breast has one label"
        )
    metadata = subgroup_columns_of(frame)
    for column in metadata:  # empty cells are missing values, numbers stay numbers (subgroup order)
        frame[column] = frame[column].where(frame[column].str.strip() != "", None)
    if "age" in frame.columns:
        frame["age"] = pd.to_numeric(frame["age"].where(frame["age"].str.strip() != "", None), errors="coerce")
    keep = ["patient_id", "image_id", "laterality", "breast_id", "label", "prob",
            *(["age"] if "age" in frame.columns else []), *metadata]
    return with_age_band(frame[keep].reset_index(drop=True))


#: A column from elsewhere with more values than this is no grouping (a score, a date, an id):
#: no subgroups of it, rather than thousands of one-patient rows.
MAX_SUBGROUP_VALUES = 20


def subgroup_columns_of(frame: pd.DataFrame) -> list[str]:
    """The subgroup columns of a prediction file: the evaluator's (site_id, machine_id, view,
    density, age band, implant) first, then any other metadata column (manufacturer, reader, ...)
    with at most ``MAX_SUBGROUP_VALUES`` values."""
    known = [c for c in SUBGROUP_COLUMNS if c in frame.columns or (c == "age_band" and "age" in frame.columns)]
    extra = [c for c in frame.columns if c not in _NOT_SUBGROUPS and c not in SUBGROUP_COLUMNS
             and frame[c].nunique() <= MAX_SUBGROUP_VALUES]
    return [*known, *extra]


def _with_split(images: pd.DataFrame, split: str) -> pd.DataFrame:
    return images.assign(split=split)


def _same_labels(a: pd.DataFrame, b: pd.DataFrame, a_name: str, b_name: str) -> None:
    """Two files of the same cases (``--baseline``) must agree on every breast's label."""
    la = a.groupby("breast_id")["label"].first()
    lb = b.groupby("breast_id")["label"].first()
    common = la.index.intersection(lb.index)
    if common.empty:
        raise DataError(f"{b_name}: shares no breast (patient_id, laterality) with {a_name}: a paired comparison needs the same cases")
    differ = common[(la[common] != lb[common]).to_numpy()]
    if len(differ):
        raise DataError(f"{b_name}: breast {differ[0]} has cancer {lb[differ[0]]} here but {la[differ[0]]} in {a_name}")


def stats_of_file(
    path: str | Path, config: EvalConfig, settings: BootstrapSettings, rule: PromotionRule, *,
    val: pd.DataFrame | None, val_path: str | None, baseline: tuple[pd.DataFrame, str] | None,
) -> dict[str, Any]:
    """``model_figures`` of one prediction file as the test split: the threshold from ``val``
    (else from the file itself, said to be optimistic), the paired verdict against the
    ``baseline`` (its own threshold chosen the same way) or the first-model floor."""
    images = read_predictions(path)
    how = config.data.breast_aggregation
    columns = subgroup_columns_of(images)
    val_images = _with_split(val if val is not None else images, "val")
    both = pd.concat([val_images, _with_split(images, "test")], ignore_index=True)
    breasts = pd.concat([breast_frame(part, how, columns).assign(split=split) for split, part in both.groupby("split", sort=False)],
                        ignore_index=True)
    production = None
    if baseline is not None:
        base_images, base_name = baseline
        _same_labels(images, base_images, str(path), base_name)
        # The baseline has no val file of its own: its threshold (for a thresholded promotion
        # metric only) is chosen on the baseline file itself.
        base_both = pd.concat([_with_split(base_images, "val"), _with_split(base_images, "test")], ignore_index=True)
        base_threshold = threshold_choice(aggregate_breasts(base_images, how), config.threshold_metric)["threshold"]
        base_breasts = pd.concat([aggregate_breasts(part, how).assign(split=split)
                                  for split, part in base_both.groupby("split", sort=False)], ignore_index=True)
        production = (base_both, base_breasts, base_threshold)
    metrics = model_figures(both, breasts, config, settings, rule=rule, production=production,
                            production_info={"file": baseline[1], "threshold_on": "the baseline file itself"}
                            if baseline is not None else None,
                            subgroup_columns=columns)
    result: dict[str, Any] = {
        "file": str(path),
        "threshold": metrics["threshold"],
        "threshold_metric": config.threshold_metric,
        "threshold_choice": {**metrics["threshold_choice"],
                             "on": val_path if val is not None else "the same file (optimistic: no val file given)"},
        "test": metrics["test"],
        "bootstrap": metrics["bootstrap"],
        "warnings": metrics["warnings"],
        "promotion": metrics["promotion"],
        "subgroup_columns": columns,
    }
    if val is not None:
        result["val"] = metrics["val"]
    else:
        result["warnings"] = [w for w in result["warnings"] if not w.startswith("the val split")] + [
            "no --val file: the threshold (and the operating points 'fixed on val') were chosen on this same file, "
            "so every thresholded figure is optimistic"]
    return to_jsonable(result)


def run_stats(
    predictions: Sequence[str], config: EvalConfig, rule: PromotionRule, *, val: str | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """``mammo stats``: one result per prediction file (see ``stats_of_file``)."""
    rule.check()
    if rule.split != "test":
        raise ConfigError(f"--promotion-metric {rule.metric}: mammo stats decides on the prediction files themselves "
                          f"(the test split); use a test.* metric, e.g. test.{rule.level}.{rule.name}")
    settings = BootstrapSettings(resamples=config.stats.resamples, seed=config.seed, level=config.stats.level)
    val_images = read_predictions(val) if val is not None else None
    base = (read_predictions(baseline), str(baseline)) if baseline is not None else None
    results = [stats_of_file(path, config, settings, rule, val=val_images, val_path=val, baseline=base) for path in predictions]
    return {"rule": rule.record(), "baseline": baseline, "val": val, "results": results}


def _fig(figure: dict[str, Any] | None) -> str:
    """``0.812 [0.75, 0.87]``, ``n/a`` or a value without interval."""
    if not figure or figure.get("value") is None:
        return "n/a"
    value = f"{figure['value']:.3f}"
    if figure.get("low") is None:
        return value
    return f"{value} [{figure['low']:.3f}, {figure['high']:.3f}]"


def stats_table(result: dict[str, Any]) -> str:
    """The human-readable form of ``run_stats``' result: per file its figures at breast and
    image level, the operating points fixed on val, calibration, subgroups and the verdict."""
    lines: list[str] = []
    names = ("auc", "sensitivity", "specificity", "precision", "recall_rate")
    titles = ("AUC", "sensitivity", "specificity", "PPV", "recall rate")
    for r in result["results"]:
        choice = r["threshold_choice"]
        threshold = "n/a" if r["threshold"] is None else f"{r['threshold']:.4f}"
        level = int(round(100 * r["bootstrap"]["level"]))
        lines += [f"== {r['file']}",
                  f"threshold {threshold} ({choice['rule']} on {choice['on']}{'; ' + choice['reason'] if choice.get('reason') else ''})",
                  f"{'split':<6}{'level':<8}{'n':>7}{'cancers':>9}  " + "".join(f"{f'{t} ({level}%)':<24}" for t in titles).rstrip()]
        for split in ("val", "test"):
            for unit in ("breast", "image"):
                m = (r.get(split) or {}).get(unit)
                if not m:
                    continue
                ci = m.get("ci") or {}
                cancers = m.get("n_pos", "")
                lines.append(f"{split:<6}{unit:<8}{m.get('n', ''):>7}{cancers!s:>9}  "
                             + "".join(f"{_fig(ci.get(n)):<24}" for n in names).rstrip())
        fixed = r["test"]["breast"].get("fixed_on_val") or []
        if fixed:
            source = "val" if "val" in r else "this same file, optimistic"
            lines.append(f"operating points (breast, threshold fixed on {source}):")
            for p in fixed:
                at = "n/a" if p["threshold"] is None else f"{p['threshold']:.4f}"
                lines.append(f"  {p['name']:<18} threshold {at:<8} sensitivity {_fig(p.get('sensitivity'))}  "
                             f"specificity {_fig(p.get('specificity'))}  recall rate {_fig(p.get('recall_rate'))}")
        cal = r["test"]["breast"].get("calibration") or {}
        if cal:
            lines.append("calibration (test, breast): " + ", ".join(
                f"{k} {cal[k]:.4f}" for k in ("brier", "ece") if isinstance(cal.get(k), (int, float)) and math.isfinite(cal[k])))
        groups = r["test"].get("subgroups") or []
        if groups:
            lines.append("subgroups (test; many comparisons: read the intervals, not the ranks):")
            for g in groups:
                lines.append(f"  {g['level']:<7}{g['column'] + '=' + g['value']:<28}n {g['n']:<6}cancers {g['cancers']:<5}"
                             f"AUC {_fig(g.get('auc'))}")
        lines += [f"warning: {w}" for w in r["warnings"]]
        verdict = r["promotion"]
        against = f"against {result['baseline']}" if result.get("baseline") else "as a first model (floor only)"
        lines.append(f"verdict {against}: {'promote' if verdict['promote'] else 'do not promote'} ({verdict['reason']})")
        lines.append("")
    return "\n".join(lines).rstrip()
