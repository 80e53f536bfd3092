"""Dataset and DataLoader of the training data path.

Samples stay uint8 [1, S, S] until they reach the training device, so a batch is a quarter of
the float32 size (a twelfth of the research code's 3-channel float batches) to ship from worker
processes and to copy to the GPU; augmentation and normalisation happen there on whole batches
(``mammo.data.augment``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mammo.data.cache import DecodedCache
from mammo.config import DEFAULT_MAX_PIXELS
from mammo.data.decode import read_png
from mammo.errors import DataError, MammoError

log = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, float, int]


class MammoImages(Dataset):
    """Images by table row: ``(uint8 [1,S,S], label, row index)``; None for a skipped bad image."""

    def __init__(
        self,
        paths: list[str],
        labels: Sequence[int],
        image_size: int,
        bad_images: Literal["fail", "skip"] = "fail",
        cache: DecodedCache | None = None,
        cache_rows: Sequence[int] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """``cache``: the decoded cache to read from and fill, ``cache_rows`` each path's row in
        it (``mammo.data.cache``); ``max_pixels``: larger PNGs are unreadable (``data.max_pixels``)."""
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if bad_images not in ("fail", "skip"):
            raise ValueError(f"bad_images must be 'fail' or 'skip', got {bad_images!r}")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.image_size = image_size
        self.bad_images = bad_images
        self.cache = cache
        self.cache_rows = None if cache_rows is None else np.asarray(cache_rows, dtype=np.int64)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, indices: list[int]) -> list[Sample | None] | dict[str, Any]:
        """A whole batch (the DataLoader asks for one at a time): from the decoded cache in one
        copy when all of it is stored, else image by image."""
        if self.cache is not None and indices:
            images = self.cache.read_many(self.cache_rows[indices])
            if images is not None:
                return {
                    "images": images,
                    "labels": torch.from_numpy(self.labels[indices]),
                    "index": torch.as_tensor(indices, dtype=torch.int64),
                    "skipped": 0,
                }
        return [self[index] for index in indices]

    def __getitem__(self, index: int) -> Sample | None:
        def decode() -> torch.Tensor:
            return read_png(self.paths[index], self.image_size, self.max_pixels)

        try:
            if self.cache is None:
                image = decode()
            else:
                image = self.cache.get(int(self.cache_rows[index]), decode)
                if image is None:
                    raise DataError(f"{self.paths[index]}: unreadable (found so when the decoded cache was filled)")
        except DataError as err:
            if self.bad_images == "fail":
                raise
            log.warning("skipping unreadable image: %s", err)
            return None
        return image, float(self.labels[index]), index


def collate_batch(items: list[Sample | None] | dict[str, Any]) -> dict[str, Any]:
    """Stack the readable samples; ``skipped`` counts the dropped ones (``images`` may be empty).
    A batch the dataset read whole (``MammoImages.__getitems__``) passes through."""
    if isinstance(items, dict):
        return items
    kept = [item for item in items if item is not None]
    if kept:
        images = torch.stack([item[0] for item in kept])
    else:
        images = torch.empty((0, 1, 0, 0), dtype=torch.uint8)
    return {
        "images": images,
        "labels": torch.tensor([item[1] for item in kept], dtype=torch.float32),
        "index": torch.tensor([item[2] for item in kept], dtype=torch.int64),
        "skipped": len(items) - len(kept),
    }


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed (PyTorch's recipe)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _OneLineErrorLoader(DataLoader):
    """A DataLoader whose worker-side ``MammoError`` re-raises with its original one-line message.

    PyTorch re-raises worker exceptions with the worker's traceback folded into the message; for
    a user mistake (a corrupted PNG) the CLI must print just the one line naming the file.
    """

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from super().__iter__()
        except MammoError as err:
            lines = str(err).strip().splitlines()
            if len(lines) <= 1:
                raise
            prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
            raise type(err)(lines[-1].removeprefix(prefix)) from None


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> DataLoader:
    """The loader training and evaluation use: seeded order, pinned memory for CUDA copies."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 4, "worker_init_fn": _seed_worker}
    return _OneLineErrorLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def balanced_weights(labels: Sequence[int]) -> np.ndarray:
    """Sampling weights that draw both classes equally often (``1 / class count``)."""
    values = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(values, minlength=2).astype(np.float64)
    return 1.0 / counts[values]
