"""Gradual unfreezing ("SAFE-UNFREEZE") from a trained checkpoint.

Only the head trains at first (Adam + cosine annealing). Once validation has fallen ``drop``
below its best after ``start_epoch``, and ``cooldown`` epochs after the previous step, the next
block of ``unfreeze.steps`` joins with its own learning rate and the head's rate changes. After
the last block's cooldown the schedule becomes ReduceLROnPlateau. The blocks are the backbone
family's (``mammo.backbones``), deepest first: ResNet layer4 -> layer3 -> layer2 -> layer1 ->
conv1; EfficientNet and ConvNeXt groups of their ``features`` stages.

Frozen means ``requires_grad=False``. Every BatchNorm layer (ResNet, EfficientNet) stays in eval
mode on every epoch, frozen block or not: its running statistics never change
(``model.train()`` no longer revives them). ConvNeXt normalises with LayerNorm, which has no
running statistics; a frozen ConvNeXt block only keeps its LayerNorm weights (and everything
else in it) fixed. Dropout and stochastic depth follow ``model.train()`` as usual.

Fixes from the research code: BatchNorm statistics frozen as above, early stopping is
honoured, and the starting checkpoint is any checkpoint the baseline writes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mammo.config import UnfreezeConfig, lookup_metric, metric_mode
from mammo.engine.checkpoint import CheckpointListener, load_checkpoint, model_from_checkpoint
from mammo.engine.data import require
from mammo.engine.runtime import Runtime
from mammo.engine.trainer import EpochListener, Trainer, plateau_scheduler
from mammo.errors import ConfigError
from mammo.imagesize import image_hw, parse_image_size, size_text
from mammo.models import block_modules, head_parameters

log = logging.getLogger(__name__)


def _parameters(modules: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


class UnfreezeTrainer(Trainer):
    stage = "unfreeze"
    config: UnfreezeConfig

    def build_model(self) -> torch.nn.Module:
        init = require(self.config.init, "--init (init)")
        payload = load_checkpoint(init, needs=())  # the weights and their model: the rest is this run's
        model = model_from_checkpoint(payload, source=str(init))
        self._take_input_size(init, payload)
        if payload["model_config"] != self.config.model.model_dump(mode="json"):
            log.info("unfreeze: using the model of %s (%s)", init, payload["model_config"])
            self.config.use_model(payload["model_config"], source=str(init))
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head_parameters(model, self.config.model.backbone):
            p.requires_grad_(True)
        self.unfrozen = 0
        self._unfrozen_now: list[str] = []
        self.last_unfreeze: int | None = None
        self.best_seen: float | None = None
        self.phase = "cosine"
        return model

    def _take_input_size(self, init: str, payload: dict) -> None:
        """Continue at the input size the init checkpoint was trained at: taken from it when
        ``data.image_size`` was not given, refused in one line when it was and differs (a 32 px
        baseline is not silently retrained at 512 px)."""
        if payload.get("image_size") is None:
            return
        trained = parse_image_size(payload["image_size"])
        data = self.config.data
        if "image_size" not in data.model_fields_set:
            if image_hw(trained) != image_hw(data.image_size):
                log.info("unfreeze: input size %s px, as %s was trained", size_text(trained), init)
            data.image_size = trained
        elif image_hw(trained) != image_hw(data.image_size):
            raise ConfigError(
                f"{init} was trained at {size_text(trained)} px, not the {size_text(data.image_size)} px asked "
                "(--image-size / data.image_size): leave it out to continue at the checkpoint's size"
            )

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        opt = self.config.optimizer
        optimizer = torch.optim.Adam(
            [{"params": head_parameters(model, self.config.model.backbone), "lr": opt.lr, "weight_decay": opt.weight_decay, "name": "head"}]
        )
        self.optimizer = optimizer
        self._start_cosine()
        return optimizer

    def after_train_mode(self, model: torch.nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    # --- the block schedule ----------------------------------------------------------------

    def _start_cosine(self) -> None:
        """(Re)start cosine annealing from the groups' current rates."""
        for group in self.optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.config.cosine_t_max)

    def _start_plateau(self) -> None:
        self.scheduler = plateau_scheduler(self.optimizer, self.config.scheduler)
        self.phase = "plateau"

    def _unfreeze_next(self) -> str:
        step = self.config.unfreeze.steps[self.unfrozen]
        params = _parameters(block_modules(self.model, self.config.model.backbone, step.block))
        for p in params:
            p.requires_grad_(True)
        self.optimizer.add_param_group(
            {"params": params, "lr": step.block_lr, "weight_decay": self.config.optimizer.weight_decay, "name": step.block}
        )
        self.optimizer.param_groups[0]["lr"] = step.head_lr
        self.unfrozen += 1
        self._unfrozen_now.append(step.block)
        return step.block

    def epoch_notes(self) -> dict[str, Any]:
        """The blocks unfrozen at the end of this epoch (they train from the next one)."""
        notes, self._unfrozen_now = {"unfrozen": self._unfrozen_now}, []
        return notes

    def after_validation(self, epoch: int, metrics: dict[str, Any]) -> None:
        sched = self.config.unfreeze
        value = lookup_metric(metrics, sched.metric)
        if self.phase == "plateau":
            plateau_value = lookup_metric(metrics, self.config.scheduler.metric)
            if plateau_value is not None:
                self.scheduler.step(plateau_value)
            return
        self.scheduler.step()
        sign = 1.0 if metric_mode(sched.metric) == "max" else -1.0
        if value is not None and (self.best_seen is None or sign * (value - self.best_seen) > 0):
            self.best_seen = value
        cooled = self.last_unfreeze is None or epoch - self.last_unfreeze >= sched.cooldown
        if self.unfrozen == len(sched.steps):
            if cooled:
                log.info("unfreeze: all blocks trainable; switching to ReduceLROnPlateau at epoch %d", epoch)
                self._start_plateau()
            return
        fallen = value is not None and sign * (self.best_seen - value) >= sched.drop
        if epoch >= sched.start_epoch and fallen and cooled:
            block = self._unfreeze_next()
            self.last_unfreeze = epoch
            self._start_cosine()
            log.info(
                "unfreeze: epoch %d, %s %.4f is %.4f below its best; unfroze %s",
                epoch, sched.metric, value, sign * (self.best_seen - value), block,
            )

    # --- resume ----------------------------------------------------------------------------

    def schedule_state(self) -> dict[str, Any]:
        return {
            "unfrozen": self.unfrozen,
            "last_unfreeze": self.last_unfreeze,
            "best_seen": self.best_seen,
            "phase": self.phase,
            "scheduler": self.scheduler.state_dict(),
        }

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        for _ in range(int(state["unfrozen"])):
            self._unfreeze_next()
        self._unfrozen_now = []  # restored, not unfrozen in the coming epoch
        self.last_unfreeze = state["last_unfreeze"]
        self.best_seen = state["best_seen"]
        if state["phase"] == "plateau":
            self._start_plateau()
        else:
            self._start_cosine()
        self.scheduler.load_state_dict(state["scheduler"])


def train_unfreeze(
    config: UnfreezeConfig,
    resume: bool = False,
    on_checkpoint: CheckpointListener | None = None,
    on_epoch: EpochListener | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Run (or continue) gradual unfreezing from ``config.init``; returns the run summary."""
    return UnfreezeTrainer(config, on_checkpoint, on_epoch, runtime).run(resume=resume)
