"""The k-fold steps of the pipeline (``folds.component`` calls these), ``folds`` > 1.

Layout in the run folder, ``<store>/runs/<run-id>/folds-<k>/``:

- ``fold-<i>-split/``: split.csv and split.json fold ``i`` trains on (``mammo.folds``: the
  split without fold ``i``'s training patients; val and test as they are), published by the
  fold plan, so every fold trainer reads an ordinary split and trains as the full-data one does;
- ``fold-<i>-baseline_trainer/``, ``fold-<i>-unfreeze_trainer/``: the fold's trainers' run
  folders (checkpoints, resume, manifest, as ``runs/<run-id>/<component>/``).

The run id already holds ``folds`` (a training value), so a run with other folds is another run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mammo import storage
from mammo.console import setup_logging
from mammo.errors import ConfigError
from mammo.folds import check_fold, fold_assignments, fold_summary
from mammo.split import Split, read_split, write_split
from mammo_components.inputs import cache_dir, fetch_split, normalize_uri, parse_params, resolve_workdir
from mammo_components.publishing import publish_outputs
from mammo_components.training_run import trainer_step

log = logging.getLogger(__name__)


def folds_uri(store_uri: str, run_id: str, folds: int) -> str:
    """``<store>/runs/<run-id>/folds-<k>``: where the fold splits and fold models of a run live."""
    return storage.run_uri(store_uri, run_id, f"folds-{folds}")


def fold_split_uri(store_uri: str, run_id: str, fold: int, folds: int) -> str:
    return storage.join(folds_uri(store_uri, run_id, folds), f"fold-{fold}-split")


def fold_run_uri(store_uri: str, run_id: str, fold: int, folds: int, component: str) -> str:
    """A fold trainer's run folder; its last segment names the fold, so the evaluator calls the
    candidate ``fold-<i>-<component>/<checkpoint>``."""
    return storage.join(folds_uri(store_uri, run_id, folds), f"fold-{fold}-{component}")


def run_plan_step(*, split_uri: str, store_uri: str, run_id: str, params: dict[str, Any]) -> list[int]:
    """Publish every fold's split (``fold_split_uri``) and return the fold indices the
    pipeline's ``dsl.ParallelFor`` runs over. Rewriting them is harmless: they are a function
    of the split, ``folds`` and ``seed``, all part of the run id."""
    setup_logging()
    p = parse_params(params)
    if p.folds < 2:
        raise ConfigError(f"params: folds is {p.folds}; the fold plan runs with folds of 2 or more")
    work = resolve_workdir(None)
    assignments, summary = read_split(fetch_split(normalize_uri(split_uri), work))
    division = fold_summary(assignments, folds=p.folds, seed=p.seed)
    for fold in range(p.folds):
        uri = fold_split_uri(store_uri, run_id, fold, p.folds)
        out = cache_dir(work, "runs", uri)
        rows = fold_assignments(assignments, fold=fold, folds=p.folds, seed=p.seed)
        record = {**summary, "fold": {"fold": fold, **division, "source_split_uri": split_uri}}
        write_split(Split(assignments=rows, summary=record), out)
        publish_outputs(out, uri, {"split_uri": uri, "fold": fold, "folds": p.folds, "counts": division["counts"]},
                        {"component": "folds", "fold": fold, "folds": p.folds})
    log.info("folds: %d fold splits of %s published under %s", p.folds, split_uri, folds_uri(store_uri, run_id, p.folds))
    return list(range(p.folds))


def _fold_trainer(entrypoint: Any, component: str, *, fold: int, dataset_uri: str, store_uri: str, run_id: str,
                  params: dict[str, Any], model: Any, metrics: Any, processes: int, **extra: Any) -> dict[str, Any]:
    """Run ``component``'s trainer on fold ``fold``'s split into the fold's run folder."""
    folds = parse_params(params).folds
    check_fold(fold, folds)
    result = trainer_step(
        entrypoint, component, store_uri=store_uri, run_id=run_id, model=model, metrics=metrics,
        processes=max(1, processes), run_uri=fold_run_uri(store_uri, run_id, fold, folds, component),
        dataset_uri=dataset_uri, split_uri=fold_split_uri(store_uri, run_id, fold, folds), params=params, **extra,
    )
    model.metadata.update({"fold": fold, "folds": folds, "split_uri": fold_split_uri(store_uri, run_id, fold, folds)})
    return result


def run_baseline_step(*, fold: int, dataset_uri: str, store_uri: str, run_id: str, params: dict[str, Any],
                      model: Any, metrics: Any, processes: int = 1) -> dict[str, Any]:
    """The baseline trainer on fold ``fold`` (``fold-<i>-baseline_trainer``)."""
    from mammo_components.baseline_trainer.entrypoint import COMPONENT, run

    return _fold_trainer(run, COMPONENT, fold=fold, dataset_uri=dataset_uri, store_uri=store_uri, run_id=run_id,
                         params=params, model=model, metrics=metrics, processes=processes)


def run_unfreeze_step(*, fold: int, dataset_uri: str, store_uri: str, run_id: str, params: dict[str, Any],
                      init: Any, model: Any, metrics: Any, processes: int = 1) -> dict[str, Any]:
    """The unfreeze trainer on fold ``fold``, from that fold's baseline (``init``, verified)."""
    from mammo_components.unfreeze_trainer.entrypoint import COMPONENT, run
    from mammo_components.unfreeze_trainer.step import verify_init

    return _fold_trainer(run, COMPONENT, fold=fold, dataset_uri=dataset_uri, store_uri=store_uri, run_id=run_id,
                         params=params, model=model, metrics=metrics, processes=processes,
                         init_uri=verify_init(init.metadata))


def run_members_step(*, fold_baselines: Sequence[Any], fold_unfreezes: Sequence[Any]) -> list[dict[str, Any]]:
    """The fold models as the evaluator takes them: one entry per fold, in fold order, with its
    split's URI and both stages' best checkpoint URI and sha256 (from the trainers' Models)."""
    setup_logging()
    by_fold: dict[int, dict[str, Any]] = {}
    for stage, models in (("baseline", fold_baselines), ("unfreeze", fold_unfreezes)):
        for model in models:
            fold = int(model.metadata["fold"])
            entry = by_fold.setdefault(fold, {"fold": fold, "folds": int(model.metadata["folds"]),
                                              "split_uri": model.metadata["split_uri"]})
            entry[stage] = {"uri": model.metadata["uri"], "sha256": model.metadata["sha256"]}
    members = [by_fold[fold] for fold in sorted(by_fold)]
    incomplete = [m["fold"] for m in members if "baseline" not in m or "unfreeze" not in m]
    if incomplete or [m["fold"] for m in members] != list(range(len(members))):
        raise ValueError(f"fold models: expected folds 0..{len(members) - 1} with both stages, got {sorted(by_fold)}")
    return members


def run_no_folds_step() -> list[dict[str, Any]]:
    """folds 1: no fold models (the folds choice's other branch, so the evaluator always gets
    its ``fold_models``)."""
    return []
