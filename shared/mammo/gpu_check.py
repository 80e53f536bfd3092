"""``mammo bench gpu`` (``make gpu-check``): every GPU path of the project measured in one run,
printed as one JSON object.

- ``cuda``: torch, CUDA, cuDNN and NCCL versions, the device and its memory, bf16 support.
- ``nccl``: a process group of world size 1 (NCCL) all-reduces a tensor.
- ``precision``: bf16 autocast gives bf16 matmuls; a channels_last convolution stays channels_last.
- ``train``: the real training step (``mammo bench train``: loader -> augmentation -> forward and
  backward under bf16 autocast -> optimiser step) on synthetic PNGs read through the filled
  decoded cache: ResNet-50 at 512 px and ConvNeXt-small at 1024x512; images/s, data-stall
  share, peak GPU memory.
- ``evaluate``: inference images/s of the ResNet-50 (eval mode, bf16 autocast) from the cache.
- ``dicom_decode``: JPEG 2000 DICOMs decoded on the GPU by nvImageCodec against the CPU path
  (pydicom + pylibjpeg-openjpeg) on the same files, with the largest pixel difference; skipped
  with the reason when ``nvidia-nvimgcodec`` is not installed.

``--device cpu --scale tiny`` runs the same code on CPU at toy sizes (gloo instead of NCCL): a
check of the mechanics for machines without a GPU, not a measurement.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from mammo.console import environment
from mammo.errors import MammoError

Scale = Literal["full", "tiny"]

#: Sizes of each scale: synthetic patients (about 4 images each, generated once and linked
#: ``copies`` times under new ids: generating mammogram-like PNGs takes ~0.1 s each on one core,
#: and the timed paths read the decoded cache, where every path is an entry of its own) and the
#: two training setups (backbone, input size, batch).
SCALES: dict[str, dict[str, Any]] = {
    "full": {
        "patients": 64, "copies": 4, "png_size": 512, "steps": 40, "warmup": 10, "workers": 8, "eval_batches": 20,
        "dicoms": 32, "dicom_size": (2048, 1664),
        "setups": [("resnet50", "512", 64), ("convnext_small", "1024x512", 32)],
    },
    "tiny": {
        "patients": 4, "copies": 2, "png_size": 64, "steps": 2, "warmup": 1, "workers": 0, "eval_batches": 2,
        "dicoms": 2, "dicom_size": (64, 48),
        "setups": [("resnet18", "32", 4), ("tinynet", "32x16", 4)],
    },
}


class NoGpuError(MammoError):
    """No CUDA device: the check cannot run here (exit 2)."""

    exit_code = 2


def check_gpu(device: str = "cuda", scale: Scale = "full", workdir: str | None = None) -> dict[str, Any]:
    """Run every section; return the figures. ``device`` cuda needs a CUDA GPU (``NoGpuError``)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise NoGpuError(
            "gpu check: no CUDA device (torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU"
        )
    sizes = SCALES[scale]
    started = time.perf_counter()
    with _scratch(workdir) as root, environment({"MAMMO_CACHE_DIR": str(root / "cache")}):
        result: dict[str, Any] = {"benchmark": "gpu_check", "device": device, "scale": scale}
        result["cuda"] = _cuda_facts(device)
        result["nccl"] = _process_group(device)
        result["precision"] = _precision(device)
        data = root / "data"
        _synthetic_pngs(data, sizes)
        result["train"] = [_train(data, backbone, size, batch, device, sizes) for backbone, size, batch in sizes["setups"]]
        backbone, size, batch = sizes["setups"][0]
        result["evaluate"] = _evaluate(data, backbone, size, batch, device, sizes)
        result["dicom_decode"] = _dicom_decode(root / "dicom", device, sizes)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


@contextlib.contextmanager
def _scratch(workdir: str | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mammo-gpu-check-", dir=workdir) as tmp:
        yield Path(tmp)


def _cuda_facts(device: str) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device != "cuda":
        return facts
    props = torch.cuda.get_device_properties(0)
    nccl = torch.cuda.nccl.version()
    return {
        **facts,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "devices": torch.cuda.device_count(),
        "bf16": torch.cuda.is_bf16_supported(),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_group(device: str) -> dict[str, Any]:
    """World size 1 on this machine: NCCL on CUDA (gloo on CPU) initialises and all-reduces."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    started = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        tensor = torch.full((1024,), 2.0, device=device)
        dist.all_reduce(tensor)
        ok = bool(torch.all(tensor == 2.0).item())
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "world_size": 1, "all_reduce_ok": ok, "seconds": round(time.perf_counter() - started, 2)}


def _precision(device: str) -> dict[str, Any]:
    import torch

    a = torch.randn(64, 64, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        product = a @ a
    conv = torch.nn.Conv2d(3, 8, 3).to(device, memory_format=torch.channels_last)
    image = torch.randn(2, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    out = conv(image)
    return {
        "bf16_autocast_matmul": str(product.dtype).removeprefix("torch."),
        "channels_last_conv": out.is_contiguous(memory_format=torch.channels_last),
    }


def _synthetic_pngs(data: Path, sizes: dict[str, Any]) -> None:
    """The synthetic dataset, then ``copies`` - 1 more patients per patient whose PNGs are hard
    links of the first's (new patient and image ids, new paths)."""
    import pandas as pd

    from mammo.data.synth import write_synthetic_dataset

    write_synthetic_dataset(data, patients=sizes["patients"], image_size=sizes["png_size"], prevalence=0.2, seed=0)
    table = pd.read_csv(data / "train.csv", dtype={"patient_id": str, "image_id": str})
    step = 10 ** len(str(max(int(v) for v in (*table["patient_id"], *table["image_id"]))))
    copies = [table]
    for k in range(1, sizes["copies"]):
        copy = table.assign(
            patient_id=(table["patient_id"].astype(int) + k * step).astype(str),
            image_id=(table["image_id"].astype(int) + k * step).astype(str),
        )
        for old, new in zip(table.itertuples(), copy.itertuples(), strict=True):
            target = data / "train_images" / new.patient_id / f"{new.image_id}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(data / "train_images" / old.patient_id / f"{old.image_id}.png", target)
        copies.append(copy)
    pd.concat(copies).to_csv(data / "train.csv", index=False)


def _fill(data: Path, size: str, workers: int) -> dict[str, Any]:
    from mammo.data.prefill import fill_cache
    from mammo.imagesize import parse_image_size

    return fill_cache(str(data), None, parse_image_size(size), workers=workers)


def _train(data: Path, backbone: str, size: str, batch: int, device: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """The training step through the filled cache (one process)."""
    from mammo.bench_train import bench_train

    filled = _fill(data, size, sizes["workers"])
    figures = bench_train(
        data, processes=1, image_size=size, backbone=backbone, batch_size=batch, steps=sizes["steps"],
        warmup=sizes["warmup"], workers=sizes["workers"], device=device, amp=True,
        threads_per_process=max(1, (os.cpu_count() or 2) // 2),
    )
    run = figures["runs"]["1"]
    return {
        "backbone": backbone, "image_size": size, "batch_size": batch, "images": filled["images"],
        "cache_fill_seconds": filled["seconds"], **run,
    }


def _evaluate(data: Path, backbone: str, size: str, batch: int, device: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Inference images/s from the cache: eval mode, bf16 autocast on CUDA, no gradients."""
    import torch

    from mammo.config import ModelConfig
    from mammo.data.augment import BatchTransform
    from mammo.data.cache import open_cache, resolve_cache_root
    from mammo.data.dataset import MammoImages, make_loader
    from mammo.data.layout import open_dataset
    from mammo.imagesize import image_hw, parse_image_size
    from mammo.models import build_model

    image_size = parse_image_size(size)
    _, paths = open_dataset(str(data))
    names = [str(p) for p in paths]
    cache = open_cache(resolve_cache_root("auto"), names, image_hw(image_size), verify=False)
    dataset = MammoImages(names, [0] * len(names), image_size, cache=cache, cache_rows=range(len(names)))
    loader = make_loader(dataset, batch_size=batch, workers=sizes["workers"], device=torch.device(device))
    model = build_model(ModelConfig(backbone=backbone)).to(device, memory_format=torch.channels_last).eval()
    transform = BatchTransform(None, 1).to(device).eval()
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def batches() -> Iterator[dict[str, Any]]:
        while True:
            yield from loader

    stream = batches()
    images = 0
    with torch.inference_mode(), autocast:
        model(transform(next(stream)["images"].to(device)))  # warm-up (cuDNN autotuning)
        sync()
        started = time.perf_counter()
        for _ in range(sizes["eval_batches"]):
            x = next(stream)["images"].to(device, non_blocking=True)
            model(transform(x))
            images += len(x)
        sync()
    seconds = time.perf_counter() - started
    return {"backbone": backbone, "image_size": size, "batch_size": batch, "images_per_second": round(images / seconds, 1)}


def _dicom_decode(folder: Path, device: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """JPEG 2000 DICOMs: CPU decode (pydicom + openjpeg) against nvImageCodec on the GPU."""
    import numpy as np
    import pydicom
    from pydicom.encaps import generate_fragmented_frames

    from mammo.dicom.synth import write_synthetic_dicoms

    paths = write_synthetic_dicoms(folder, count=sizes["dicoms"], size=sizes["dicom_size"], compression="j2k")
    started = time.perf_counter()
    cpu = [pydicom.dcmread(p).pixel_array for p in paths]
    cpu_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "files": len(paths), "size": "x".join(map(str, sizes["dicom_size"])),
        "cpu_images_per_second": round(len(paths) / cpu_seconds, 1),
    }
    if device != "cuda":
        return {**result, "gpu": None, "reason": "no CUDA device"}
    try:
        from nvidia import nvimgcodec
    except ImportError as err:
        return {**result, "gpu": None, "reason": f"nvidia-nvimgcodec is not installed ({err})"}
    import torch

    codestreams = []
    for path in paths:
        ds = pydicom.dcmread(path)
        [frame] = [b"".join(fragments) for fragments in generate_fragmented_frames(ds.PixelData)]
        codestreams.append(frame)
    decoder = nvimgcodec.Decoder()
    decoder.decode(codestreams[0])  # warm-up: the codec's first call sets up its state
    torch.cuda.synchronize()
    started = time.perf_counter()
    images = decoder.decode(codestreams)
    gpu = [torch.as_tensor(image, device="cuda") for image in images]
    torch.cuda.synchronize()
    gpu_seconds = time.perf_counter() - started
    difference = max(
        int(np.abs(g.cpu().numpy().reshape(c.shape).astype(np.int64) - c.astype(np.int64)).max())
        for g, c in zip(gpu, cpu, strict=True)
    )
    return {
        **result,
        "gpu_images_per_second": round(len(paths) / gpu_seconds, 1),
        "speedup": round(cpu_seconds / gpu_seconds, 2),
        "max_abs_difference": difference,
        "nvimgcodec": getattr(nvimgcodec, "__version__", "unknown"),
    }
