"""The baseline trainer's KFP step (``baseline_trainer.component.baseline_trainer`` calls ``run_step``)."""

from __future__ import annotations

from typing import Any

from mammo_components.baseline_trainer.entrypoint import COMPONENT, run
from mammo_components.training_run import trainer_step


def run_step(
    *, dataset_uri: str, split_uri: str, store_uri: str, run_id: str, params: dict[str, Any], model: Any, metrics: Any,
    processes: int = 1,
) -> dict[str, Any]:
    """Train into ``<store>/runs/<run_id>/baseline_trainer`` (resuming what is there), as
    ``processes`` torchrun processes when more than one (one per GPU); fill the ``model`` (best
    checkpoint's URI, sha256, metrics) and ``metrics`` artifacts."""
    return trainer_step(
        run, COMPONENT, store_uri=store_uri, run_id=run_id, model=model, metrics=metrics, processes=max(1, processes),
        dataset_uri=dataset_uri, split_uri=split_uri, params=params,
    )
