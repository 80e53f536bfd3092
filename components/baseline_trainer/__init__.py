"""Baseline trainer component: warm-up, full data, early stopping; resumable from storage."""

from mammo_components.spec import DATASET, SPLIT, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Baseline training; checkpoints go to --out as they are saved.",
    description="Warm-up, then full data, early stopping. Restarted with the same --out it resumes "
    "from <run>/last.pt in storage.",
    flags=(DATASET, SPLIT, Flag("--out", "run_uri", "URI", "Output folder: <store>/runs/<run-id>/baseline_trainer.")),
)
