"""The pipeline's steps as components (import name ``mammo_components``).

Each component is a folder with an ``entrypoint.run(**kwargs) -> dict`` that reads every input
from object storage by URI and writes every output back, returning (and storing as
``result.json``) a small machine-readable result, a ``step.run_step`` that the pipeline's KFP
step calls, and a ``README.md``. ``mammo component <name> ...`` (``cli``) runs them from the
command line. What they share: ``inputs`` (params, URIs, work folders, fetching),
``publishing`` (outputs, sync, run mirror), ``telemetry``, ``trainer`` (the two trainers) and
``artifacts`` (KFP outputs). Importing this package does not import torch.
"""

#: The components, in pipeline order: a new component is its folder plus its name here.
COMPONENTS = ("preprocessor", "split_builder", "baseline_trainer", "unfreeze_trainer", "evaluator", "promoter", "scorer")
