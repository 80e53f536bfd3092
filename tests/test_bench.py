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
