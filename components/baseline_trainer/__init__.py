"""Baseline trainer component: warm-up, full data, early stopping; resumable from storage."""

from mammo_components.spec import DATASET, SPLIT, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Baseline training; checkpoints go to --run as they are saved.",
    description="Warm-up, then full data, early stopping. Restarted with the same --run it resumes "
    "from <run>/last.pt in storage.",
    flags=(DATASET, SPLIT, Flag("--run", "run_uri", "URI", "Output folder: <store>/runs/<run-id>/baseline_trainer.")),
)
