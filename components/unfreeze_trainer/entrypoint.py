"""Unfreeze trainer: gradual unfreezing from a baseline checkpoint fetched by URI (verified by
sha256), with the baseline trainer's storage and resume behaviour
(see ``mammo_components.training_run.run_trainer``)."""

from __future__ import annotations

from typing import Any

from mammo_components.training_run import run_trainer

COMPONENT = "unfreeze_trainer"


def run(
    *,
    dataset_uri: str,
    split_uri: str,
    init_uri: str,
    run_uri: str,
    params: dict[str, Any],
    workdir: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) gradual unfreezing from ``init_uri`` into ``run_uri``; return the result."""
    from mammo.engine.unfreeze import train_unfreeze

    return run_trainer(
        component=COMPONENT,
        stage="unfreeze",
        train=train_unfreeze,
        dataset_uri=dataset_uri,
        split_uri=split_uri,
        run_uri=run_uri,
        params=params,
        workdir=workdir,
        run_id=run_id,
        init_uri=init_uri,
    )
