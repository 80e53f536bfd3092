"""A trainer's KFP step on several nodes (``trainjob.component.baseline_trainjob`` and
``unfreeze_trainjob`` call ``run_step``): the step's own pod needs no GPU; it launches the
trainer component as a TrainJob and fills the step's Model and Metrics artifacts from the
result that the job's rank 0 published to ``<store>/runs/<run-id>/<component>/``, exactly as
the single-pod trainer step does from its own result."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mammo import storage
from mammo.console import run_guarded, setup_logging
from mammo.errors import ArtifactNotFoundError, ConfigError
from mammo_components.publishing import read_result
from mammo_components.spec import component_args
from mammo_components.training_run import record_trainer_artifacts
from mammo_components.trainjob.launcher import (
    TrainJobError,
    TrainJobGoneError,
    job_name,
    launch_trainjob,
    passthrough_env,
)

log = logging.getLogger(__name__)

#: The launcher's variables handed on to the job's nodes when set (storage tuning, telemetry
#: timeout); endpoints and keys come from the TrainingRuntime's Secret and ConfigMap.
PASSTHROUGH_ENV = (
    "MAMMO_STORAGE_RETRY_SECONDS",
    "MAMMO_STORAGE_PART_SIZE_MIB",
    "MAMMO_STORAGE_WORKERS",
    "MAMMO_PUSHGATEWAY_TIMEOUT_SECONDS",
)
#: Default deadline of a TrainJob: RSNA-size runs take days on one node.
DEFAULT_TIMEOUT_HOURS = 7 * 24.0


def trainer_command(
    component: str, *, uris: Mapping[str, str], run_id: str, params: Mapping[str, Any]
) -> list[str]:
    """``torchrun -m mammo_components.<component> --flag=URI ... --run-id=ID --param=k=v ...``:
    the component's command line under the Trainer runtime's torchrun (``spec.component_args``)."""
    try:
        args = component_args(component, uris=uris, run_id=run_id, params=params)
    except ConfigError as err:
        raise TrainJobError(str(err)) from None
    return ["torchrun", "-m", f"mammo_components.{component}", *args]


def published_result(run_uri: str) -> dict[str, Any] | None:
    """The run folder's published result, or None while it has none."""
    try:
        return read_result(run_uri)
    except ArtifactNotFoundError:
        return None


def launch(
    component: str,
    *,
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict[str, Any],
    model: Any,
    metrics: Any,
    nodes: int,
    gpus_per_node: int,
    image: str,
    init: Any = None,
    labels: dict[str, str] | None = None,
    namespace: str = "",
    timeout_hours: float = DEFAULT_TIMEOUT_HOURS,
    poll_seconds: float = 15.0,
    client: Any = None,
) -> dict[str, Any]:
    """Train ``component`` (``baseline_trainer``, ``unfreeze_trainer``) into
    ``<store>/runs/<run_id>/<component>`` on ``nodes`` nodes x ``gpus_per_node`` GPUs; fill the
    ``model``/``metrics`` artifacts; return the trainer's result. A run folder that already
    holds a published result is reused without a job."""
    run_uri = storage.run_uri(store_uri, run_id, component)
    uris = {"dataset_uri": dataset_uri, "split_uri": split_uri, "out_uri": run_uri}
    if init is not None:
        from mammo_components.unfreeze_trainer.step import verify_init

        uris["init_uri"] = verify_init(init.metadata)
    name = job_name(run_id, component)
    result = published_result(run_uri)
    if result is not None:
        log.info("%s holds the finished run already: reusing it, no TrainJob", run_uri)
    else:
        try:
            launch_trainjob(
                name=name,
                command=trainer_command(component, uris=uris, run_id=run_id, params=params),
                image=image,
                nodes=nodes,
                gpus_per_node=gpus_per_node,
                timeout_s=timeout_hours * 3600,
                env=passthrough_env(PASSTHROUGH_ENV),
                labels={
                    **(labels or {}),
                    "app.kubernetes.io/part-of": "mammo-pipeline",
                    "app.kubernetes.io/component": component.replace("_", "-"),
                },
                namespace=namespace or None,
                poll_s=poll_seconds,
                client=client,
            )
        except TrainJobGoneError:
            if published_result(run_uri) is None:
                raise
            log.warning("TrainJob %s was deleted by someone else, but the run was published: using it", name)
        result = published_result(run_uri)
        if result is None:
            raise TrainJobError(
                f"TrainJob {name} completed, but {run_uri} holds no published result "
                "(manifest.json listing result.json): did rank 0 publish?"
            )
    record_trainer_artifacts(result, model, metrics)
    model.metadata.update({"run_id": run_id, "run_uri": run_uri})  # which run made it, and its folder
    model.metadata["trainjob"] = {"name": name, "nodes": nodes, "gpus_per_node": gpus_per_node}
    return result


def run_step(
    *,
    component: str,
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict[str, Any],
    nodes: int,
    gpus_per_node: int,
    image: str,
    model: Any,
    metrics: Any,
    init: Any = None,
    labels: dict[str, str] | None = None,
    **options: Any,
) -> None:
    """The KFP step (``trainjob.component.baseline_trainjob``/``unfreeze_trainjob``):
    ``launch`` with its errors as one line (``mammo: error: ...``) and a non-zero exit, never
    a traceback. ``options``: ``launch``'s namespace, timeout_hours, poll_seconds."""
    setup_logging()

    def call() -> None:
        launch(
            component, dataset_uri=dataset_uri, split_uri=split_uri, store_uri=store_uri, run_id=run_id,
            params=params, model=model, metrics=metrics, nodes=nodes, gpus_per_node=gpus_per_node,
            image=image, init=init, labels=labels, **options,
        )

    code = run_guarded(call)
    if code:
        raise SystemExit(code)
