"""Throughput of the training data path against the research code's, on the same PNG files.

Besides: the same images read back from the decoded cache (``mammo.data.cache``), a plain
copy of the same bytes (the physical limit), and the batch augmentation on its own.

Ours is exactly what training runs: ``open_dataset`` -> ``MammoImages`` -> ``make_loader``
(shuffled) -> ``BatchTransform`` in training mode with the default augmentation, on the device.
The reference is the research code's per-image PIL path (open, convert to RGB, resize, random
rotation, to tensor, ImageNet normalisation) in one process. Torch runs on one thread, so with
``workers=0`` on the CPU both figures are per core (and measured in process CPU time).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from mammo.config import AugmentConfig
from mammo.data.augment import BatchTransform
from mammo.data.cache import open_cache
from mammo.data.dataset import MammoImages, make_loader
from mammo.data.layout import open_dataset
from mammo.engine.runtime import resolve_device
from mammo.errors import ConfigError
from mammo.imagesize import image_hw

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WARMUP_BATCHES = 2
ROUNDS = 5


def _batches_forever(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, Any]]:
    """Epoch after epoch, so a small dataset still yields as many batches as asked for."""
    while True:
        yield from loader


def _our_path(paths: list[str], labels: list[int], *, image_size: int, workers: int,
              batch_size: int, device: torch.device) -> Callable[[int], int]:
    """Runs ``n`` batches through the training data path; returns the images processed."""
    dataset = MammoImages(paths, labels, image_size)
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, shuffle=True, device=device)
    return _batches_run(loader, device, augment=True)


def _batches_run(loader: torch.utils.data.DataLoader, device: torch.device, *, augment: bool) -> Callable[[int], int]:
    """Runs ``n`` batches of ``loader`` (through the batch augmentation on ``device`` when
    ``augment``); returns the images processed."""
    transform = BatchTransform(AugmentConfig(), in_channels=1).to(device).train()
    stream = _batches_forever(loader)

    def run(n: int) -> int:
        images = 0
        for batch in itertools.islice(stream, n):
            if augment:
                transform(batch["images"].to(device, non_blocking=True))
            images += len(batch["images"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return images

    return run


def _reference_path(paths: list[str], *, image_size: int, batch_size: int) -> Callable[[int], int]:
    """The research code's per-image PIL transforms, batched as its DataLoader collates them."""
    pipeline = transforms.Compose(
        [
            transforms.Resize(list(image_hw(image_size))),
            transforms.RandomRotation(20),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)).tolist()
    stream = (paths[i] for i in itertools.cycle(order))

    def run(n: int) -> int:
        for _ in range(n):
            batch = [pipeline(Image.open(path).convert("RGB")) for path in itertools.islice(stream, batch_size)]
            torch.stack(batch)
        return n * batch_size

    return run


def _cached_path(paths: list[str], labels: list[int], cache_root: Path, *, image_size: int, batch_size: int,
                 device: torch.device, augment: bool) -> Callable[[int], int]:
    """Batches read from a filled decoded cache: collate (and pin for an accelerator), in this
    process; with ``augment`` also the batch augmentation on ``device``."""
    cache = open_cache(cache_root, paths, image_hw(image_size), verify=False)
    dataset = MammoImages(paths, labels, image_size, cache=cache, cache_rows=range(len(paths)))
    for row in range(len(paths)):
        dataset[row]  # fill once, outside the timing
    loader = make_loader(dataset, batch_size=batch_size, workers=0, shuffle=True, device=device)
    return _batches_run(loader, device, augment=augment)


def _copy_path(count: int, image_size: int, batch_size: int) -> Callable[[int], int]:
    """The physical limit: copying the same number of uint8 pixels per image, nothing else."""
    source = np.random.default_rng(0).integers(0, 255, (count, *image_hw(image_size)), dtype=np.uint8)
    target = np.empty((batch_size, *source.shape[1:]), dtype=np.uint8)
    order = itertools.cycle(range(count))

    def run(n: int) -> int:
        for _ in range(n):
            for slot in range(batch_size):
                np.copyto(target[slot], source[next(order)])
        return n * batch_size

    return run


def _augment_path(image_size: int, batch_size: int, device: torch.device) -> Callable[[int], int]:
    """Batch augmentation and normalisation alone, on ``device``."""
    batch = torch.randint(0, 255, (batch_size, 1, *image_hw(image_size)), dtype=torch.uint8).to(device)
    transform = BatchTransform(AugmentConfig(), in_channels=1).to(device).train()

    def run(n: int) -> int:
        for _ in range(n):
            transform(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return n * batch_size

    return run


def _timed(run: Callable[[int], int], batches: int, clock: Callable[[], float]) -> tuple[int, float]:
    start = clock()
    images = run(batches)
    return images, clock() - start


def _round_sizes(batches: int) -> list[int]:
    return [size for i in range(ROUNDS) if (size := batches // ROUNDS + (i < batches % ROUNDS))]


def bench_data(
    data: str | Path,
    image_size: int = 512,
    workers: int = 0,
    batches: int = 20,
    batch_size: int = 16,
    device: str = "auto",
) -> dict[str, Any]:
    """Images/s of both paths on the dataset at ``data``; ``speedup`` = ours / reference."""
    if batches < 1 or batch_size < 1 or workers < 0 or min(image_hw(image_size)) < 16:
        raise ConfigError("bench: batches and batch_size must be >= 1, workers >= 0, image_size >= 16")
    target = resolve_device(device)
    table, paths = open_dataset(data)
    labels = table["cancer"].tolist()
    # Everything in this process on the CPU: its CPU time is the per-core cost, unaffected by
    # other processes competing for the cores. Otherwise (workers, accelerator) wall time.
    per_core = workers == 0 and target.type == "cpu"
    clock = time.process_time if per_core else time.perf_counter
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = _reference_path(paths, image_size=image_size, batch_size=batch_size)
        reference(WARMUP_BATCHES)
        if workers > 0:
            # Worker processes would keep decoding during the reference's turn: no interleaving.
            ref, ref_s = _timed(reference, batches, clock)
            ours_run = _our_path(paths, labels, image_size=image_size, workers=workers,
                                 batch_size=batch_size, device=target)
            ours_run(WARMUP_BATCHES)
            ours, ours_s = _timed(ours_run, batches, clock)
        else:
            # Alternate short rounds so both paths see the same load from other processes.
            ours_run = _our_path(paths, labels, image_size=image_size, workers=workers,
                                 batch_size=batch_size, device=target)
            ours_run(WARMUP_BATCHES)
            ours, ours_s, ref, ref_s = 0, 0.0, 0, 0.0
            for size in _round_sizes(batches):
                n, seconds = _timed(ours_run, size, clock)
                ours, ours_s = ours + n, ours_s + seconds
                n, seconds = _timed(reference, size, clock)
                ref, ref_s = ref + n, ref_s + seconds
        # Once the cache exists: what one core does per image (read, collate, pin) with the
        # augmentation on the accelerator; beside it the plain copy of the same bytes, the
        # augmentation alone on this device, and everything on the CPU (end to end).
        with tempfile.TemporaryDirectory(prefix="mammo-bench-cache-") as cache_root:
            rates = {}
            for name, run in (
                ("cached", _cached_path(paths, labels, Path(cache_root), image_size=image_size,
                                        batch_size=batch_size, device=target, augment=False)),
                ("cached_augmented", _cached_path(paths, labels, Path(cache_root), image_size=image_size,
                                                  batch_size=batch_size, device=target, augment=True)),
                ("copy", _copy_path(len(paths), image_size, batch_size)),
                ("augment", _augment_path(image_size, batch_size, target)),
            ):
                run(WARMUP_BATCHES)
                n, seconds = _timed(run, batches, clock if name != "augment" or per_core else time.perf_counter)
                rates[name] = n / seconds
    finally:
        torch.set_num_threads(threads)
    ours_rate, ref_rate = ours / ours_s, ref / ref_s
    return {
        "images_per_second": round(ours_rate, 1),
        "reference_images_per_second": round(ref_rate, 1),
        "speedup": round(ours_rate / ref_rate, 2),
        "cached_images_per_second": round(rates["cached"], 1),
        "copy_images_per_second": round(rates["copy"], 1),
        "augment_images_per_second": round(rates["augment"], 1),
        "cached_end_to_end_images_per_second": round(rates["cached_augmented"], 1),
        "cached_vs_copy": round(rates["cached"] / rates["copy"], 3),
        "cached_vs_reference": round(rates["cached"] / ref_rate, 1),
        "image_size": image_size,
        "workers": workers,
        "batch_size": batch_size,
        "images": ours,
        "reference_images": ref,
        "device": str(target),
        "torch_threads": 1,
        "timing": "process_cpu" if per_core else "wall",
        "mean_png_bytes": round(sum(os.path.getsize(p) for p in paths) / len(paths)),
    }
