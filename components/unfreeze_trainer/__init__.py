"""Unfreeze trainer component: gradual unfreezing from a baseline checkpoint URI."""

from mammo_components.spec import DATASET, SPLIT, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Gradual unfreezing from a baseline checkpoint.",
    description="Starts from --init (verified by sha256); checkpoints go to --out as they are saved; "
    "restarted with the same --out it resumes from <out>/last.pt in storage.",
    flags=(
        DATASET,
        SPLIT,
        Flag("--init", "init_uri", "URI", "Starting checkpoint, e.g. the baseline's best_uri."),
        Flag("--out", "run_uri", "URI", "Output folder: <store>/runs/<run-id>/unfreeze_trainer."),
    ),
)
