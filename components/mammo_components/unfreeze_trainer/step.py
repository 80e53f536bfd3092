"""The unfreeze trainer's KFP step (``unfreeze_trainer.component.unfreeze_trainer`` calls ``run_step``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mammo.errors import IntegrityError
from mammo.storage import stat
from mammo_components.training_run import trainer_step
from mammo_components.unfreeze_trainer.entrypoint import COMPONENT, run


def verify_init(metadata: Mapping[str, Any]) -> str:
    """The baseline's best checkpoint URI from its Model artifact's metadata, after checking
    that the object there still carries the sha256 the baseline recorded (``IntegrityError``
    otherwise: it was replaced since)."""
    uri, expected = metadata["uri"], metadata["sha256"]
    recorded = stat(uri).sha256
    if recorded != expected:
        raise IntegrityError(f"{uri}: sha256 {recorded} is not the baseline's {expected}")
    return uri


def run_step(
    *,
    dataset_uri: str,
    split_uri: str,
    store_uri: str,
    run_id: str,
    params: dict[str, Any],
    init: Any,
    model: Any,
    metrics: Any,
    processes: int = 1,
) -> dict[str, Any]:
    """Unfreeze from the baseline's ``init`` Model into ``<store>/runs/<run_id>/unfreeze_trainer``;
    fill the ``model`` and ``metrics`` artifacts."""
    return trainer_step(
        run, COMPONENT, store_uri=store_uri, run_id=run_id, model=model, metrics=metrics, processes=max(1, processes),
        dataset_uri=dataset_uri, split_uri=split_uri, params=params, init_uri=verify_init(init.metadata),
    )
