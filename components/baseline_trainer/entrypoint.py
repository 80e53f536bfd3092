"""Baseline trainer: warm-up on the balanced subset, then the full training split, with early
stopping; every checkpoint goes to object storage as it is saved, and a restarted pod resumes
from the run's ``last.pt`` in storage (see ``mammo_components.training_run.run_trainer``)."""

from __future__ import annotations

from typing import Any

from mammo_components.training_run import run_trainer

COMPONENT = "baseline_trainer"


def run(
    *,
    dataset_uri: str,
    split_uri: str,
    run_uri: str,
    params: dict[str, Any],
    workdir: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) the baseline into ``run_uri``; return the result (see README)."""
    from mammo.engine.baseline import train_baseline

    return run_trainer(
        component=COMPONENT,
        stage="baseline",
        train=train_baseline,
        dataset_uri=dataset_uri,
        split_uri=split_uri,
        run_uri=run_uri,
        params=params,
        workdir=workdir,
        run_id=run_id,
    )
