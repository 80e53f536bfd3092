"""k-fold training's KFP components (``folds`` > 1): the fold plan, the fold trainers and the
collection of the fold models.

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from typing import List

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from mammo_components.kfp_component import EVAL_IMAGE, TRAIN_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def fold_plan(split_uri: str, store_uri: str, run_id: str, params: dict) -> list:
    """folds > 1: publishes each fold's split (the split without that fold's training patients)
    under <store>/runs/<run_id>/folds-<k>/; returns the fold indices for the ParallelFor."""
    from mammo_components.folds.step import run_plan_step

    return run_plan_step(split_uri=split_uri, store_uri=store_uri, run_id=run_id, params=params)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
@described
def fold_baseline_trainer(
    dataset_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    fold: int,
    processes: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """The baseline trainer on one fold's split, into <store>/runs/<run_id>/folds-<k>/fold-<i>-baseline_trainer/
    (resumes like the baseline trainer)."""
    from mammo_components.folds.step import run_baseline_step

    run_baseline_step(
        fold=fold, dataset_uri=dataset_uri, store_uri=store_uri, run_id=run_id, params=params,
        processes=processes, model=model, metrics=metrics,
    )


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
@described
def fold_unfreeze_trainer(
    dataset_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    fold: int,
    init: Input[Model],
    processes: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Gradual unfreezing on one fold's split from that fold's baseline, into
    <store>/runs/<run_id>/folds-<k>/fold-<i>-unfreeze_trainer/."""
    from mammo_components.folds.step import run_unfreeze_step

    run_unfreeze_step(
        fold=fold, dataset_uri=dataset_uri, store_uri=store_uri, run_id=run_id, params=params,
        init=init, processes=processes, model=model, metrics=metrics,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def fold_models(fold_baselines: Input[List[Model]], fold_unfreezes: Input[List[Model]]) -> list:
    """Collects the fold trainers' Models into the evaluator's fold_models (one entry per fold).

    Args:
        fold_baselines: The fold baseline trainers' Models, collected from the ParallelFor.
        fold_unfreezes: The fold unfreeze trainers' Models, collected from the ParallelFor.
    """
    from mammo_components.folds.step import run_members_step

    return run_members_step(fold_baselines=fold_baselines, fold_unfreezes=fold_unfreezes)


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def no_fold_models() -> list:
    """folds 1: no fold models (the other branch of the folds choice, so the evaluator always
    gets its fold_models)."""
    from mammo_components.folds.step import run_no_folds_step

    return run_no_folds_step()
