"""Device selection, seeding, mixed precision and the process layout: the only place that
knows about hardware and about how many processes share the work.

``Runtime`` is made once per command (``start_runtime``) and handed to everything that must
know where tensors live, which precision runs, and whether this process is the one that writes
(``is_main``). A process started by torchrun (or anything that sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) joins a process group: NCCL with one GPU
per local rank on CUDA, gloo on CPU. A plain process is rank 0 of 1 and joins nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from mammo.config import RunConfig
from mammo.errors import ConfigError, MammoError

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


@dataclass(frozen=True)
class Runtime:
    """Where this process computes and which part of the job it is."""

    device: torch.device
    precision: Precision
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, history, summaries, telemetry, progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_ranks() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the launcher's environment; (0, 0, 1) without one."""
    values = []
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        raw = os.environ.get(name)
        try:
            values.append(default if raw in (None, "") else int(raw))
        except ValueError:
            raise ConfigError(f"environment {name}={raw!r}: expected an integer") from None
    rank, local_rank, world_size = values
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"environment RANK={rank} WORLD_SIZE={world_size}: rank must lie in [0, world size)")
    return rank, local_rank, world_size


def make_runtime(config: RunConfig) -> Runtime:
    """The process's Runtime; joins the process group when launched as one of several."""
    rank, local_rank, world_size = launched_ranks()
    device = resolve_device(config.device)
    if world_size > 1:
        if device.type == "mps":
            raise ConfigError("device mps: distributed training runs on CUDA (NCCL) or CPU (gloo)")
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                    "start at most one process per GPU"
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                timeout=timedelta(seconds=config.distributed.timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
        log.debug("rank %d/%d (local %d) on %s", rank, world_size, local_rank, device)
    return Runtime(
        device=device,
        precision=Precision(device, config.amp, config.amp_dtype),
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )


@contextlib.contextmanager
def runtime_for(config: RunConfig, runtime: Runtime | None = None) -> Iterator[Runtime]:
    """``runtime`` if given, else one made for this command, whose process group (if it
    started one) is closed on the way out, also after an error."""
    if runtime is not None:
        yield runtime
        return
    made = make_runtime(config)
    try:
        yield made
    except (dist.DistError, RuntimeError) as exc:
        if made.distributed and _is_collective_failure(exc):
            raise LostPeerError(
                f"lost contact with the other processes ({_first_line(exc)}); another rank failed "
                f"or did not answer within distributed.timeout_s={config.distributed.timeout_s}"
            ) from None
        raise
    finally:
        if made.distributed and dist.is_initialized():
            dist.destroy_process_group()


class LostPeerError(MammoError):
    """A collective failed because another process died or hung: the job cannot go on."""

    exit_code = 1


def _is_collective_failure(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "timed out")
    )


def _first_line(exc: BaseException) -> str:
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."
