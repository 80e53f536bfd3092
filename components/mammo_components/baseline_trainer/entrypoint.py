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
    out_uri: str,
    params: dict[str, Any],
    workdir: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Baseline training; checkpoints go to --out as they are saved.

    Warm-up, then full data, early stopping. Restarted with the same `out_uri` it resumes from
    `<out_uri>/last.pt` in storage. Returns the result (README: Result).

    Args:
        dataset_uri: Dataset folder: `train.csv` and the PNGs (any RSNA layout). The table and the PNG
            of every row are fetched, in parallel, into the local cache.
        split_uri: A published split (the split builder's `split_uri`).
        out_uri: Output folder, `<store>/runs/<run-id>/baseline_trainer`. Files already there are the run
            to resume.
        params: `PipelineParams`: `backbone`, `weights`, `in_channels`, `image_size`, `batch_size`,
            `workers`, `device`, `seed`, `loss`, `augment`, `baseline_epochs`, `warmup_epochs`,
            `baseline_lr`, and `baseline_set` (any `TrainConfig` key, e.g. `early_stopping.patience=3`,
            `checkpoint.top_k=5`).
        workdir: Local cache and scratch (default: `$MAMMO_CACHE_DIR` or `~/.cache/mammo`).
        run_id: Telemetry label (default: `<run-id>` of `out_uri`).
    """
    from mammo.engine.baseline import train_baseline

    return run_trainer(
        component=COMPONENT,
        stage="baseline",
        train=train_baseline,
        dataset_uri=dataset_uri,
        split_uri=split_uri,
        run_uri=out_uri,
        params=params,
        workdir=workdir,
        run_id=run_id,
    )
