"""One training epoch and one inference pass, readable top to bottom.

Batches arrive as uint8 on the CPU; they are moved to the device without blocking and turned
into normalised (and, when training, augmented) float tensors there by ``BatchTransform``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from mammo.data.augment import BatchTransform
from mammo.engine.runtime import Precision
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
) -> EpochStats:
    model.train()
    if after_train_mode is not None:
        after_train_mode(model)
    transform.train()
    total_loss, seen, skipped = 0.0, 0, 0
    start = time.perf_counter()
    for batch in track(loader, desc=desc):
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
        total_loss += loss.item() * len(labels)
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
