"""Early stopping on a validation metric, with a minimum epoch before it may stop."""

from __future__ import annotations

from typing import Any, Literal


class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs, but never
    before ``start_epoch``. State is a plain dict so it survives in checkpoints."""

    def __init__(self, mode: Literal["min", "max"], patience: int, min_delta: float, start_epoch: int) -> None:
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.start_epoch = start_epoch
        self.best: float | None = None
        self.bad_epochs = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, epoch: int, value: float | None) -> bool:
        """Record one epoch's value (None = undefined, counts as no improvement); True = stop."""
        if value is not None and self._improved(value):
            self.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return epoch >= self.start_epoch and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
