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
    out_uri: str,
    params: dict[str, Any],
    workdir: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Gradual unfreezing from a baseline checkpoint.

    Starts from `init_uri` (verified by sha256); checkpoints go to `out_uri` as they are saved;
    restarted with the same `out_uri` it resumes from `<out_uri>/last.pt` in storage. Returns the
    result (README: Result).

    Args:
        dataset_uri: As for the baseline trainer: `train.csv` and the PNGs.
        split_uri: As for the baseline trainer (the same split).
        init_uri: Starting checkpoint, normally the baseline trainer's `best_uri`.
        out_uri: Output folder, `<store>/runs/<run-id>/unfreeze_trainer`. Files already there are the run
            to resume.
        params: `PipelineParams`: as for the baseline, with `unfreeze_epochs`, `unfreeze_lr` and
            `unfreeze_set` (any `UnfreezeConfig` key, e.g. `unfreeze.start_epoch=5`). The network comes
            from the starting checkpoint.
        workdir: Local cache and scratch (default: `$MAMMO_CACHE_DIR` or `~/.cache/mammo`).
        run_id: Telemetry label (default: `<run-id>` of `out_uri`).
    """
    from mammo.engine.unfreeze import train_unfreeze

    return run_trainer(
        component=COMPONENT,
        stage="unfreeze",
        train=train_unfreeze,
        dataset_uri=dataset_uri,
        split_uri=split_uri,
        run_uri=out_uri,
        params=params,
        workdir=workdir,
        run_id=run_id,
        init_uri=init_uri,
    )
