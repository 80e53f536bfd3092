"""Throughput of the training data path against the research code's, on the same PNG files.

Ours is exactly what training runs: ``open_dataset`` -> ``MammoImages`` -> ``make_loader``
(shuffled) -> ``BatchTransform`` in training mode with the default augmentation, on the device.
The reference is the research code's per-image PIL path (open, convert to RGB, resize, random
rotation, to tensor, ImageNet normalisation) in one process. Torch runs on one thread, so with
``workers=0`` on the CPU both figures are per core (and measured in process CPU time).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms

from mammo.config import AugmentConfig
from mammo.data.augment import BatchTransform
from mammo.data.dataset import MammoImages, make_loader
from mammo.data.layout import open_dataset
from mammo.engine.runtime import resolve_device
from mammo.errors import ConfigError
from mammo.imagesize import image_hw as size_hw

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
    transform = BatchTransform(AugmentConfig(), in_channels=1).to(device).train()
    stream = _batches_forever(loader)

    def run(n: int) -> int:
        images = 0
        for batch in itertools.islice(stream, n):
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
            transforms.Resize(list(size_hw(image_size))),
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
    if batches < 1 or batch_size < 1 or workers < 0 or min(size_hw(image_size)) < 16:
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
    finally:
        torch.set_num_threads(threads)
    ours_rate, ref_rate = ours / ours_s, ref / ref_s
    return {
        "images_per_second": round(ours_rate, 1),
        "reference_images_per_second": round(ref_rate, 1),
        "speedup": round(ours_rate / ref_rate, 2),
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
