"""The pipeline's five steps as KFP lightweight Python components (and the trainers' TrainJob
launchers, which stand in for them when a trainer runs on several nodes).

Each function is a thin adapter: it imports the component's entrypoint (``mammo_components``,
installed in the project's images and in the local virtual environment), calls it with URIs in
object storage, and turns its result into KFP outputs (parameters for the next steps, and
Dataset/Model/Metrics/ClassificationMetrics/HTML artifacts for the KFP UI). KFP copies each
function's source into the compiled pipeline, so every import happens inside the body, and
``install_kfp_package=False`` because the images already contain the KFP SDK. The images named
here are placeholders; each compile profile sets the real ones per task
(``PipelineTask.set_container_image``). Why this form runs both in the cluster and under
kfp.local: components/README.md, "How the components run in KFP".
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

#: Placeholder images, replaced by the compile profile (images.env).
TRAIN_IMAGE = "mammo-train"
EVAL_IMAGE = "mammo-eval"


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def split_builder(
    dataset_uri: str,
    store_uri: str,
    code_version: str,
    promotion_metric: str,
    promotion_margin: float,
    image_size: int,
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
    baseline_epochs: int,
    warmup_epochs: int,
    baseline_lr: float,
    unfreeze_epochs: int,
    unfreeze_lr: float,
    threshold_metric: str,
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
    import hashlib
    import json
    import logging
    import time
    from collections import namedtuple
    from pathlib import Path

    import mammo
    import mammo_components
    from mammo.config import PipelineParams
    from mammo.storage import open_store
    from mammo.telemetry import Telemetry
    from mammo_components.promoter.entrypoint import check_rule
    from mammo_components.split_builder.entrypoint import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    check_rule(promotion_metric, promotion_margin)
    params = PipelineParams.model_validate({
        "data": dataset_uri, "image_size": image_size, "backbone": backbone,
        "weights": weights or None, "in_channels": in_channels, "batch_size": batch_size,
        "workers": workers, "device": device, "seed": seed, "val_frac": val_frac,
        "test_frac": test_frac, "warmup_ratio": warmup_ratio, "loss": loss, "augment": augment,
        "baseline_epochs": baseline_epochs, "warmup_epochs": warmup_epochs,
        "baseline_lr": baseline_lr, "unfreeze_epochs": unfreeze_epochs, "unfreeze_lr": unfreeze_lr,
        "threshold_metric": threshold_metric, "rank_metric": rank_metric,
        "baseline_set": baseline_set, "unfreeze_set": unfreeze_set, "evaluate_set": evaluate_set,
    }).model_dump(mode="json", exclude_none=True)  # KFP struct parameters cannot hold null
    result = run(dataset_uri=dataset_uri, store_uri=store_uri, params=params)
    objects = [[o.uri, o.size, o.etag] for o in open_store(dataset_uri).list_info(dataset_uri)]
    code = hashlib.sha256()
    for package in (mammo, mammo_components):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".html", ".yaml")):
            code.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    identity = {
        "objects": objects, "split": result["split_sha256"], "params": params,
        "code": [code_version, code.hexdigest()],
    }
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    Telemetry("split_builder", run_id).finish(True, time.monotonic() - started)
    split.metadata.update({
        "uri": result["split_uri"], "sha256": result["split_sha256"],
        "dataset_fingerprint": result["dataset_fingerprint"], "reused": result["reused"],
        "counts": result["counts"], "run_id": run_id,
    })
    with open(split.path, "w") as f:
        json.dump(result, f, indent=2)
    outputs = namedtuple("SplitOutputs", ["split_uri", "dataset_fingerprint", "run_id", "params"])
    return outputs(result["split_uri"], result["dataset_fingerprint"], run_id, params)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def baseline_trainer(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Baseline training; checkpoints go to <store>/runs/<run_id>/baseline_trainer/ as they are
    saved, and a restarted pod resumes from the last one there."""
    import logging

    from mammo.storage import run_uri
    from mammo_components.baseline_trainer.entrypoint import run
    from mammo_components.common import record_trainer_artifacts

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(
        dataset_uri=dataset_uri, split_uri=split_uri, params=params,
        run_uri=run_uri(store_uri, run_id, "baseline_trainer"),
    )
    record_trainer_artifacts(result, model, metrics)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def unfreeze_trainer(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    init: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Gradual unfreezing from the baseline's best checkpoint (its URI and sha256 travel in the
    Model artifact's metadata); same storage and resume behaviour as the baseline."""
    import logging

    from mammo.errors import IntegrityError
    from mammo.storage import run_uri, stat
    from mammo_components.common import record_trainer_artifacts
    from mammo_components.unfreeze_trainer.entrypoint import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recorded = stat(init.metadata["uri"]).sha256
    if recorded != init.metadata["sha256"]:
        raise IntegrityError(f"{init.metadata['uri']}: sha256 {recorded} is not the baseline's {init.metadata['sha256']}")
    result = run(
        dataset_uri=dataset_uri, split_uri=split_uri, init_uri=init.metadata["uri"], params=params,
        run_uri=run_uri(store_uri, run_id, "unfreeze_trainer"),
    )
    record_trainer_artifacts(result, model, metrics)


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def baseline_trainjob(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    nodes: int,
    gpus_per_node: int,
    image: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """The baseline trainer on several nodes (trainer_nodes > 1): launches a Kubeflow Trainer
    TrainJob of `nodes` nodes x `gpus_per_node` GPUs running the trainer under torchrun (this
    pod needs no GPU), copies node 0's log here, deletes the job, and records the result the
    job published to <store>/runs/<run_id>/baseline_trainer/."""
    args = dict(locals())  # the step's inputs and outputs, as run_step takes them
    from mammo_components.trainjob.step import run_step

    run_step(component="baseline_trainer", **args)


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def unfreeze_trainjob(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    nodes: int,
    gpus_per_node: int,
    image: str,
    init: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """The unfreeze trainer on several nodes, as a TrainJob like baseline_trainjob."""
    args = dict(locals())  # the step's inputs and outputs, as run_step takes them
    from mammo_components.trainjob.step import run_step

    run_step(component="unfreeze_trainer", **args)


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def evaluator(
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    baseline: Input[Model],
    unfreeze: Input[Model],
    best: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
) -> bool:
    """Evaluates both trainers' best checkpoints on val and test, publishes the report, and
    returns whether the best candidate should replace the production model (the pipeline's
    dsl.If gate). Never cached: the answer depends on the current production model."""
    import json
    import logging

    from mammo.storage import get_bytes, run_uri
    from mammo_components.evaluator.entrypoint import run
    from mammo_components.promoter.entrypoint import decide

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(
        dataset_uri=dataset_uri, split_uri=split_uri, params=params,
        checkpoint_uris=[baseline.metadata["uri"], unfreeze.metadata["uri"]],
        out_uri=run_uri(store_uri, run_id, "evaluator"),
    )
    decision = decide(
        candidate_metrics=result["metrics"], candidate_sha256=result["best_sha256"],
        store_uri=store_uri, model_name=model_name, metric=promotion_metric, margin=promotion_margin,
    )
    for split_name, levels in result["metrics"].items():
        for level, values in levels.items():
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics.log_metric(f"{split_name}.{level}.{name}", float(value))
    roc = result["roc"]
    if roc["fpr"]:
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    matrix = result["confusion_matrix"]
    classification.log_confusion_matrix(matrix["labels"], matrix["matrix"])
    with open(report.path, "wb") as f:
        f.write(get_bytes(result["report_uri"]))
    best.metadata.update({
        "uri": result["best_uri"], "sha256": result["best_sha256"], "name": result["best_name"],
        "threshold": result["threshold"], "metrics": result["metrics"], "report_uri": result["report_uri"],
        "evaluation_uri": result["out_uri"], "run_id": run_id, "decision": decision,
    })
    with open(best.path, "w") as f:
        json.dump({**result, "decision": decision}, f, indent=2)
    return bool(decision["promote"])


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def promoter(
    store_uri: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    dataset_fingerprint: str,
    candidate: Input[Model],
    production: Output[Model],
):
    """Copies the winning checkpoint to <store>/models/<name>/production/ and switches the
    production manifest in one write (see the promoter's README). Never cached."""
    import json
    import logging

    from mammo_components.promoter.entrypoint import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    meta = candidate.metadata
    result = run(
        candidate_uri=meta["uri"], candidate_sha256=meta["sha256"], candidate_metrics=meta["metrics"],
        store_uri=store_uri, model_name=model_name, metric=promotion_metric, margin=promotion_margin,
        provenance={
            "run_id": meta["run_id"], "candidate_name": meta["name"], "threshold": meta["threshold"],
            "report_uri": meta["report_uri"], "dataset_fingerprint": dataset_fingerprint,
        },
    )
    production.metadata.update(result)
    with open(production.path, "w") as f:
        json.dump(result, f, indent=2)
