"""A trainer component's run against object storage, shared by the baseline and the unfreeze
trainer: fetch the inputs, resume from the run folder in storage, train (``mammo.engine``)
while mirroring every checkpoint to it, publish; and the KFP side of a trainer step (its Model
and Metrics artifacts, ``trainer_step``). Torch is imported by the trainer that runs, not here."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mammo import metric_registry, storage
from mammo.config import lookup_metric, stage_config
from mammo.console import setup_logging
from mammo.storage.integrity import sha256_file
from mammo.telemetry import Telemetry
from mammo_components.artifacts import log_numbers, write_artifact_json
from mammo_components.inputs import (
    StageInputs,
    fetch_checkpoint,
    fetch_stage_inputs,
    normalize_uri,
    parse_params,
)
from mammo_components.publishing import RunMirror, publish_outputs, sync_down
from mammo_components.telemetry import run_id_from_uri, telemetry_step

log = logging.getLogger(__name__)

HISTORY_NAME = "history.json"
#: The checkpoint a trainer names as its best (the pipeline's contract): best validation AUC.
BEST_NAME = "best_auc.pt"

#: ``train_baseline`` / ``train_unfreeze``: (config, resume, on_checkpoint, on_epoch) -> summary.
TrainFn = Callable[..., dict[str, Any]]


def pushed_values(val: Mapping[str, Any]) -> dict[str, float | None]:
    """The registry's pushed metrics from an epoch's validation figures, each at its level."""
    return {m.name: lookup_metric(val, f"{m.pushed}.{m.name}") for m in metric_registry.pushed()}


def push_epoch(telemetry: Telemetry | None, record: Mapping[str, Any]) -> None:
    """Push one epoch record of the engine (``on_epoch``): the loss and the pushed metrics."""
    if telemetry is None:
        return
    val = record["val"]
    telemetry.epoch(
        int(record["epoch"]),
        train_loss=record["train_loss"],
        val_loss=lookup_metric(val, "image.loss"),
        val=pushed_values(val),
        lr=float(record["lr"]),
        duration_s=float(record["epoch_seconds"]),
        images_per_s=float(record["images_per_second"]),
    )


def best_metrics(run_dir: Path, last: str) -> tuple[str, dict[str, float | None]]:
    """The checkpoint named as best (``best_auc.pt``: the first epoch with the highest
    validation AUC, as the engine keeps it; the last one when AUC was never defined) and the
    validation metrics of its epoch."""
    history = json.loads((run_dir / HISTORY_NAME).read_text())
    aucs = [lookup_metric(r["val"], "image.auc") for r in history]
    defined = [auc for auc in aucs if auc is not None]
    record, name = history[-1], last
    if defined and (run_dir / BEST_NAME).exists():
        record, name = history[aucs.index(max(defined))], BEST_NAME
    else:
        log.warning("validation AUC was never defined (one class in val?): naming %s as best", last)
    val = record["val"]
    return name, {**pushed_values(val), "loss": lookup_metric(val, "image.loss")}


def run_trainer(
    *,
    component: str,
    stage: str,
    train: TrainFn,
    dataset_uri: str,
    split_uri: str,
    run_uri: str,
    params: Mapping[str, Any] | None,
    workdir: str | Path | None,
    run_id: str | None,
    init_uri: str | None = None,
) -> dict[str, Any]:
    """Fetch inputs, resume from storage, train while mirroring, publish; return the result.

    Started by torchrun (several GPUs, several nodes) every process runs this: the first
    process of each node fetches the inputs while the others wait (then find them cached), and
    the main process alone resumes from, mirrors to and publishes in storage and pushes
    telemetry. The other processes return only their place in the job."""
    from mammo.engine.checkpoint import LAST
    from mammo.engine.distributed import node_leader_first
    from mammo.engine.runtime import runtime_for

    run_uri = normalize_uri(run_uri)
    parsed = parse_params(params)  # validated once; the stage's config built once, then localized
    planned = stage_config(parsed, stage, split="", out="")
    with runtime_for(planned) as runtime, telemetry_step(
        component, (run_id or run_id_from_uri(run_uri)) if runtime.is_main else None, quiet=not runtime.is_main
    ) as telemetry:

        def fetch() -> tuple[StageInputs, dict[str, str]]:
            inputs = fetch_stage_inputs(params=parsed, workdir=workdir, dataset_uri=dataset_uri, split_uri=split_uri)
            if init_uri is None:
                return inputs, {}
            init_path, init_sha = fetch_checkpoint(normalize_uri(init_uri), inputs.work)
            return inputs, {"init_uri": normalize_uri(init_uri), "init_sha256": init_sha, "init_path": str(init_path)}

        inputs, init = node_leader_first(runtime, fetch)
        run_dir = inputs.out_dir(run_uri)
        config = inputs.localize(planned, run_dir)
        if init:
            config = config.model_copy(update={"init": init.pop("init_path")})
        if not runtime.is_main:
            train(config, resume=True, runtime=runtime)
            return {"rank": runtime.rank, "world_size": runtime.world_size}
        sync_down(run_uri, run_dir)
        mirror = RunMirror(run_dir, run_uri, LAST)

        def on_epoch(record: dict[str, Any]) -> None:
            mirror.end_epoch()
            push_epoch(telemetry, record)

        summary = train(config, resume=True, on_checkpoint=mirror.on_checkpoint, on_epoch=on_epoch, runtime=runtime)
        best_name, metrics = best_metrics(run_dir, LAST)
        checkpoints = {
            path.name: {"uri": storage.join(run_uri, path.name), "sha256": sha256_file(path)}
            for path in sorted(run_dir.glob("*.pt"))
        }
        result = {
            "run_uri": run_uri,
            "best_uri": checkpoints[best_name]["uri"],
            "best_sha256": checkpoints[best_name]["sha256"],
            "checkpoints": checkpoints,
            "epochs_run": summary["epochs_run"],
            "stopped_early": summary["stopped_early"],
            "world_size": runtime.world_size,
            "metrics": metrics,
            **init,
        }
        publish_outputs(run_dir, run_uri, result, {"component": component, "metrics": metrics})
    return result


# --- the KFP side -----------------------------------------------------------------------------


def record_trainer_artifacts(result: Mapping[str, Any], model: Any, metrics: Any) -> None:
    """Fill a pipeline step's KFP ``Model`` artifact (metadata: the best checkpoint's URI,
    sha256 and validation metrics; file: the whole result) and ``Metrics`` from a trainer's
    result. Duck-typed on the artifacts, so this package does not depend on kfp."""
    model.metadata.update(
        {
            "uri": result["best_uri"],
            "sha256": result["best_sha256"],
            "metrics": result["metrics"],
            "epochs_run": result["epochs_run"],
            "stopped_early": result["stopped_early"],
        }
    )
    write_artifact_json(model, result)
    log_numbers(metrics, result["metrics"], "val.")


def trainer_step(entrypoint: Callable[..., dict[str, Any]], component: str, *, store_uri: str, run_id: str,
                 model: Any, metrics: Any, processes: int = 1, run_uri: str | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """A trainer's KFP step: log to stderr, train into ``run_uri`` (default
    ``<store>/runs/<run_id>/<component>``; a fold model has its own, ``mammo_components.folds``)
    (as ``processes`` torchrun processes, one per GPU, when more than one), record the
    artifacts; returns the result."""
    setup_logging()
    run_uri = run_uri or storage.run_uri(store_uri, run_id, component)
    if processes > 1:
        result = run_on_local_gpus(component, processes, run_uri=run_uri, run_id=run_id, **kwargs)
    else:
        result = entrypoint(out_uri=run_uri, **kwargs)
    record_trainer_artifacts(result, model, metrics)
    model.metadata.update({"run_id": run_id, "run_uri": run_uri})  # which run made it, and its folder
    return result


def run_on_local_gpus(component: str, processes: int, *, run_uri: str, run_id: str, params: Mapping[str, Any],
                      **uris: str) -> dict[str, Any]:
    """Run the trainer component as ``processes`` local torchrun workers (one per GPU of this
    pod) and return the result their main process published to ``run_uri``."""
    import subprocess
    import sys

    from mammo.errors import MammoError
    from mammo_components.publishing import read_result
    from mammo_components.spec import component_args

    args = component_args(component, uris={**uris, "out_uri": run_uri}, run_id=run_id, params=params)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "--max-restarts=0", "-m", f"mammo_components.{component}", *args]
    log.info("%s: %d processes (torchrun) on this pod's GPUs", component, processes)
    code = subprocess.run(command).returncode
    if code:
        raise MammoError(f"{component}: the {processes} training processes failed (exit code {code}); see their errors above")
    return read_result(run_uri)
