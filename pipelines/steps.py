"""The pipeline's steps as KFP lightweight Python components: the five of every run (split
builder, baseline trainer, unfreeze trainer, evaluator, promoter), the trainers' two TrainJob
launchers, which stand in for them when a trainer runs on several nodes, and the four steps that
prepare the dataset first (the preprocessor's plan, shards and merge for DICOM; ``png_dataset``
otherwise): eleven in all.

Each function is a thin adapter: its body imports the component's ``step.run_step``
(``mammo_components``, installed in the project's images and in the local virtual environment),
calls it with the step's inputs and outputs, each by name (a call that readers and tools can
follow), and returns what it returns. The logic - running
the component with URIs in object storage, deriving the run id, filling the
Dataset/Model/Metrics/ClassificationMetrics/HTML artifacts for the KFP UI - lives in those
ordinary, unit-tested functions. KFP copies each function's source into the compiled pipeline,
so every import happens inside the body, and
``install_kfp_package=False`` because the images already contain the KFP SDK. The images named
here are placeholders; each compile profile sets the real ones per task
(``PipelineTask.set_container_image``). Why this form runs both in the cluster and under
kfp.local: components/README.md, "How the components run in KFP".
"""

import inspect
from collections.abc import Callable
from typing import Any, List, NamedTuple, TypeVar

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output
from kfp.dsl.types.type_annotations import is_artifact_wrapped_in_Output

from mammo_pipelines.parameters import pipeline_parameters

#: Placeholder images, replaced by the compile profile (images.env).
TRAIN_IMAGE = "mammo-train"
EVAL_IMAGE = "mammo-eval"

#: What each step input and output is, for the KFP UI: the pipeline parameters' own
#: descriptions, and the values the steps hand each other.
STEP_INPUTS = {
    **{p.name: p.help for p in pipeline_parameters(dataset_uri="", with_gpus=True)},
    "dataset_uri": "The dataset the step reads: the pipeline's dataset_uri, or for DICOM input the PNG dataset the "
    "preprocessor wrote.",
    "split_uri": "The split builder's split folder (split.csv, split.json) in the store.",
    "run_id": "The run's id (a digest of data, split, parameters and code) and folder runs/<run_id>/.",
    "params": "The run's training values from the split builder (PipelineParams, JSON).",
    "processes": "torchrun processes in this pod, one per GPU (1: in the step's own process).",
    "code_version": "The images and code the run id includes.",
    "kfp_run_id": "KFP's id of this run, recorded for lineage (never part of the run id).",
    "nodes": "Nodes of the TrainJob.", "gpus_per_node": "GPUs per node of the TrainJob.",
    "image": "The training image the TrainJob runs.", "labels": "Labels of the TrainJob (Kueue's queue and priority).",
    "init": "The baseline's Model: the checkpoint gradual unfreezing starts from (URI and sha256 in its metadata).",
    "model": "The trainer's best checkpoint (metadata: URI, sha256, val metrics, run id and folder).",
    "metrics": "The step's figures (KFP Metrics).",
    "baseline": "The baseline trainer's Model (a candidate).", "unfreeze": "The unfreeze trainer's Model (a candidate).",
    "best": "The best candidate on val with its test figures, intervals, report and promotion verdict.",
    "classification": "Test ROC curve and confusion matrix at the val threshold (breast level).",
    "report": "The self-contained HTML evaluation report.",
    "candidate": "The evaluator's best Model with its verdict.",
    "production": "The promotion decision and, when promoted, the production model's version.",
    "dataset_fingerprint": "Fingerprint of the dataset the split was built from.",
    "split": "The split (metadata: URI, sha256, fingerprint, counts, run id).",
    "shard": "This pod's shard of the DICOM files.", "shards": "How many shards the files are divided into.",
    "parts": "The shards' results, collected.",
    "fold": "This fold's index (0 to folds - 1): the fold of training patients it holds out.",
    "fold_models": "folds > 1: each fold's baseline and unfreeze best checkpoints (URI, sha256), in fold order; "
    "empty with folds 1.",
    "fold_baselines": "The fold baseline trainers' Models, collected from the ParallelFor.",
    "fold_unfreezes": "The fold unfreeze trainers' Models, collected from the ParallelFor.",
    "table": "The CSV of dataset_uri to score; empty: the one of test.csv and train.csv there.",
    "scores": "Where the scores are (breasts.csv, images.csv) and their counts.",
    "runtime": "How the network runs: eager (PyTorch) or onnx (ONNX Runtime on the CPU, from the production "
               "model's verified ONNX file: within 1e-4 of eager, several times faster on CPU nodes; README, "
               "Scoring on CPU nodes).",
}
StepFunction = TypeVar("StepFunction", bound=Callable[..., Any])


def described(func: StepFunction) -> StepFunction:
    """Add an ``Args`` section from ``STEP_INPUTS`` to a step function's docstring (KFP puts it
    in the component's inputs and outputs); an undescribed input fails at import."""
    signature = inspect.signature(func)
    inputs = [n for n, p in signature.parameters.items() if not is_artifact_wrapped_in_Output(p.annotation)]
    outputs = [n for n, p in signature.parameters.items() if is_artifact_wrapped_in_Output(p.annotation)]
    outputs += list(getattr(signature.return_annotation, "_fields", ()))  # a NamedTuple's output parameters
    missing = [name for name in inputs + outputs if name not in STEP_INPUTS]
    if missing:
        raise TypeError(f"{func.__name__}: no description in STEP_INPUTS for {', '.join(missing)}")

    def section(title: str, names: list[str]) -> str:
        lines = "".join(f"    {name}: {' '.join(STEP_INPUTS[name].split())}\n" for name in names)
        return f"\n\n{title}:\n{lines}" if names else ""

    # Inputs under Args, outputs under Returns: where KFP's docstring parser looks for each.
    func.__doc__ = inspect.cleandoc(func.__doc__ or "") + section("Args", inputs) + section("Returns", outputs)
    return func


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def preprocess_plan(
    dataset_uri: str,
    store_uri: str,
    image_size: str,
    preprocess_shards: int,
    preprocess_set: list,
) -> list:
    """dataset_format dicom: checks the preprocessing settings and that the dataset holds DICOM
    files (in seconds, before any shard starts); returns the shard indices for the ParallelFor."""
    from mammo_components.preprocessor.step import run_plan_step

    return run_plan_step(
        dataset_uri=dataset_uri, store_uri=store_uri, image_size=image_size,
        preprocess_shards=preprocess_shards, preprocess_set=preprocess_set,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def preprocessor(
    dataset_uri: str,
    store_uri: str,
    image_size: str,
    preprocess_set: list,
    shard: int,
    shards: int,
) -> dict:
    """One shard of the DICOM conversion: decodes, windows, crops and resizes its share of the
    files that are new or changed into <store>/datasets/<name>-<hash>/png-<HxW>-<settings>/,
    recording its progress there (a retried pod goes on where it stopped). Never cached."""
    from mammo_components.preprocessor.step import run_step

    return run_step(
        dataset_uri=dataset_uri, store_uri=store_uri, image_size=image_size, preprocess_set=preprocess_set,
        shard=shard, shards=shards,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def preprocess_merge(
    dataset_uri: str,
    store_uri: str,
    image_size: str,
    preprocess_set: list,
    parts: list,
) -> str:
    """Writes the PNG dataset's train.csv, preprocess.json and manifest from what the shards
    recorded; returns its URI, the dataset the split builder and the trainers read."""
    from mammo_components.preprocessor.step import run_merge_step

    return run_merge_step(
        dataset_uri=dataset_uri, store_uri=store_uri, image_size=image_size, preprocess_set=preprocess_set,
        parts=parts,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def png_dataset(dataset_uri: str) -> str:
    """dataset_format png: checks that the dataset's train.csv exists and hands the URI on."""
    from mammo_components.preprocessor.step import run_png_step

    return run_png_step(dataset_uri=dataset_uri)


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
    it shows in KFP only)."""
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


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def evaluator(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    promotion_rule: str,
    promotion_min: float,
    promotion_min_cancers: int,
    kfp_run_id: str,
    fold_models: list,
    baseline: Input[Model],
    unfreeze: Input[Model],
    best: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
) -> bool:
    """Evaluates both trainers' best checkpoints (and with folds > 1 the fold models and their
    ensemble) on val and test, publishes the report, and
    returns whether the best candidate should replace the production model (its verdict, also
    in the ``best`` Model's metadata, which the promoter step acts on). Never cached: the answer depends on the current production model."""
    from mammo_components.evaluator.step import run_step

    return run_step(
        dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri, run_id=run_id, params=params,
        model_name=model_name, promotion_metric=promotion_metric, promotion_margin=promotion_margin,
        promotion_rule=promotion_rule, promotion_min=promotion_min, promotion_min_cancers=promotion_min_cancers,
        kfp_run_id=kfp_run_id, fold_models=fold_models, baseline=baseline, unfreeze=unfreeze,
        best=best, metrics=metrics, classification=classification, report=report,
    )


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def promoter(
    store_uri: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    promotion_rule: str,
    promotion_min: float,
    promotion_min_cancers: int,
    dataset_fingerprint: str,
    candidate: Input[Model],
    production: Output[Model],
):
    """Records the promotion decision for the evaluator's best candidate and, when it beats
    production, copies it (verified) to <store>/models/<name>/production/ and switches the
    production manifest under the promotion lock (see the promoter's README). Runs after every
    evaluation; never cached."""
    from mammo_components.promoter.step import run_step

    run_step(
        store_uri=store_uri, model_name=model_name, promotion_metric=promotion_metric,
        promotion_margin=promotion_margin, promotion_rule=promotion_rule, promotion_min=promotion_min,
        promotion_min_cancers=promotion_min_cancers, dataset_fingerprint=dataset_fingerprint, candidate=candidate,
        production=production,
    )


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
    """Collects the fold trainers' Models into the evaluator's fold_models (one entry per fold)."""
    from mammo_components.folds.step import run_members_step

    return run_members_step(fold_baselines=fold_baselines, fold_unfreezes=fold_unfreezes)


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
@described
def no_fold_models() -> list:
    """folds 1: no fold models (the other branch of the folds choice, so the evaluator always
    gets its fold_models)."""
    from mammo_components.folds.step import run_no_folds_step

    return run_no_folds_step()
