"""Stand-ins for KFP's artifact classes: what the components' ``step`` functions use of them
(``metadata``, ``path``, ``log_metric``, ``log_roc_curve``, ``log_confusion_matrix``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class FakeArtifact:
    """An Input/Output artifact: metadata and a file path."""

    def __init__(self, path: Path, metadata: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.metrics: dict[str, float] = {}
        self.roc: tuple[list[float], list[float], list[float]] | None = None
        self.confusion: tuple[list[str], list[list[int]]] | None = None

    def log_metric(self, name: str, value: float) -> None:
        assert isinstance(value, float)
        self.metrics[name] = value

    def log_roc_curve(self, fpr: list[float], tpr: list[float], thresholds: list[float]) -> None:
        self.roc = (fpr, tpr, thresholds)

    def log_confusion_matrix(self, labels: list[str], matrix: list[list[int]]) -> None:
        self.confusion = (labels, matrix)

    def read_json(self) -> Any:
        return json.loads(Path(self.path).read_text())
