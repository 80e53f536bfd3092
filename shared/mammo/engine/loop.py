"""One training epoch and one inference pass, readable top to bottom.

Batches arrive as uint8 on the CPU; they are moved to the device without blocking and turned
into normalised (and, when training, augmented) float tensors there by ``BatchTransform``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from mammo.data.augment import BatchTransform
from mammo.engine.distributed import all_gather_objects
from mammo.errors import TrainingError
from mammo.engine.runtime import Precision, Runtime
from mammo.progress import track


@dataclass
class EpochStats:
    loss: float
    images: int
    skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Predictions:
    index: np.ndarray  # positions in the loader's dataset
    probs: np.ndarray
    loss: float | None
    skipped: int


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    device: torch.device,
    desc: str,
    after_train_mode: Callable[[torch.nn.Module], None] | None = None,
    loss_ceiling: float = math.inf,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader``. A step whose loss is not finite or above
    ``loss_ceiling`` (``loss.ceiling``) raises ``TrainingError``: the weights have diverged."""
    model.train()
    if after_train_mode is not None:
        after_train_mode(model)
    transform.train()
    total_loss, seen, skipped = 0.0, 0, 0
    start = time.perf_counter()
    for step, batch in enumerate(track(loader, desc=desc), start=1):
        skipped += batch["skipped"]
        if len(batch["labels"]) == 0:
            continue
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        with precision.autocast():
            logits = model(transform(images)).squeeze(1)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        value = loss.item()
        if not math.isfinite(value) or value > loss_ceiling:
            # The weights are garbage from here on: stop before anything is saved from them.
            became = f"{value}" if not math.isfinite(value) else f"{value:.3g}, above loss.ceiling {loss_ceiling:g}"
            raise TrainingError(
                f"{desc}, step {step}: the training loss became {became} (training diverged: lower "
                "optimizer.lr, or check the data and loss settings)"
            )
        total_loss += value * len(labels)
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EpochStats(
        loss=total_loss / seen if seen else float("nan"),
        images=seen,
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    precision: Precision,
    device: torch.device,
    desc: str,
    loss_fn: torch.nn.Module | None = None,
) -> Predictions:
    """Probabilities for every readable image of ``loader`` (in dataset order)."""
    model.eval()
    transform.eval()
    indices, probs = [], []
    total_loss, seen, skipped = 0.0, 0, 0
    for batch in track(loader, desc=desc):
        skipped += batch["skipped"]
        if len(batch["labels"]) == 0:
            continue
        images = batch["images"].to(device, non_blocking=True)
        with precision.autocast():
            logits = model(transform(images)).squeeze(1).float()
        if loss_fn is not None:
            labels = batch["labels"].to(device, non_blocking=True)
            total_loss += loss_fn(logits, labels).item() * len(labels)
        seen += len(logits)
        probs.append(torch.sigmoid(logits).cpu().numpy())
        indices.append(batch["index"].numpy())
    return Predictions(
        index=np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        probs=np.concatenate(probs).astype(np.float64) if probs else np.zeros(0),
        loss=total_loss / seen if (loss_fn is not None and seen) else None,
        skipped=skipped,
    )


def reduce_stats(stats: EpochStats, runtime: Runtime) -> EpochStats:
    """The epoch's figures over all processes: mean loss over every image trained, images and
    skips summed, the slowest process's time."""
    if not runtime.distributed:
        return stats
    parts = all_gather_objects(stats, runtime.world_size)
    images = sum(p.images for p in parts)
    loss = sum(p.loss * p.images for p in parts if p.images) / images if images else float("nan")
    return EpochStats(loss=loss, images=images, skipped=sum(p.skipped for p in parts),
                      seconds=max(p.seconds for p in parts))


def gather_predictions(preds: Predictions, runtime: Runtime) -> Predictions:
    """Every process's predictions of its shard, merged in dataset order: exactly the split,
    the same on every process."""
    if not runtime.distributed:
        return preds
    parts = all_gather_objects(preds, runtime.world_size)
    index = np.concatenate([p.index for p in parts])
    order = np.argsort(index, kind="stable")
    seen = [len(p.index) for p in parts]
    losses = [(p.loss, n) for p, n in zip(parts, seen) if p.loss is not None and n]
    total = sum(n for _, n in losses)
    return Predictions(
        index=index[order],
        probs=np.concatenate([p.probs for p in parts])[order],
        loss=sum(loss * n for loss, n in losses) / total if total else None,
        skipped=sum(p.skipped for p in parts),
    )
