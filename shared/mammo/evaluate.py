"""Evaluate one or more checkpoints on the validation and test splits.

The operating threshold is chosen on validation at breast level (``threshold_metric``: maximum
pF1 by default or F1, or a target a screening programme sets - ``specificity:S``,
``sensitivity:S``, ``recall_rate:R``, see ``mammo.metrics.target_threshold``) and applied
unchanged to test, so the test figures are an honest estimate. When no threshold can be chosen
(val without cancer, say), every thresholded figure is n/a with the reason, never a figure at a
default threshold. The operating points of the test split (sensitivity at a specificity, and
vice versa) likewise use thresholds fixed on val (``fixed_on_val``). With several
checkpoints, each is scored the same way and ranked by a validation metric; the best one's
figures head ``metrics.json`` and the report.

``run_evaluation`` writes the files (metrics.json, predictions, plots, report) and returns their
content as an ``Evaluation``, so callers (the evaluator component) need not read them back;
``evaluate`` returns its short summary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mammo.config import EvalConfig, lookup_metric, metric_mode
from mammo.config_files import dump_config
from mammo.data.augment import BatchTransform
from mammo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mammo.engine.data import SplitData, eval_loader, load_split_data, require
from mammo.engine.loop import gather_predictions, predict
from mammo.engine.runtime import Runtime, runtime_for, seed_everything
from mammo.export import is_ensemble_file, load_model_file, write_ensemble
from mammo.data.table import read_table
from mammo.ensemble import ENSEMBLE, ENSEMBLE_FILE, ENSEMBLE_WEIGHTS, compare, ensemble_file, mean_probabilities
from mammo.errors import DataError, MammoError
from mammo.imagesize import ImageSize, image_hw, parse_image_size, size_text
from mammo.jsonio import to_jsonable, write_json
from mammo.metrics import format_metric, headline
# The figures of a model's predictions live in mammo.prediction_stats (shared with `mammo stats`);
# the names below stay importable from here.
from mammo.prediction_stats import (  # noqa: F401
    METADATA_COLUMNS,
    assess,
    breast_frame,
    choose_threshold,
    fixed_on_val,
    model_figures,
    score_candidate,
    scores_at,
    threshold_choice,
)
from mammo.promotion import PromotionRule
from mammo.report import write_plots, write_report
from mammo.stats import BootstrapSettings, with_age_band
from mammo.storage.atomic import atomic_path, staged_folder, write_text_atomic

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
METRICS_NAME = "metrics.json"
PREDICTIONS_IMAGE = "predictions_image.csv"
PREDICTIONS_BREAST = "predictions_breast.csv"
REPORT_NAME = "report.html"
HISTORY_NAME = "history.json"
#: The name of the production model among the predictions (never a candidate's name).
PRODUCTION = "production"


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
        return summary_of(self.metrics, str(self.out))


def summary_of(m: dict[str, Any], out: str) -> dict[str, Any]:
    """The short form of an evaluation's ``metrics.json`` (``m``) written to ``out``, as
    ``summaries.evaluation_table`` prints it."""
    return {
        "out": out,
        "best": m["best"],
        "threshold": m["threshold"],
        "val": headline(m["val"]),
        "test": headline(m["test"]),
        "bootstrap": m.get("bootstrap"),
        "warnings": m.get("warnings", []),
        "promotion": m.get("promotion"),
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


def _predict_split(model, data: SplitData, name: str, config: EvalConfig, image_size: ImageSize, runtime: Runtime, in_channels: int) -> pd.DataFrame:
    """Image probabilities of one split; in a distributed run each process predicts its shard
    and every process gets all of them."""
    rows = data.rows(name)
    columns = ["patient_id", "image_id", "laterality", "breast_id", "label", "prob", "split"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    sized = config.model_copy(update={"data": config.data.model_copy(update={"image_size": image_size})})
    device = runtime.device
    loader = eval_loader(rows, sized, runtime, data.decoded_cache(sized))
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


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of ``config``; write metrics, predictions, plots and report;
    return the summary (``Evaluation.summary``)."""
    return run_evaluation(config).summary()


def run_evaluation(
    config: EvalConfig,
    runtime: Runtime | None = None,
    *,
    reference: str | Path | None = None,
    rule: PromotionRule | None = None,
    context: dict[str, Any] | None = None,
    reference_error: str | None = None,
    trained_patients: Callable[[str], set[str] | None] | None = None,
) -> Evaluation:
    """Evaluate every checkpoint of ``config``; write metrics, predictions, plots and report
    to ``config.out`` and return them. Several processes share the predicting; the main one
    writes (the others return the same figures).

    ``reference``: the production checkpoint, scored on the same splits like a candidate (but
    never ranked) so that ``rule`` (``mammo.promotion``) compares the best candidate with it on
    the same patients; with a ``rule`` and no ``reference`` the candidate faces the floor alone,
    unless ``reference_error`` says production exists but could not be had (never promoted then).
    ``context`` (run id, dataset URI, parameters, production URI and sha256, ...) heads the
    report. ``trained_patients`` maps a checkpoint's split fingerprint to the train and val
    patients of that split (None: unknown), so that no model is scored on test patients it
    trained on (``check_trained_on``)."""
    with runtime_for(config, runtime) as made:
        return _run_evaluation(
            config, made, reference=reference, rule=rule, context=dict(context or {}), reference_error=reference_error,
            trained_patients=trained_patients,
        )


def check_trained_on(name: str, fingerprint: str, data: SplitData,
                     trained_patients: Callable[[str], set[str] | None] | None, *, fold_model: bool = False) -> str | None:
    """A model trained on another split than ``data``'s may have trained on its test patients:
    a ``DataError`` when ``trained_patients`` shows it did (its test figures would be inflated),
    else a one-line warning (logged, and returned for metrics.json's ``warnings``); None when
    it was trained on this very split, or when it is one of this split's fold models
    (``fold_model``: trained on a fold split of it by design) and shown clean."""
    if fingerprint == data.fingerprint:
        return None
    seen = trained_patients(fingerprint) if trained_patients is not None else None
    test = set(data.rows("test")["patient_id"].astype(str))
    other = f"{name} was trained on another split (split.csv sha256 {fingerprint[:12]}, this one {data.fingerprint[:12]})"
    if seen is None:
        warning = f"{other}, which cannot be checked: its test figures may include patients it trained on"
    else:
        overlap = test & seen
        if overlap:
            raise DataError(
                f"{name} was trained on split {fingerprint[:12]}, which has {len(overlap)} of this split's {len(test)} "
                "test patients in train or val: its test figures would be inflated, so it is not scored on them"
            )
        warning = f"{other}; none of this split's {len(test)} test patients was in its train or val"
        if fold_model:
            log.info("%s (a fold model of this split)", warning)
            return None
    log.warning("%s", warning)
    return warning


def _evaluate_checkpoint(
    path: str | Path, name: str, data: SplitData, config: EvalConfig, runtime: Runtime, size_given: bool,
    trained_patients: Callable[[str], set[str] | None] | None = None, warnings: list[str] | None = None,
    fold_model: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame, list[dict[str, Any]]]:
    """One checkpoint on val and test: its record (threshold from val, figures), its image
    predictions and its training history (for the report's curves). ``warnings`` gets the
    line of a checkpoint trained on another split (``check_trained_on``)."""
    payload = load_checkpoint(path)
    split_warning = check_trained_on(name, payload["split_fingerprint"], data, trained_patients, fold_model=fold_model)
    if split_warning is not None and warnings is not None:
        warnings.append(split_warning)
    log.info("evaluating %s (%s, epoch %s)", name, payload["stage"], payload["epoch"])
    images, image_size = _network_images(payload, str(path), name, data, config, runtime, size_given)
    scores = score_candidate(images, config)
    record = {
        "name": name,
        "path": str(path),
        "stage": payload["stage"],
        "epoch": payload["epoch"],
        "backbone": payload["model_config"]["backbone"],
        "image_size": size_text(image_size),
        "split_fingerprint": payload["split_fingerprint"],
        **scores,
    }
    return record, images.assign(checkpoint=name), read_history(path, payload)


def _network_images(
    payload: dict[str, Any], source: str, name: str, data: SplitData, config: EvalConfig, runtime: Runtime,
    size_given: bool,
) -> tuple[pd.DataFrame, ImageSize]:
    """The image predictions on every split of the network a checkpoint or an export holds, at
    the size it was trained at (or the one asked for), and that size."""
    model = model_from_checkpoint(payload, source=source).to(runtime.device)
    trained_size = parse_image_size(payload["image_size"])  # recorded by the trainer: S or (H, W)
    image_size = config.data.image_size if size_given else trained_size
    if image_hw(image_size) != image_hw(trained_size):
        log.warning("%s was trained at %s px; evaluating at %s px as asked (--image-size)",
                    name, size_text(trained_size), size_text(image_size))
    in_channels = int(payload["model_config"]["in_channels"])
    frames = [_predict_split(model, data, split, config, image_size, runtime, in_channels) for split in SPLITS]
    return pd.concat([f for f in frames if not f.empty] or frames, ignore_index=True), image_size


def _evaluate_ensemble_file(
    path: str | Path, name: str, data: SplitData, config: EvalConfig, runtime: Runtime, size_given: bool,
    trained_patients: Callable[[str], set[str] | None] | None = None, warnings: list[str] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, list[dict[str, Any]]]:
    """An ensemble's one file (``mammo.export.write_ensemble``; a production ensemble) scored as
    the evaluation scores its ensemble candidate: each member alone, the mean image
    probability, then the threshold on val; the record and image predictions, as for a
    checkpoint (no training history). ``warnings`` gets the line of each member trained on
    another split."""
    payload, _ = load_model_file(path)
    members, frames, sizes = payload["members"], [], []
    for i, member in enumerate(members, start=1):
        split_warning = check_trained_on(f"{name} (member {i})", str(member["source"].get("split_fingerprint")), data,
                                         trained_patients)
        if split_warning is not None and warnings is not None:
            warnings.append(split_warning)
        images, image_size = _network_images(member, f"{path} (member {i})", f"{name} member {i}", data, config,
                                             runtime, size_given)
        frames.append(images.assign(checkpoint=f"member-{i}"))
        sizes.append(image_size)
    log.info("evaluated %s: an ensemble of %d members", name, len(members))
    images = mean_probabilities(pd.concat(frames, ignore_index=True), [f"member-{i}" for i in range(1, len(members) + 1)])
    scores = score_candidate(images, config)
    record = {
        "name": name, "path": str(path), "stage": "ensemble", "epoch": f"{len(members)} folds",
        "backbone": "+".join(sorted({m["model_config"]["backbone"] for m in members})),
        "image_size": size_text(sizes[0]), "split_fingerprint": members[0]["source"].get("split_fingerprint"),
        **scores,
    }
    return record, images.assign(checkpoint=name), []


def read_history(path: str | Path, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The training history of a checkpoint's run: ``history.json`` beside it (every epoch of
    the run), else the history saved in the checkpoint (up to its epoch)."""
    beside = Path(path).parent / HISTORY_NAME
    if beside.is_file():
        try:
            loaded = json.loads(beside.read_text())
            if isinstance(loaded, list):
                return loaded
        except (OSError, ValueError):
            log.warning("%s: unreadable; using the history inside the checkpoint", beside)
    return list(payload.get("history") or [])


def _run_evaluation(
    config: EvalConfig, runtime: Runtime, *, reference: str | Path | None, rule: PromotionRule | None,
    context: dict[str, Any], reference_error: str | None = None,
    trained_patients: Callable[[str], set[str] | None] | None = None,
) -> Evaluation:
    checkpoints = require(config.checkpoints, "--checkpoint")
    out = Path(require(config.out, "--out (out)"))
    seed_everything(config.seed, config.deterministic)
    data = load_split_data(config)
    size_given = "image_size" in config.data.model_fields_set

    candidates, image_frames, histories = [], [], {}
    split_warnings: list[str] = []  # candidates or production trained on another split (check_trained_on)
    fold_paths = {path for group in config.ensemble for path in group}
    for path, name in zip(checkpoints, candidate_names(checkpoints)):
        record, images, history = _evaluate_checkpoint(path, name, data, config, runtime, size_given, trained_patients,
                                                       split_warnings, fold_model=path in fold_paths)
        candidates.append(record)
        image_frames.append(images)
        histories[name] = history
    ensemble = _ensemble_candidate(config, candidates, image_frames, data, runtime, size_given) if config.ensemble else None
    if ensemble is not None:
        candidates.append(ensemble[0])
        image_frames.append(ensemble[1])

    production, production_error = None, reference_error
    if reference is not None:
        try:
            scored = _evaluate_ensemble_file if is_ensemble_file(reference) else _evaluate_checkpoint
            production, images, _ = scored(reference, PRODUCTION, data, config, runtime, size_given, trained_patients,
                                           split_warnings)
            image_frames.append(images)
        except MammoError as err:  # e.g. a production model of an incompatible format
            production_error = str(err)
            log.warning("production model not evaluated: %s", err)

    order = rank_candidates(candidates, config.rank_metric)
    best = candidates[order[0]]
    for rank, i in enumerate(order, start=1):
        candidates[i]["rank"] = rank
    metrics = {
        "best": best["name"],
        "rank_metric": config.rank_metric,
        "threshold": best["threshold"],
        "threshold_metric": config.threshold_metric,
        "threshold_choice": best["threshold_choice"],
        "val": best["val"],
        "test": best["test"],
        "candidates": [candidates[i] for i in order],
        "split_fingerprint": data.fingerprint,
    }
    predictions = with_metadata(pd.concat(image_frames, ignore_index=True), config)
    breasts = pd.concat(
        [
            breast_frame(part, config.data.breast_aggregation).assign(split=split, checkpoint=ckpt)
            for (ckpt, split), part in predictions.groupby(["checkpoint", "split"], sort=False)
        ],
        ignore_index=True,
    )
    best_images = predictions[predictions["checkpoint"] == best["name"]]
    best_breasts = breasts[breasts["checkpoint"] == best["name"]]
    settings = BootstrapSettings(resamples=config.stats.resamples, seed=config.seed, level=config.stats.level)
    production_frames = None
    if production is not None:
        production_frames = (predictions[predictions["checkpoint"] == PRODUCTION], breasts[breasts["checkpoint"] == PRODUCTION],
                             production["threshold"])
    # The figures of the best candidate (``metrics`` holds its scores) and the verdict: the same
    # function ``mammo stats`` runs on prediction files.
    model_figures(best_images, best_breasts, config, settings, scores=metrics, rule=rule, production=production_frames,
                  production_error=production_error, production_info=context.get("production"))
    metrics["warnings"] = [*metrics.get("warnings", []), *split_warnings]
    if ensemble is not None:
        in_folds = {path for group in config.ensemble for path in group}
        full_data = [c["name"] for c in candidates if c["path"] not in in_folds and c["name"] != ENSEMBLE]
        metrics["ensemble"] = compare(breasts, metrics["candidates"], ensemble[0]["members"], settings,
                                      metric=COMPARED_METRIC, others=full_data)
    if production is not None:
        metrics["production"] = {key: production[key] for key in ("name", "path", "stage", "epoch", "backbone", "threshold", "val", "test")}
    metrics = to_jsonable(metrics)
    if runtime.is_main:  # all of it or none of it: the files move into out together
        with staged_folder(out) as stage:
            write_text_atomic(stage / "config.yaml", dump_config(config))
            _write_csv(stage / PREDICTIONS_IMAGE, predictions)
            _write_csv(stage / PREDICTIONS_BREAST, breasts)
            plots = write_plots(stage, best_images, best_breasts, metrics, histories)
            write_json(stage / METRICS_NAME, metrics)
            if ensemble is not None:
                write_json(stage / ENSEMBLE_FILE, ensemble[2])
                write_ensemble([(m["checkpoint"], m["sha256"]) for m in ensemble[2]["members"]], stage / ENSEMBLE_WEIGHTS,
                               threshold=ensemble[2]["threshold"], breast_aggregation=ensemble[2]["breast_aggregation"])
                _write_csv(stage / OOF_PREDICTIONS, ensemble[3])
            write_report(stage / REPORT_NAME, metrics, data.summary, plots, context)
    log.info("best candidate: %s (%s %s)", best["name"], config.rank_metric, format_metric(lookup_metric(best["val"], config.rank_metric)))
    return Evaluation(out=out, metrics=metrics, predictions=predictions, breasts=breasts)


def with_metadata(predictions: pd.DataFrame, config: EvalConfig) -> pd.DataFrame:
    """Image predictions with the dataset table's metadata columns (site_id, machine_id, view,
    density, age, implant, ... whichever it has), for the subgroup table and the CSV files."""
    table = read_table(config.data.root)
    columns = [c for c in METADATA_COLUMNS if c in table.columns and c not in predictions.columns]
    if not columns:
        return predictions
    extra = table[["image_id", *columns]].drop_duplicates("image_id")
    merged = predictions.merge(extra, on="image_id", how="left")
    return with_age_band(merged)


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


#: The figure by which the ensemble is compared with the best single fold model (breast level).
COMPARED_METRIC = "auc"


#: The out-of-fold image predictions of the training patients (folds > 1), in the evaluation folder.
OOF_PREDICTIONS = "predictions_oof.csv"
#: Their ``split`` value: training patients, each scored by the fold model that held it out.
OOF = "oof"


def _oof_predictions(
    members: list[dict[str, Any]], data: SplitData, config: EvalConfig, runtime: Runtime, size_given: bool,
) -> pd.DataFrame:
    """Every training patient's image predictions by the ensemble member of the fold that held
    it out (member ``i`` is fold ``i``'s; ``mammo.folds`` with the run's seed), split ``oof``."""
    import dataclasses

    from mammo.folds import held_out_patients

    frames = []
    for fold, member in enumerate(members):
        held = set(held_out_patients(data.frame, fold=fold, folds=len(members), seed=config.seed))
        rows = data.frame[(data.frame["split"] == "train") & data.frame["patient_id"].astype(str).isin(held)]
        view = dataclasses.replace(data, frame=rows.assign(split=OOF))
        payload = load_checkpoint(member["path"])
        model = model_from_checkpoint(payload, source=str(member["path"])).to(runtime.device)
        size = config.data.image_size if size_given else parse_image_size(payload["image_size"])
        predicted = _predict_split(model, view, OOF, config, size, runtime, int(payload["model_config"]["in_channels"]))
        frames.append(predicted.assign(checkpoint=member["name"], fold=fold))
    return pd.concat(frames, ignore_index=True)


def _oof_scores(images: pd.DataFrame, oof: pd.DataFrame, config: EvalConfig) -> dict[str, Any]:
    """``score_candidate``'s record with the threshold chosen on the out-of-fold breasts of the
    training patients (``threshold_source: oof``) instead of val, applied unchanged to val and test."""
    from mammo.metrics import aggregate_breasts

    choice = threshold_choice(aggregate_breasts(oof, config.data.breast_aggregation), config.threshold_metric)
    choice["how"] = choice["how"].replace("val", "out-of-fold training") + " and val"
    choice["source"] = OOF
    return scores_at(images, choice, config)


def _ensemble_candidate(
    config: EvalConfig, candidates: list[dict[str, Any]], image_frames: list[pd.DataFrame], data: SplitData,
    runtime: Runtime, size_given: bool,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """The fold models' ensemble (``config.ensemble``: the checkpoints of each fold, in fold
    order) as one more candidate: each fold's best checkpoint on val by the rank metric is a
    member, the image probabilities are the members' mean, and it is scored as every candidate
    is, its threshold chosen on val or (``threshold_source: oof``) on the out-of-fold predictions
    of the training patients. Returns its record (its path: the one file of its weights,
    ``ensemble.pt``), its image predictions, the content of its ``ensemble.json`` and the
    out-of-fold predictions."""
    from mammo.storage.integrity import sha256_file

    by_path = {c["path"]: c for c in candidates}
    members = []
    for group in config.ensemble:
        unknown = [p for p in group if p not in by_path]
        if unknown:
            raise MammoError(f"ensemble: {unknown[0]} is not among the evaluated checkpoints")
        records = [by_path[p] for p in group]
        members.append(records[rank_candidates(records, config.rank_metric)[0]])
    names = [m["name"] for m in members]
    images = mean_probabilities(pd.concat(image_frames, ignore_index=True), names)
    oof = _oof_predictions(members, data, config, runtime, size_given)
    scores = _oof_scores(images, oof, config) if config.threshold_source == OOF else score_candidate(images, config)
    path = Path(require(config.out, "--out (out)")) / ENSEMBLE_WEIGHTS
    backbones = sorted({m["backbone"] for m in members})
    record = {
        "name": ENSEMBLE, "path": str(path), "stage": "ensemble", "epoch": f"{len(members)} folds",
        "backbone": "+".join(backbones), "image_size": members[0]["image_size"],
        "split_fingerprint": data.fingerprint, "members": names, **scores,
    }
    content = ensemble_file(
        [{"name": m["name"], "checkpoint": m["path"], "sha256": sha256_file(m["path"])} for m in members],
        aggregation=config.data.breast_aggregation, threshold=scores["threshold"],
    )
    log.info("ensemble of %s: val %s %s", ", ".join(names), config.rank_metric,
             format_metric(lookup_metric(scores["val"], config.rank_metric)))
    return record, images.assign(checkpoint=ENSEMBLE), content, oof
