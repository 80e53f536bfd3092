"""Promoter: replaces models/<name>/production/ with the pipeline's best candidate when it beats
the current production model (see README.md)."""

from mammo_components.spec import ComponentSpec

#: Flags of its own (``cli``): it reads an evaluator's result instead of dataset and split.
SPEC = ComponentSpec(
    help="Promote an evaluator run's best candidate to production.",
    cli="mammo_components.promoter.cli",
)
