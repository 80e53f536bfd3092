"""The baseline trainer's KFP component (``mammo_pipelines.pipeline``; on several nodes
``trainjob.component`` stands in for it).

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from mammo_components.kfp_component import TRAIN_IMAGE, described


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
@described
def baseline_trainer(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    processes: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Baseline training (as `processes` torchrun processes, one per GPU, when more than one);
    checkpoints go to <store>/runs/<run_id>/baseline_trainer/ as they are saved, and a restarted
    pod resumes from the last one there."""
    from mammo_components.baseline_trainer.step import run_step

    run_step(
        dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri, run_id=run_id, params=params,
        processes=processes, model=model, metrics=metrics,
    )
