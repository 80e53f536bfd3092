"""``mammo bench train``: images/s of the real training step for 1 and for N processes on the
same data and global batch, the scaling efficiency, and the share of step time spent waiting
for data (data stall).

Each measurement is a real distributed job (``torch.distributed.run``, NCCL on CUDA, gloo on
CPU) running the training path of ``mammo train``: ``train_loader`` -> ``BatchTransform`` ->
model forward/backward under DDP -> optimiser step, in the configured precision. Rank 0 times
``steps`` steps after ``warmup`` steps; the data stall is the time spent waiting for the next
batch (and its copy to the device) over the whole step time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mammo.errors import ConfigError, MammoError


def bench_train(
    data: str | Path,
    *,
    processes: int = 2,
    image_size: int = 64,
    backbone: str = "resnet18",
    batch_size: int = 16,
    steps: int = 10,
    warmup: int = 2,
    workers: int = 0,
    device: str = "auto",
    amp: bool = True,
    threads_per_process: int = 1,
) -> dict[str, Any]:
    """Run the step benchmark with 1 and with ``processes`` processes; return the figures."""
    if processes < 1 or steps < 1 or warmup < 0 or batch_size % processes:
        raise ConfigError(
            f"bench train: need processes >= 1, steps >= 1 and a global batch ({batch_size}) "
            f"divisible by the processes ({processes})"
        )
    options = {
        "data": str(Path(data).resolve()), "image_size": image_size, "backbone": backbone,
        "batch_size": batch_size, "steps": steps, "warmup": warmup, "workers": workers,
        "device": device, "amp": amp,
    }
    runs = {}
    for n in sorted({1, processes}):
        runs[str(n)] = _measure(n, options, threads_per_process)
    single, many = runs["1"], runs[str(processes)]
    efficiency = many["images_per_second"] / (processes * single["images_per_second"])
    return {
        "benchmark": "train_step",
        **{k: v for k, v in options.items() if k != "data"},
        "processes": processes,
        "runs": runs,
        "scaling_efficiency": round(efficiency, 3),
        "threads_per_process": threads_per_process,
    }


def _measure(processes: int, options: dict[str, Any], threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mammo-bench-") as tmp:
        result = Path(tmp) / "result.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "mammo.bench_train", json.dumps(options), str(result),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not result.exists():
            lines = [line for line in done.stderr.splitlines() if line.startswith("mammo: error")]
            detail = lines[0].removeprefix("mammo: error: ") if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise MammoError(f"bench train with {processes} process(es) failed: {detail}")
        return json.loads(result.read_text())


def _worker(options: dict[str, Any], result: Path) -> None:
    """One rank of the benchmark (started by torch.distributed.run)."""
    import torch

    from mammo.config import TrainConfig
    from mammo.config_files import load_config
    from mammo.data.augment import BatchTransform
    from mammo.data.layout import open_dataset
    from mammo.engine.data import reseed_loader, train_loader
    from mammo.engine.distributed import all_gather_objects
    from mammo.engine.runtime import runtime_for, seed_everything
    from mammo.losses import build_loss
    from mammo.models import build_model

    config = load_config(TrainConfig, overrides={
        "data.root": options["data"], "data.image_size": options["image_size"],
        "data.batch_size": options["batch_size"], "data.workers": options["workers"],
        "model.backbone": options["backbone"], "device": options["device"], "amp": options["amp"],
    })
    with runtime_for(config) as runtime:
        seed_everything(0)
        table, paths = open_dataset(config.data.root)
        rows = table.assign(path=paths)
        device = runtime.device
        model = build_model(config.model).to(device, memory_format=torch.channels_last)
        net = model
        if runtime.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None
            )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = build_loss(config.loss, float(rows["cancer"].mean())).to(device)
        transform = BatchTransform(config.augment, config.model.in_channels).to(device).train()
        loader = train_loader(rows, config, runtime, seed=0)
        net.train()

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def batches():
            epoch = 0
            while True:
                reseed_loader(loader, epoch)
                yield from loader
                epoch += 1

        stream = batches()
        waited = total = 0.0
        images = 0
        for step in range(options["warmup"] + options["steps"]):
            sync()
            start = time.perf_counter()
            batch = next(stream)
            x = batch["images"].to(device, non_blocking=True)
            y = batch["labels"].to(device, non_blocking=True)
            sync()
            fetched = time.perf_counter()
            with runtime.precision.autocast():
                loss = loss_fn(net(transform(x)).squeeze(1).float(), y)
            optimizer.zero_grad(set_to_none=True)
            runtime.precision.scaler.scale(loss).backward()
            runtime.precision.scaler.step(optimizer)
            runtime.precision.scaler.update()
            sync()
            end = time.perf_counter()
            if step >= options["warmup"]:
                waited += fetched - start
                total += end - start
                images += len(y)
        parts = all_gather_objects((images, total, waited), runtime.world_size)
        if runtime.is_main:
            seconds = max(p[1] for p in parts)
            result.write_text(json.dumps({
                "images_per_second": round(sum(p[0] for p in parts) / seconds, 2),
                "data_stall_share": round(max(p[2] / p[1] for p in parts), 4),
                "step_seconds": round(seconds / options["steps"], 4),
                "device": str(device),
                "precision": "bf16/fp16 autocast" if runtime.precision.active else "fp32",
                "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                if device.type == "cuda" else None,
            }))


def main(argv: list[str] | None = None) -> int:
    from mammo.console import run_guarded, setup_logging

    parser = argparse.ArgumentParser(prog="mammo.bench_train")
    parser.add_argument("options")
    parser.add_argument("result")
    args = parser.parse_args(argv)
    setup_logging()
    return run_guarded(lambda: _worker(json.loads(args.options), Path(args.result)))


if __name__ == "__main__":
    sys.exit(main())
