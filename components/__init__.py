"""The pipeline's steps as components (import name ``mammo_components``).

Each component is a folder with an ``entrypoint.run(**kwargs) -> dict`` that reads every input
from object storage by URI and writes every output back, returning (and storing as
``result.json``) a small machine-readable result: split builder, baseline trainer, unfreeze
trainer, evaluator and promoter. ``mammo component <name> ...`` (``cli``) runs them from the
command line; ``common`` holds what they share. Importing this package does not import torch.
"""
