"""Non-square input sizes (``S`` or ``HxW``) through config, CLI, decoding, GPU augmentation,
training (the checkpoint records its size) and evaluation (the checkpoint's size unless
``--image-size`` overrides it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mammo.cli import main
from mammo.config import AugmentConfig, DataConfig, PipelineParams, TrainConfig
from mammo.config_files import dump_config, load_config
from mammo.data.augment import BatchTransform
from mammo.data.decode import read_png
from mammo.engine.checkpoint import load_checkpoint
from mammo.imagesize import image_hw, parse_image_size, size_text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(512, 512), ("512", 512), ("1024x512", (1024, 512)), ("64X64", 64), ([1024, 512], (1024, 512)), ((48, 32), (48, 32))],
)
def test_sizes_parse_to_one_canonical_form(value, expected) -> None:
    assert parse_image_size(value) == expected
    assert image_hw(value) == (expected, expected) if isinstance(expected, int) else expected


@pytest.mark.parametrize("value", ["big", "1024x", "0", "16x9000", True, [1, 2, 3], 8.5])
def test_bad_sizes_are_refused(value) -> None:
    with pytest.raises(ValueError, match="image size"):
        parse_image_size(value)


def test_configs_store_sizes_canonically_and_round_trip() -> None:
    assert DataConfig().image_size == 512
    config = load_config(TrainConfig, sets=["data.image_size=1024x512"])
    assert config.data.image_size == (1024, 512)
    text = dump_config(config)
    assert "image_size: 1024x512" in text
    assert load_config(TrainConfig, overrides={"data.image_size": "1024x512"}) == config
    # Pipeline parameters are text (one KFP type), stage configs get the canonical form.
    params = PipelineParams(image_size=1024)
    assert params.image_size == "1024" and PipelineParams(image_size=[1024, 512]).image_size == "1024x512"


def test_decoding_resizes_only_when_the_stored_size_differs(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.arange(40 * 24, dtype=np.uint16).reshape(40, 24).astype(np.uint8)).save(path)
    same = read_png(str(path), (40, 24))
    assert same.shape == (1, 40, 24)
    np.testing.assert_array_equal(same[0].numpy(), np.asarray(Image.open(path)))
    assert read_png(str(path), "64x32").shape == (1, 64, 32)
    assert read_png(str(path), 16).shape == (1, 16, 16)


def _disc(height: int, width: int, radius: float) -> torch.Tensor:
    rows = torch.arange(height).view(-1, 1) - (height - 1) / 2
    cols = torch.arange(width).view(1, -1) - (width - 1) / 2
    return ((rows**2 + cols**2) <= radius**2).to(torch.uint8).mul(255).view(1, 1, height, width)


def test_rotation_is_rigid_on_non_square_images() -> None:
    """A disc stays a disc (same area, as tall as wide) under rotation of a 32x96 image; in
    normalised coordinates without the aspect correction it would be sheared into an ellipse."""
    torch.manual_seed(0)
    cfg = AugmentConfig(hflip=0, vflip=0, rotate_degrees=45, translate=0, scale_min=1, scale_max=1,
                        brightness=0, contrast=0)
    transform = BatchTransform(cfg, in_channels=1).train()
    images = _disc(32, 96, 12).repeat(8, 1, 1, 1)
    out = transform(images)
    background = out.min()
    for sample in out:
        mask = sample[0] > background + 1e-3
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert abs(height - width) <= 2
        assert math.isclose(int(mask.sum()), int((images[0, 0] > 0).sum()), rel_tol=0.08)


def test_train_and_evaluate_at_hxw(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from mammo.data.synth import write_synthetic_dataset
    from mammo.split import run_split

    write_synthetic_dataset(tmp_path / "data", patients=24, image_size=32, prevalence=0.4, seed=4)
    run_split(data=str(tmp_path / "data"), out=str(tmp_path / "split"), val_frac=0.25, test_frac=0.25, seed=1)
    common = ["--data", str(tmp_path / "data"), "--split", str(tmp_path / "split"), "--workers", "0",
              "--device", "cpu", "--batch-size", "8"]
    assert main(["train", *common, "--out", str(tmp_path / "run"), "--image-size", "40x24", "--backbone", "tinynet",
                 "--epochs", "1", "--json"]) == 0
    capsys.readouterr()
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert parse_image_size(payload["image_size"]) == (40, 24)
    assert "image_size: 40x24" in (tmp_path / "run" / "config.yaml").read_text()

    # Without --image-size the checkpoint's size is used; with it, it overrides (and says so).
    assert main(["evaluate", *common, "--out", str(tmp_path / "eval"), "--checkpoint", str(tmp_path / "run" / "last.pt"),
                 "--json"]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["candidates"][0]["image_size"] == "40x24"
    assert main(["evaluate", *common, "--out", str(tmp_path / "eval2"), "--checkpoint", str(tmp_path / "run" / "last.pt"),
                 "--image-size", "32", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["candidates"][0]["image_size"] == "32"
    assert "trained at 40x24 px; evaluating at 32 px" in caplog.text + captured.err
    assert size_text((40, 24)) == "40x24"
