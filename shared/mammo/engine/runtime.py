"""Device selection, seeding and mixed precision: the only place that knows about hardware."""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

from mammo.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {name} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def epoch_seed(seed: int, epoch: int) -> int:
    """Per-epoch seed: shuffling and augmentation depend only on (seed, epoch), so a resumed
    run draws exactly what the uninterrupted run would have drawn."""
    return (seed * 1_000_003 + epoch) % 2**63


class Precision:
    """Mixed precision on CUDA: bf16 autocast, or fp16 autocast with a GradScaler for GPUs
    without bf16. On CPU/MPS everything runs in full precision with a disabled scaler."""

    def __init__(self, device: torch.device, enabled: bool, dtype: str = "bf16") -> None:
        self.active = enabled and device.type == "cuda"
        self.dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.active and dtype == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.active:
            return torch.autocast(device_type="cuda", dtype=self.dtype)
        return contextlib.nullcontext()
