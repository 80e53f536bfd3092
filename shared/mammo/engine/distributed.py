"""Data-parallel training across processes: the epoch order every rank shares, the shards
each rank takes, and the collectives the loop needs.

Semantics (README: multi-GPU): ``batch_size`` is the *global* batch. Every rank draws the same
epoch order from ``(seed, epoch)`` and, at step k, rank r takes positions
``k*B + r*b .. k*B + (r+1)*b`` of it (``b = B / world_size``). One process with batch B and W
processes with batch B/W therefore train on the same images at every step, and DDP's gradient
average equals the single process's batch mean: results do not depend on the number of GPUs
and the learning rate needs no change.

Training uses whole global batches only: a last partial batch is dropped (the epoch's order
changes every epoch, so no image is left out for good). Uneven per-rank batches would weight
images differently under DDP's average, and a last batch of one image breaks BatchNorm. A
training set smaller than one batch is used whole, as one batch (it must give every rank at
least two images).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mammo.engine.runtime import Runtime
from mammo.errors import ConfigError, DataError

T = TypeVar("T")


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch; a one-line error when it does not divide."""
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size {batch_size} is the global batch and must be divisible by the "
            f"{world_size} processes (e.g. {max(world_size, batch_size - batch_size % world_size)})"
        )
    return batch_size // world_size


class EpochSampler(Sampler[int]):
    """This rank's positions of one epoch, in step order, drawn from the epoch's seed.

    The global order is a permutation of the rows, or, with ``weights``, as many weighted draws
    with replacement (the class-balanced sampler); ``set_seed`` selects the epoch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        weights: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.local = local_batch_size(batch_size, world_size)
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.seed = seed
        usable = self.used()
        if usable < 2 * world_size:
            raise DataError(
                f"training needs at least {2 * world_size} images per epoch "
                f"({world_size} process(es) x 2 for BatchNorm), got {size}"
            )

    def used(self) -> int:
        """Rows an epoch trains on: whole global batches, or everything when less than one."""
        if self.size >= self.batch_size:
            return self.size - self.size % self.batch_size
        return self.size - self.size % self.world_size

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def global_order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()[: self.used()]
        if self.size >= self.batch_size:
            steps = order.view(-1, self.world_size, self.local)
        else:
            steps = order.view(1, self.world_size, -1)
        return iter(steps[:, self.rank].reshape(-1).tolist())

    def __len__(self) -> int:
        return self.used() // self.world_size

    def per_rank_batch(self) -> int:
        """The DataLoader batch size that yields one step's share."""
        return self.local if self.size >= self.batch_size else len(self)


class ShardSampler(Sampler[int]):
    """Evaluation: rank r predicts rows r, r+W, r+2W, ... - every row exactly once overall
    (no padding, so the gathered predictions are exactly the split)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.positions = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)


def all_gather_objects(value: Any, world_size: int) -> list[Any]:
    """Every rank's ``value``, in rank order (just ``[value]`` in one process)."""
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, world_size: int) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_buffers(model: torch.nn.Module, world_size: int) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP sends them at the
    start of each training forward, so after the epoch's last step they differ by that step;
    validation must see the statistics the checkpoint keeps."""
    if world_size == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def node_leader_first(runtime: Runtime, work: Callable[[], T]) -> T:
    """Run ``work`` on the first process of each node, then on the others (which then find
    its downloads cached): one copy of the inputs per node, no two processes writing it."""
    if not runtime.distributed:
        return work()
    if runtime.local_rank == 0:
        value = work()
        dist.barrier()
        return value
    dist.barrier()
    return work()
