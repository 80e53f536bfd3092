"""The epoch loop shared by both training stages.

``Trainer.run`` reads top to bottom: set up data, model, loss and optimiser; optionally resume
from ``last.pt``; then per epoch train, validate, step the schedule, check early stopping and
save checkpoints. Stages (baseline, gradual unfreezing) subclass it and fill in the model,
optimiser, schedule and which rows an epoch trains on.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from mammo.config import PlateauConfig, TrainConfig, lookup_metric, metric_mode
from mammo.config_files import dump_config
from mammo.data.augment import BatchTransform
from mammo.engine.checkpoint import (
    BEST_CHECKPOINTS,
    FORMAT,
    LAST,
    CheckpointKeeper,
    CheckpointListener,
    library_versions,
    load_checkpoint,
)
from mammo.engine.data import eval_loader, load_split_data, require, reseed_loader, train_loader
from mammo.engine.distributed import broadcast_buffers, broadcast_object, local_batch_size
from mammo.engine.early_stopping import EarlyStopping
from mammo.engine.loop import EpochStats, Predictions, gather_predictions, predict, reduce_stats, train_one_epoch
from mammo.engine.runtime import Runtime, epoch_seed, runtime_for, seed_everything
from mammo.errors import CheckpointError, DataError, TrainingError
from mammo.imagesize import image_hw, size_text
from mammo.losses import build_loss, drawn_prevalence, sampler_warning
from mammo.storage.atomic import remove_leftover_temps, write_text_atomic
from mammo.jsonio import to_jsonable, write_json
from mammo.metrics import evaluate_predictions, format_metric, headline

log = logging.getLogger(__name__)

EpochListener = Callable[[dict[str, Any]], None]
#: The files a training run writes in its output folder (globs), whose half-written temporary
#: copies a killed run leaves behind.
#: What ``last.pt`` holds beyond the weights, for a resumed run to go on exactly.
RESUME_KEYS = ("schedule", "optimizer", "scaler", "trainer", "history", "stopped_early", "split_fingerprint", "image_size")
OWN_FILES = ("config.yaml", "history.json", "summary.json", LAST, *BEST_CHECKPOINTS, "topk_epoch*.pt")


def validation_metrics(rows: pd.DataFrame, preds: Predictions, how: str) -> dict[str, Any]:
    """Image- and breast-level metrics at threshold 0.5 for the rows that were predicted."""
    frame = rows.iloc[preds.index][["patient_id", "laterality"]].assign(
        label=rows["cancer"].to_numpy()[preds.index], prob=preds.probs
    )
    return to_jsonable(evaluate_predictions(frame, how=how, loss=preds.loss))


def plateau_scheduler(optimizer: torch.optim.Optimizer, config: PlateauConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """ReduceLROnPlateau on a validation metric, minimising losses and maximising the rest."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=metric_mode(config.metric),
        factor=config.factor,
        patience=config.patience,
        threshold=config.threshold,
        cooldown=config.cooldown,
        min_lr=config.min_lr,
    )


class Trainer(ABC):
    stage = "train"

    def __init__(
        self,
        config: TrainConfig,
        on_checkpoint: CheckpointListener | None = None,
        on_epoch: EpochListener | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        """``runtime``: the process layout to train in; default: made from ``config`` (and the
        launcher's environment) for this run. Listeners are called in the main process only."""
        self.config = config
        self.out_dir = Path(require(config.out, "--out (out)"))
        self.on_checkpoint = on_checkpoint
        self.on_epoch = on_epoch
        self.given_runtime = runtime

    # --- what a stage provides ------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The network, on the CPU."""

    @abstractmethod
    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimiser (and the stage's learning-rate schedule)."""

    def train_rows(self, epoch: int) -> tuple[str, pd.DataFrame]:
        """(phase name, rows) this epoch trains on."""
        return "full", self.data.rows("train")

    @abstractmethod
    def after_validation(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Step the learning-rate schedule (and, for unfreezing, the block schedule)."""

    def epoch_notes(self) -> dict[str, Any]:
        """Stage-specific facts of the epoch just validated, kept in its history record (the
        report's training curves mark them); called after ``after_validation``."""
        return {}

    def after_train_mode(self, model: torch.nn.Module) -> None:
        """Adjust modules after ``model.train()`` (e.g. keep frozen BatchNorm in eval)."""

    @abstractmethod
    def schedule_state(self) -> dict[str, Any]:
        """Everything the schedule needs to resume, as plain values and state dicts."""

    @abstractmethod
    def load_schedule_state(self, state: dict[str, Any]) -> None:
        """Restore ``schedule_state``; called before the optimiser's state is loaded."""

    # --- the loop --------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        with runtime_for(self.config, self.given_runtime) as runtime:
            self.runtime = runtime
            return self._run(resume)

    def _run(self, resume: bool) -> dict[str, Any]:
        config, runtime = self.config, self.runtime
        if runtime.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed, config.deterministic)
        self.device = device = runtime.device
        self.precision = runtime.precision
        local_batch_size(config.data.batch_size, runtime.world_size)
        self.data = load_split_data(config)
        val_rows = self.data.rows("val")
        train_rows = self.data.rows("train")
        if train_rows.empty or val_rows.empty:
            raise DataError(f"{config.split}: the split needs training and validation images")
        prevalence = float(train_rows["cancer"].mean())
        if not int(val_rows["cancer"].sum()):
            log.warning(
                "%s: the val split has no cancer: validation AUC, PR-AUC and pF1 are undefined, so early stopping "
                "and the best_* checkpoints on them cannot work (only the loss can) and no operating threshold "
                "can be chosen; rebuild the split with more patients or a larger val_frac", self.stage,
            )
        # Validation loss: weighted as the full-data phase's training loss, in every epoch.
        self.loss_fn = self.phase_loss(train_rows, prevalence)
        warning = sampler_warning(config.loss, config.data.balanced_sampler)
        if warning is not None:
            log.warning("%s: %s", self.stage, warning)
        log.info(
            "%s on %s%s: %d train / %d val images, training prevalence %.4f",
            self.stage, device, f" x {runtime.world_size} processes" if runtime.distributed else "",
            len(train_rows), len(val_rows), prevalence,
        )
        model = self.build_model()
        if runtime.distributed and config.distributed.sync_batchnorm and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.optimizer = self.build_optimizer(self.model)
        if runtime.is_main:
            for tmp in remove_leftover_temps(self.out_dir, OWN_FILES):
                log.info("%s: removed %s, left by a run killed while writing it", self.stage, tmp)
            write_text_atomic(self.out_dir / "config.yaml", dump_config(config))
        transform = BatchTransform(config.augment, config.model.in_channels).to(device)
        val_transform = BatchTransform(None, config.model.in_channels).to(device)
        cache = self.data.decoded_cache(config)
        val_loader = eval_loader(val_rows, config, runtime, cache)
        keeper = CheckpointKeeper(self.out_dir, config.checkpoint.primary, config.checkpoint.top_k, self.on_checkpoint)
        es = config.early_stopping
        stopper = EarlyStopping(metric_mode(es.metric), es.patience, es.min_delta, es.start_epoch)
        history: list[dict[str, Any]] = []
        first_epoch = 1
        if resume:
            state = self._resume()
            if state is not None:
                try:
                    keeper.load_state_dict(state["trainer"]["keeper"])
                    stopper.load_state_dict(state["trainer"]["early_stopping"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise CheckpointError(f"{self.out_dir / LAST}: its trainer state is not readable ({exc!r:.200})") from None
                history = list(state["history"])
                first_epoch = int(state["epoch"]) + 1
                if state["stopped_early"] or state["epoch"] >= config.epochs:
                    log.info("%s: run in %s already finished at epoch %d", self.stage, self.out_dir, state["epoch"])
                    return self._summary(history, keeper, stopped=bool(state["stopped_early"]))

        # One training loader at a time: the warm-up loader (and its persistent workers) goes
        # when the full-data phase starts.
        loader_phase, loader = "", None
        stopped = False
        for epoch in range(first_epoch, config.epochs + 1):
            seed = epoch_seed(config.seed, epoch)
            torch.manual_seed(seed + runtime.rank)  # augmentation: each rank draws its own
            phase, rows = self.train_rows(epoch)
            if loader is None or phase != loader_phase:
                loader_phase, loader = phase, train_loader(rows, config, runtime, seed=seed, cache=cache)
                train_loss = self.phase_loss(rows, prevalence, phase)
            reseed_loader(loader, seed)
            try:
                stats = reduce_stats(train_one_epoch(
                    self.trainable_model(), loader, transform, train_loss, self.optimizer, self.precision,
                    device, desc=f"epoch {epoch} {phase}", after_train_mode=self.after_train_mode,
                    loss_ceiling=config.loss.ceiling,
                ), runtime)
            except TrainingError as err:
                raise TrainingError(f"{self.stage} {err}; {self._last_good(history)}") from None
            broadcast_buffers(self.model, runtime.world_size)
            preds = gather_predictions(predict(
                self.model, val_loader, val_transform, self.precision, device,
                desc=f"epoch {epoch} val", loss_fn=self.loss_fn,
            ), runtime)
            # Every rank computes the same figures from the same gathered predictions, so the
            # schedule and early stopping decide alike everywhere.
            metrics = validation_metrics(val_rows, preds, config.data.breast_aggregation)
            lr = self.optimizer.param_groups[0]["lr"]
            self.after_validation(epoch, metrics)
            stopped = es.enabled and stopper.step(epoch, lookup_metric(metrics, es.metric))
            record = {
                "epoch": epoch,
                "phase": phase,
                "train_loss": stats.loss,
                "train_images": stats.images,
                "skipped_images": stats.skipped + preds.skipped,
                "epoch_seconds": stats.seconds,
                "images_per_second": stats.images_per_second,
                "lr": lr,
                "val": metrics,
                **self.epoch_notes(),
            }
            history.append(to_jsonable(record))
            if runtime.is_main:
                self._save_epoch(keeper, epoch, metrics, history, stopper, stopped, stats)
            if stopped:
                log.info("%s: early stopping at epoch %d (%s did not improve)", self.stage, epoch, es.metric)
                break
        return self._summary(history, keeper, stopped)

    def phase_loss(self, rows: pd.DataFrame, prevalence: float, phase: str | None = None) -> torch.nn.Module:
        """The loss for training on ``rows``, weighted by the cancer share of what their loader
        draws (``losses.drawn_prevalence``: the warm-up subset's own, 1/2 under the balanced
        sampler); the training split's ``prevalence`` when the rows hold one class only."""
        drawn = drawn_prevalence(rows["cancer"], self.config.data.balanced_sampler)
        if not 0 < drawn < 1:
            drawn = prevalence
        loss = build_loss(self.config.loss, drawn).to(self.device)
        if phase is not None:
            log.info("%s %s: loss %s %s (cancer share drawn %.4f)", self.stage, phase, self.config.loss.name,
                     loss.extra_repr() or "unweighted", drawn)
        return loss

    def _last_good(self, history: list[dict[str, Any]]) -> str:
        """Where the run stands after a diverged epoch: nothing of it was saved."""
        last = self.out_dir / LAST
        if history and last.is_file():
            return f"kept the last good checkpoint {last} (epoch {history[-1]['epoch']})"
        return f"no checkpoint was written to {self.out_dir}"

    def trainable_model(self) -> torch.nn.Module:
        """The module the training step runs: the model itself in one process; under DDP a
        wrapper over the parameters that train now, made again whenever that set changes
        (gradual unfreezing adds blocks, and DDP's reducer only knows those it started with)."""
        if not self.runtime.distributed:
            return self.model
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if getattr(self, "_wrapped_for", None) != trainable:
            self._ddp = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            self._wrapped_for = trainable
        return self._ddp

    def _save_epoch(
        self, keeper: CheckpointKeeper, epoch: int, metrics: dict[str, Any], history: list[dict[str, Any]],
        stopper: EarlyStopping, stopped: bool, stats: EpochStats,
    ) -> None:
        """The main process's share of an epoch: checkpoints, history, log line, listeners."""

        def payload(keeper_state: dict[str, Any]) -> dict[str, Any]:
            return self._payload(epoch, metrics, history, keeper_state, stopper, stopped)

        keeper.update(epoch, metrics, payload)
        write_json(self.out_dir / "history.json", history)
        log.info(
            "%s epoch %d/%d [%s] train_loss=%.4f val_loss=%s auc=%s pr_auc=%s breast_pf1=%s lr=%.2e %.0f img/s",
            self.stage, epoch, self.config.epochs, history[-1]["phase"], stats.loss,
            format_metric(lookup_metric(metrics, "image.loss")), format_metric(lookup_metric(metrics, "image.auc")),
            format_metric(lookup_metric(metrics, "image.pr_auc")), format_metric(lookup_metric(metrics, "breast.pf1")),
            history[-1]["lr"], stats.images_per_second,
        )
        if self.on_epoch is not None:
            self.on_epoch(history[-1])

    # --- checkpoints -----------------------------------------------------------------------

    def _payload(
        self,
        epoch: int,
        metrics: dict[str, Any],
        history: list[dict[str, Any]],
        keeper_state: dict[str, Any],
        stopper: EarlyStopping,
        stopped: bool,
    ) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "stage": self.stage,
            "epoch": epoch,
            "stopped_early": stopped,
            "model": self.model.state_dict(),
            "model_config": self.config.model.model_dump(mode="json"),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule_state(),
            "scaler": self.precision.scaler.state_dict(),
            "trainer": {"keeper": keeper_state, "early_stopping": stopper.state_dict()},
            "config": self.config.model_dump(mode="json"),
            "metrics": metrics,
            "history": list(history),
            "split_fingerprint": self.data.fingerprint,
            "image_size": self.config.data.image_size,
            "versions": library_versions(),
        }

    def _resume(self) -> dict[str, Any] | None:
        """Load ``last.pt`` into model, schedule, optimiser and scaler. The main process reads
        it and hands it to the others, so any world size resumes any checkpoint and only the
        main process needs the file."""
        path = self.out_dir / LAST
        state = None
        if self.runtime.is_main and path.exists():
            state = load_checkpoint(path)
        state = broadcast_object(state, self.runtime.world_size)
        if state is None:
            log.info("%s: nothing to resume in %s, starting from epoch 1", self.stage, self.out_dir)
            return None
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise CheckpointError(f"{path}: holds no {missing[0]!r}, so training cannot resume from it")
        if state["stage"] != self.stage:
            raise CheckpointError(f"{path}: written by stage {state['stage']!r}, cannot resume {self.stage!r}")
        if state["split_fingerprint"] != self.data.fingerprint:
            raise CheckpointError(f"{path}: trained on a different split; start over in a new output location")
        trained = image_hw(state["image_size"])
        if trained != image_hw(self.config.data.image_size):
            raise CheckpointError(
                f"{path}: trained at {size_text(state['image_size'])} px, not the {size_text(self.config.data.image_size)} "
                "asked for; resume with its size, or start over in a new output location"
            )
        backbone = state["model_config"].get("backbone")
        if backbone != self.config.model.backbone:
            raise CheckpointError(
                f"{path}: a {backbone} checkpoint, not {self.config.model.backbone}; resume with its backbone, or start "
                "over in a new output location"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.load_schedule_state(state["schedule"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.precision.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: its state does not fit this run ({first[:200]})") from None
        log.info("%s: resuming %s after epoch %d", self.stage, self.out_dir, state["epoch"])
        return state

    def _summary(self, history: list[dict[str, Any]], keeper: CheckpointKeeper, stopped: bool) -> dict[str, Any]:
        summary = {
            "stage": self.stage,
            "out": str(self.out_dir),
            "epochs_run": len(history),
            "stopped_early": stopped,
            "best": keeper.best,
            "checkpoints": sorted(p.name for p in self.out_dir.glob("*.pt")),
            "last_val": headline(history[-1]["val"]) if history else None,
            "world_size": self.runtime.world_size,
        }
        if self.runtime.is_main:
            write_json(self.out_dir / "summary.json", summary)
        return to_jsonable(summary)
