"""Evaluator component: scores checkpoints on val/test and names the best candidate."""

from mammo_components.spec import DATASET, SPLIT, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Evaluate checkpoints on val and test; publish metrics, predictions, plots, report.",
    description="The threshold is chosen on val and applied unchanged to test; with several "
    "checkpoints the best by the rank metric on val is named.",
    flags=(
        DATASET,
        SPLIT,
        Flag("--checkpoint", "checkpoint_uris", "URI", "Checkpoint to evaluate (repeatable).", repeat=True),
        Flag("--out", "out_uri", "URI", "Output folder: <store>/runs/<run-id>/evaluator."),
    ),
)
