"""Evaluator component: scores checkpoints on val/test and names the best candidate."""

from mammo_components.spec import DATASET, SPLIT, ComponentSpec, Flag

SPEC = ComponentSpec(
    help="Evaluate checkpoints on val and test; publish metrics, predictions, plots, report.",
    description="The threshold is chosen on val and applied unchanged to test; with several "
    "checkpoints the best by the rank metric on val is named. Every figure comes with a "
    "patient-level bootstrap interval.",
    flags=(
        DATASET,
        SPLIT,
        Flag("--checkpoint", "checkpoint_uris", "URI", "Checkpoint to evaluate (repeatable).", repeat=True),
        Flag("--out", "out_uri", "URI", "Output folder: <store>/runs/<run-id>/evaluator."),
        Flag("--production", "production_uri", "URI",
             "Production pointer <store>/models/<name>/production: re-evaluate that model on the same "
             "splits and decide promotion with the promotion_* params (optional).", required=False),
    ),
)
