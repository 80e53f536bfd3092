"""Throughput of the training data path against the research code's, on the same PNG files.

Besides: the same images read back from the decoded cache (``mammo.data.cache``), a plain
copy of the same bytes (the physical limit), and the batch augmentation on its own.

Ours is exactly what training runs: ``open_dataset`` -> ``MammoImages`` -> ``make_loader``
(shuffled) -> ``BatchTransform`` in training mode with the default augmentation, on the device.
The reference is the research code's per-image PIL path (open, convert to RGB, resize, random
rotation, to tensor, ImageNet normalisation) in one process. Torch runs on one thread, so with
``workers=0`` on the CPU both figures are per core (and measured in process CPU time).

``bench_predict`` (``mammo bench predict``) measures scoring on a CPU node instead: eager fp32
against each faster path, the evidence for ``mammo predict --runtime`` (``mammo.runtimes``).
"""

from __future__ import annotations

import copy
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


# --- mammo bench predict: scoring on CPU nodes ------------------------------------------------

#: Backbones, input size and labelled demo images of each scale; ``tiny`` checks the mechanics.
PREDICT_SCALES: dict[str, tuple[tuple[str, ...], int, int]] = {
    "full": (("resnet50", "efficientnet_b0"), 512, 8),
    "tiny": (("tinynet",), 32, 8),
}
#: Largest change of the demo split's AUC a path may make and still give "equal results".
AUC_TOLERANCE = 1e-3


def native_bf16() -> str | None:
    """The CPU flag that gives bf16 matrix arithmetic in hardware (AMX or AVX512-BF16), or None:
    without one PyTorch emulates bf16 and autocast only makes scoring slower."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)


def _demo_split(image_size: int, images: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images [N, 1, S, S] and labels of a small synthetic split (``mammo data synth``'s
    renderer), half of them cancers: what the AUC of each path is compared on."""
    from mammo.data.synth import _build_table, _render

    table = _build_table(max(8, images), 0.5, np.random.default_rng(seed))
    cancers = table[table["cancer"] == 1].head(images // 2)
    chosen = pd.concat([cancers, table[table["cancer"] == 0].head(images - len(cancers))])
    pixels = _render(chosen, image_size, torch.Generator().manual_seed(seed))
    return pixels, chosen["cancer"].to_numpy()


class _ChannelsLast(torch.nn.Module):
    """The scored network (``mammo.export._Scored``) with weights and activations in NHWC."""

    def __init__(self, scored: torch.nn.Module) -> None:
        super().__init__()
        self.transform = scored.transform
        self.model = copy.deepcopy(scored.model).to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transform(images).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.model(x).squeeze(1).float())


def _calibrated(scored: torch.nn.Module, demo: torch.Tensor) -> torch.nn.Module:
    """``scored`` with its BatchNorm statistics measured on the ``demo`` images and on uniform
    noise (what ``write_onnx`` probes with), and its head rescaled to logits of mean 0 and std 1
    there: an untrained network as it comes saturates to probabilities of exactly 0 or 1 (the
    activations grow through the blocks), which would make every path agree trivially, and
    inputs outside its calibration reach logits in the hundreds. Speed does not change;
    agreement is then tested for real."""
    noise = torch.randint(0, 256, demo.shape, generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    images = torch.cat([demo, noise])
    norms = [m for m in scored.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    scored.train()
    with torch.no_grad():
        for chunk in images.split(4):
            scored(chunk)
    scored.eval()
    head = [m for m in scored.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.inference_mode():
        logits = torch.logit(scored(images).double().clamp(1e-12, 1 - 1e-12))
    mean, std = float(logits.mean()), max(float(logits.std()), 1e-6)
    with torch.no_grad():
        head.weight /= std
        head.bias.sub_(mean).div_(std)
    return scored


def _torch_path(module: torch.nn.Module, bf16: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    def run(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(images).float().numpy()

    return run


def _bench_backbone(backbone: str, image_size: int, demo: tuple[torch.Tensor, np.ndarray], threads: list[int],
                    batch_size: int, batches: int, work: Path) -> dict[str, Any]:
    """One backbone: every path's agreement with eager on the demo split, then images/s at each
    thread count, the paths interleaved batch by batch so all see the same load."""
    from sklearn.metrics import roc_auc_score

    from mammo.config import ModelConfig
    from mammo.export import ONNX_TOLERANCE, _Scored, write_onnx
    from mammo.models import build_model
    from mammo.runtimes import onnx_probabilities, open_session

    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, weights=None)
    images, labels = demo
    scored = _calibrated(_Scored(build_model(config), config.in_channels), images)
    network = scored.model
    export = {"model": network.state_dict(), "model_config": config.model_dump(mode="json"), "image_size": image_size}
    start = time.perf_counter()
    onnx = write_onnx(export, work / f"{backbone}.onnx")
    export_seconds = time.perf_counter() - start
    bf16 = native_bf16()
    result: dict[str, Any] = {"onnx_export_seconds": round(export_seconds, 1), "onnx_bytes": onnx["size"],
                              "agreement": {}, "threads": {}}
    batch = images[:batch_size] if len(images) >= batch_size else images.repeat(-(-batch_size // len(images)), 1, 1, 1)[:batch_size]
    for count in threads:
        torch.set_num_threads(count)
        session = open_session(onnx["path"], onnx["sha256"], threads=count)
        paths: dict[str, Callable[[torch.Tensor], np.ndarray]] = {
            "eager": _torch_path(scored),
            "channels_last": _torch_path(_ChannelsLast(scored)),
            "onnx": lambda x, s=session: onnx_probabilities(s, x.numpy()),
        }
        if bf16:
            paths["bf16_autocast"] = _torch_path(scored, bf16=True)
        if not result["agreement"]:
            reference = paths["eager"](images)
            eager_auc = float(roc_auc_score(labels, reference))
            for name, run in paths.items():
                if name == "eager":
                    continue
                probs = run(images)
                diff, auc = float(np.abs(probs - reference).max()), float(roc_auc_score(labels, probs))
                result["agreement"][name] = {
                    "max_abs_diff": diff, "auc": round(auc, 6), "eager_auc": round(eager_auc, 6),
                    "equal": bool(diff <= ONNX_TOLERANCE and abs(auc - eager_auc) <= AUC_TOLERANCE),
                }
        for run in paths.values():
            run(batch)  # warm-up: first-call allocations, ORT's arenas
        seconds = dict.fromkeys(paths, 0.0)
        for _ in range(batches):
            for name, run in paths.items():
                start = time.perf_counter()
                run(batch)
                seconds[name] += time.perf_counter() - start
        rates = {name: batches * batch_size / s for name, s in seconds.items()}
        result["threads"][str(count)] = {
            name: {"images_per_second": round(rate, 2), "speedup": round(rate / rates["eager"], 2)}
            for name, rate in rates.items()
        }
    equal = [name for name, a in result["agreement"].items() if a["equal"]]
    slowest = {name: min(t[name]["speedup"] for t in result["threads"].values()) for name in equal}
    best = max(slowest, key=slowest.__getitem__, default=None)
    result["fastest_equal_path"] = best if best is not None and slowest[best] > 1.0 else "eager"
    return result


def bench_predict(scale: str = "full", threads: tuple[int, ...] = (1, 2), batch_size: int = 4, batches: int = 3,
                  workdir: str | Path | None = None) -> dict[str, Any]:
    """Images/s of eager fp32 and each faster CPU path (channels_last, ONNX Runtime, bf16 autocast
    where the CPU has native bf16) side by side, with each path's predictions against eager
    (largest difference; the demo split's AUC within ``AUC_TOLERANCE``). Untrained weights with
    calibrated normalisation (``_calibrated``): the speed does not depend on the weights, and
    every path is compared on the same network."""
    if scale not in PREDICT_SCALES:
        raise ConfigError(f"--scale {scale!r}: expected one of {', '.join(PREDICT_SCALES)}")
    if batch_size < 1 or batches < 1 or not threads or min(threads) < 1:
        raise ConfigError("bench predict: --batch-size, --batches and every --threads must be >= 1")
    from mammo.runtimes import import_onnxruntime, require_onnx

    require_onnx(export=True)
    onnxruntime = import_onnxruntime()
    backbones, image_size, demo_images = PREDICT_SCALES[scale]
    demo = _demo_split(image_size, demo_images)
    before = torch.get_num_threads()
    bf16 = native_bf16()
    try:
        with tempfile.TemporaryDirectory(prefix="mammo-bench-predict-", dir=workdir) as tmp:
            models = {bb: _bench_backbone(bb, image_size, demo, list(threads), batch_size, batches, Path(tmp))
                      for bb in backbones}
    finally:
        torch.set_num_threads(before)
    return {
        "scale": scale, "image_size": image_size, "batch_size": batch_size, "batches": batches,
        "demo_images": demo_images, "threads": list(threads), "timing": "wall, paths interleaved batch by batch",
        "cpu": {"isa": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(), "native_bf16": bf16},
        "skipped": {} if bf16 else {"bf16_autocast": "no native bf16 on this CPU (amx_bf16/avx512_bf16): emulated, slower"},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "models": models,
    }
