"""The unfreeze trainer's KFP component (``mammo_pipelines.pipeline``; on several nodes
``trainjob.component`` stands in for it).

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from mammo_components.kfp_component import TRAIN_IMAGE, described


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
@described
def unfreeze_trainer(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    init: Input[Model],
    processes: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Gradual unfreezing from the baseline's best checkpoint (its URI and sha256 travel in the
    Model artifact's metadata); same storage and resume behaviour as the baseline."""
    from mammo_components.unfreeze_trainer.step import run_step

    run_step(
        dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri, run_id=run_id, params=params,
        init=init, processes=processes, model=model, metrics=metrics,
    )
