"""The pipeline's steps as components (import name ``mammo_components``).

Each component is a folder, found rather than listed (``spec.components``): an
``entrypoint.run(*, ...) -> dict`` that reads every input from object storage by URI and writes
every output back, returning (and storing as ``result.json``) a small machine-readable result;
its typed signature and docstring are the component's one declaration (``spec``). Beside it a
``component.py`` with the KFP component the pipeline calls, a ``step.py`` with what that step
does, and a ``README.md``. ``mammo component <name> ...`` (``cli``) runs them from the command
line. What they share: ``inputs`` (params, URIs, work folders, fetching),
``publishing`` (outputs, sync, run mirror), ``telemetry``, ``training_run`` (a trainer run against storage) and
``artifacts`` (KFP outputs). Importing this package does not import torch.
"""
