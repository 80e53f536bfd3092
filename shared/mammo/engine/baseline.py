"""Baseline training: a few epochs on the balanced warm-up subset, then the full training split.

Adam with ReduceLROnPlateau on validation AUC and early stopping, as in the research code, with
the warm-up the research code built but never used actually wired in.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from mammo.config import TrainConfig, lookup_metric
from mammo.engine.checkpoint import CheckpointListener
from mammo.engine.runtime import Runtime
from mammo.engine.trainer import EpochListener, Trainer, plateau_scheduler
from mammo.models import build_model


class BaselineTrainer(Trainer):
    stage = "baseline"

    def build_model(self) -> torch.nn.Module:
        return build_model(self.config.model)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        opt = self.config.optimizer
        optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        self.scheduler = plateau_scheduler(optimizer, self.config.scheduler)
        return optimizer

    def train_rows(self, epoch: int) -> tuple[str, pd.DataFrame]:
        if epoch <= self.config.warmup_epochs:
            warmup = self.data.warmup_rows()
            if not warmup.empty:
                return "warmup", warmup
        return "full", self.data.rows("train")

    def after_validation(self, epoch: int, metrics: dict[str, Any]) -> None:
        value = lookup_metric(metrics, self.config.scheduler.metric)
        if value is not None:
            self.scheduler.step(value)

    def schedule_state(self) -> dict[str, Any]:
        return {"plateau": self.scheduler.state_dict()}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["plateau"])


def train_baseline(
    config: TrainConfig,
    resume: bool = False,
    on_checkpoint: CheckpointListener | None = None,
    on_epoch: EpochListener | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) baseline training; returns the run summary."""
    return BaselineTrainer(config, on_checkpoint, on_epoch, runtime).run(resume=resume)
