"""What the baseline and the unfreeze trainer share: fetch the inputs, resume from the run
folder in storage, train while mirroring every checkpoint to it, publish; and the KFP side of
a trainer step (its Model and Metrics artifacts, ``trainer_step``). Torch is imported by the
trainer that runs, not here."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mammo import storage
from mammo.config import lookup_metric
from mammo.console import setup_logging
from mammo.storage.integrity import sha256_file
from mammo.telemetry import Telemetry
from mammo_components.artifacts import log_numbers, write_artifact_json
from mammo_components.inputs import fetch_checkpoint, fetch_stage_inputs, normalize_uri
from mammo_components.publishing import RunMirror, publish_outputs, sync_down
from mammo_components.telemetry import run_id_from_uri, telemetry_step

log = logging.getLogger(__name__)

HISTORY_NAME = "history.json"
#: The checkpoint a trainer names as its best (the pipeline's contract): best validation AUC.
BEST_NAME = "best_auc.pt"

#: ``train_baseline`` / ``train_unfreeze``: (config, resume, on_checkpoint, on_epoch) -> summary.
TrainFn = Callable[..., dict[str, Any]]


def push_epoch(telemetry: Telemetry | None, record: Mapping[str, Any]) -> None:
    """Push one epoch record of the engine (``on_epoch``); image-level val metrics, breast pF1."""
    if telemetry is None:
        return
    val = record["val"]
    telemetry.epoch(
        int(record["epoch"]),
        train_loss=record["train_loss"],
        val_loss=lookup_metric(val, "image.loss"),
        val_auc=lookup_metric(val, "image.auc"),
        val_pr_auc=lookup_metric(val, "image.pr_auc"),
        val_pf1=lookup_metric(val, "breast.pf1"),
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
    return name, {
        "auc": lookup_metric(val, "image.auc"),
        "pr_auc": lookup_metric(val, "image.pr_auc"),
        "pf1": lookup_metric(val, "breast.pf1"),
        "loss": lookup_metric(val, "image.loss"),
    }


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
    """Fetch inputs, resume from storage, train while mirroring, publish; return the result."""
    from mammo.engine.checkpoint import LAST

    with telemetry_step(component, run_id or run_id_from_uri(run_uri)) as telemetry:
        inputs = fetch_stage_inputs(params=params, workdir=workdir, dataset_uri=dataset_uri, split_uri=split_uri)
        run_uri = normalize_uri(run_uri)
        run_dir = inputs.out_dir(run_uri)
        sync_down(run_uri, run_dir)
        config = inputs.config(stage, run_dir)
        init: dict[str, str] = {}
        if init_uri is not None:
            init_uri = normalize_uri(init_uri)
            init_path, init_sha = fetch_checkpoint(init_uri, inputs.work)
            config = config.model_copy(update={"init": str(init_path)})
            init = {"init_uri": init_uri, "init_sha256": init_sha}
        mirror = RunMirror(run_dir, run_uri, LAST)

        def on_epoch(record: dict[str, Any]) -> None:
            mirror.end_epoch()
            push_epoch(telemetry, record)

        summary = train(config, resume=True, on_checkpoint=mirror.on_checkpoint, on_epoch=on_epoch)
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
                 model: Any, metrics: Any, **kwargs: Any) -> dict[str, Any]:
    """A trainer's KFP step: log to stderr, train into ``<store>/runs/<run_id>/<component>``,
    record the artifacts; returns the result."""
    setup_logging()
    result = entrypoint(run_uri=storage.run_uri(store_uri, run_id, component), **kwargs)
    record_trainer_artifacts(result, model, metrics)
    return result
