"""The split builder's KFP component, the first step of every training run
(``mammo_pipelines.pipeline``).

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from mammo_components.kfp_component import EVAL_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def split_builder(
    dataset_uri: str,
    store_uri: str,
    code_version: str,
    kfp_run_id: str,
    model_name: str,
    accept_fresh_split: bool,
    promotion_metric: str,
    promotion_margin: float,
    promotion_rule: str,
    promotion_min: float,
    promotion_min_cancers: int,
    image_size: str,
    backbone: str,
    weights: str,
    in_channels: int,
    batch_size: int,
    workers: int,
    device: str,
    seed: int,
    val_frac: float,
    test_frac: float,
    warmup_ratio: int,
    loss: str,
    augment: bool,
    folds: int,
    baseline_epochs: int,
    warmup_epochs: int,
    baseline_lr: float,
    unfreeze_epochs: int,
    unfreeze_lr: float,
    threshold_metric: str,
    threshold_source: str,
    rank_metric: str,
    baseline_set: list,
    unfreeze_set: list,
    evaluate_set: list,
    split: Output[Dataset],
) -> NamedTuple("SplitOutputs", split_uri=str, dataset_fingerprint=str, run_id=str, params=dict):
    """Validates the run's parameters (the promotion rule too), builds (or reuses) the dataset's fixed split, and names
    the run after everything its results depend on: dataset objects (names, sizes, ETags),
    split, parameters, images and the installed code. Never cached: it reads data that can
    change behind its URI. Its telemetry is pushed once that run id exists (a failure before
    it shows in KFP only).

    Args:
        split: The split (metadata: URI, sha256, fingerprint, counts, run id).
    """
    from mammo_components.split_builder.step import run_step

    return run_step(
        dataset_uri=dataset_uri, store_uri=store_uri, code_version=code_version, kfp_run_id=kfp_run_id,
        model_name=model_name, accept_fresh_split=accept_fresh_split, promotion_metric=promotion_metric, promotion_margin=promotion_margin, promotion_rule=promotion_rule,
        promotion_min=promotion_min, promotion_min_cancers=promotion_min_cancers, image_size=image_size,
        backbone=backbone, weights=weights,
        in_channels=in_channels, batch_size=batch_size, workers=workers, device=device, seed=seed,
        val_frac=val_frac, test_frac=test_frac, warmup_ratio=warmup_ratio, loss=loss, augment=augment,
        folds=folds, baseline_epochs=baseline_epochs, warmup_epochs=warmup_epochs, baseline_lr=baseline_lr,
        unfreeze_epochs=unfreeze_epochs, unfreeze_lr=unfreeze_lr, threshold_metric=threshold_metric,
        threshold_source=threshold_source, rank_metric=rank_metric, baseline_set=baseline_set, unfreeze_set=unfreeze_set,
        evaluate_set=evaluate_set, split=split,
    )
