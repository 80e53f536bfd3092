"""The trainers' KFP components on several nodes (``trainer_nodes`` > 1): each launches a Kubeflow
Trainer TrainJob.

Each function is KFP's interface of the step (see ``mammo_components.kfp_component``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from mammo_components.kfp_component import EVAL_IMAGE, described


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def baseline_trainjob(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    nodes: int,
    gpus_per_node: int,
    image: str,
    labels: dict,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """The baseline trainer on several nodes (trainer_nodes > 1): launches a Kubeflow Trainer
    TrainJob of `nodes` nodes x `gpus_per_node` GPUs running the trainer under torchrun (this
    pod needs no GPU; `labels` go on the TrainJob, e.g. Kueue's queue), copies node 0's log
    here, deletes the job, and records the result the job published to
    <store>/runs/<run_id>/baseline_trainer/."""
    from mammo_components.trainjob.step import run_step

    run_step(
        component="baseline_trainer", dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri,
        run_id=run_id, params=params, nodes=nodes, gpus_per_node=gpus_per_node, image=image, labels=labels,
        model=model, metrics=metrics,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def unfreeze_trainjob(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    nodes: int,
    gpus_per_node: int,
    image: str,
    labels: dict,
    init: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """The unfreeze trainer on several nodes, as a TrainJob like baseline_trainjob."""
    from mammo_components.trainjob.step import run_step

    run_step(
        component="unfreeze_trainer", dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri,
        run_id=run_id, params=params, nodes=nodes, gpus_per_node=gpus_per_node, image=image, labels=labels,
        init=init, model=model, metrics=metrics,
    )
