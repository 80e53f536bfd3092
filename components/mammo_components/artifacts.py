"""The KFP side of a step: filling its output artifacts from a component's result.

Duck-typed on KFP's artifact classes (``metadata``, ``path``, ``log_metric``,
``log_roc_curve``, ``log_confusion_matrix``), so this package does not depend on kfp and these
functions are tested without it. The pipeline's steps (each folder's ``component.py``) call each
component's ``step.run_step``, which uses them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_artifact_json(artifact: Any, payload: Any) -> None:
    """The file of a KFP output artifact (``artifact.path``): ``payload`` as indented JSON."""
    Path(artifact.path).write_text(json.dumps(payload, indent=2))


def log_numbers(metrics: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """``metrics.log_metric(prefix + name, value)`` for every number of ``values``, nested
    mappings flattened with dots (``val.breast.auc``); None, booleans and text are left out
    (KFP Metrics hold numbers only)."""
    for name, value in values.items():
        if isinstance(value, Mapping):
            log_numbers(metrics, value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(f"{prefix}{name}", float(value))
