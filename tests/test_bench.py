"""The data-path benchmark runs both paths and reports positive figures (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mammo.bench import bench_data
from mammo.cli import main
from mammo.errors import ConfigError


def test_bench_reports_both_paths(tiny_dataset: Path) -> None:
    threads = torch.get_num_threads()
    result = bench_data(tiny_dataset, image_size=32, workers=0, batches=3, batch_size=4, device="cpu")
    for key in ("images_per_second", "reference_images_per_second", "speedup", "cached_images_per_second",
                "copy_images_per_second", "augment_images_per_second", "cached_end_to_end_images_per_second",
                "cached_vs_copy", "cached_vs_reference"):
        assert result[key] > 0, key
    assert result["images"] == result["reference_images"] == 12
    assert (result["image_size"], result["workers"], result["batch_size"], result["device"]) == (32, 0, 4, "cpu")
    assert result["mean_png_bytes"] > 0
    assert torch.get_num_threads() == threads  # restored after the one-thread measurement


def test_bench_cli_prints_one_json_line(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "data", "--data", str(tiny_dataset), "--image-size", "32", "--workers", "1",
                 "--batches", "2", "--batch-size", "4", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["workers"] == 1 and result["images"] == 8 and result["images_per_second"] > 0


def test_bench_rejects_bad_arguments(tiny_dataset: Path) -> None:
    with pytest.raises(ConfigError, match="batches"):
        bench_data(tiny_dataset, image_size=32, batches=0)


@pytest.mark.slow
def test_bench_train_measures_one_and_two_processes(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "train", "--data", str(tiny_dataset), "--nproc", "2", "--image-size", "32",
                 "--batch-size", "8", "--steps", "2", "--warmup", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result["runs"]) == {"1", "2"}
    for run in result["runs"].values():
        assert run["images_per_second"] > 0 and 0 <= run["data_stall_share"] < 1
        assert run["device"] == "cpu" and run["precision"] == "fp32"
    assert result["scaling_efficiency"] > 0


def test_bench_train_refuses_an_indivisible_batch(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "train", "--data", str(tiny_dataset), "--nproc", "2", "--batch-size", "7"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_gpu_check_without_cuda_exits_2_in_one_line(tmp_path: Path) -> None:
    """`make gpu-check`'s Python half on a machine (or, here, a process) that sees no CUDA device."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    mammo = Path(sys.executable).with_name("mammo")
    done = subprocess.run([str(mammo), "bench", "gpu"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "mammo: error: gpu check: no CUDA device (torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU"
    )
    assert list(tmp_path.iterdir()) == []  # nothing prepared before the refusal


@pytest.mark.slow  # four real training/evaluation runs, if tiny
def test_gpu_check_mechanics_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every section of the GPU check runs (on CPU, toy sizes, gloo) and reports what it
    measured; its scratch folder is removed."""
    assert main(["bench", "gpu", "--device", "cpu", "--scale", "tiny", "--workdir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nccl"] == {**result["nccl"], "backend": "gloo", "world_size": 1, "all_reduce_ok": True}
    assert result["precision"] == {"bf16_autocast_matmul": "bfloat16", "channels_last_conv": True}
    assert [(t["backbone"], t["image_size"]) for t in result["train"]] == [("resnet18", "32"), ("tinynet", "32x16")]
    for figures in (*result["train"], result["evaluate"]):
        assert figures["images_per_second"] > 0
    # Each generated patient linked once more under new ids: twice the images, one cache entry each.
    assert all(t["images"] % 2 == 0 and t["images"] > 0 for t in result["train"])
    assert 0 <= result["train"][0]["data_stall_share"] <= 1
    assert result["dicom_decode"]["cpu_images_per_second"] > 0 and result["dicom_decode"]["gpu"] is None
    assert list(tmp_path.iterdir()) == []
