"""Batch augmentation and normalisation on the device."""

from __future__ import annotations

import pytest
import torch

from mammo.config import AugmentConfig
from mammo.data.augment import GRAY_MEAN, GRAY_STD, BatchTransform

NO_GEOMETRY = {"hflip": 0.0, "vflip": 0.0, "rotate_degrees": 0.0, "translate": 0.0, "scale_min": 1.0, "scale_max": 1.0}
NO_INTENSITY = {"brightness": 0.0, "contrast": 0.0}


def _batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen)


def _normalised(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - GRAY_MEAN) / GRAY_STD


def test_eval_mode_only_normalises() -> None:
    images = _batch()
    transform = BatchTransform(AugmentConfig(), in_channels=1).eval()
    out = transform(images)
    assert out.dtype == torch.float32 and out.shape == (4, 1, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, _normalised(images))
    black = transform(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    torch.testing.assert_close(black, torch.full((1, 1, 2, 2), -0.449 / 0.226))
    assert torch.equal(transform(images), out)
    assert images.dtype == torch.uint8  # input untouched


@pytest.mark.parametrize("augment", [None, AugmentConfig(enabled=False)])
def test_without_augmentation_training_mode_only_normalises(augment) -> None:
    images = _batch()
    out = BatchTransform(augment, in_channels=1).train()(images)
    torch.testing.assert_close(out, _normalised(images))


def test_three_channels_repeat_the_image_channels_last() -> None:
    images = _batch()
    for mode in ("train", "eval"):
        transform = getattr(BatchTransform(AugmentConfig(), in_channels=3), mode)()
        out = transform(images)
        assert out.shape == (4, 3, 32, 32)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_training_mode_changes_images_per_sample() -> None:
    images = _batch(n=8).repeat_interleave(2, dim=0)  # pairs of identical inputs
    transform = BatchTransform(AugmentConfig(), in_channels=1).train()
    torch.manual_seed(0)
    out = transform(images)
    assert out.shape == (16, 1, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(out, _normalised(images))
    assert not torch.allclose(out[0::2], out[1::2])  # each sample draws its own parameters
    low, high = -GRAY_MEAN / GRAY_STD, (1 - GRAY_MEAN) / GRAY_STD
    assert out.min() >= low - 1e-5 and out.max() <= high + 1e-5


def test_seeding_reproduces_the_augmentation() -> None:
    images = _batch()
    transform = BatchTransform(AugmentConfig(), in_channels=1).train()
    torch.manual_seed(7)
    first = transform(images)
    torch.manual_seed(7)
    assert torch.equal(transform(images), first)
    torch.manual_seed(8)
    assert not torch.equal(transform(images), first)


@pytest.mark.parametrize(("flip", "dim"), [("hflip", -1), ("vflip", -2)])
def test_certain_flip_mirrors_exactly(flip: str, dim: int) -> None:
    images = _batch()
    cfg = AugmentConfig(**{**NO_GEOMETRY, **NO_INTENSITY, flip: 1.0})
    out = BatchTransform(cfg, in_channels=1).train()(images)
    torch.testing.assert_close(out, _normalised(images.flip(dim)))


def test_translation_and_rotation_move_content_with_black_borders() -> None:
    images = torch.full((6, 1, 32, 32), 200, dtype=torch.uint8)
    cfg = AugmentConfig(**{**NO_GEOMETRY, **NO_INTENSITY, "rotate_degrees": 30.0, "translate": 0.2})
    torch.manual_seed(1)
    out = BatchTransform(cfg, in_channels=1).train()(images)
    black = -GRAY_MEAN / GRAY_STD
    corners = out[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners - black).abs().min() < 1e-4  # some corner of the image was moved off
    centre = out[:, 0, 16, 16]
    torch.testing.assert_close(centre, torch.full_like(centre, (200 / 255 - GRAY_MEAN) / GRAY_STD))


def test_brightness_and_contrast_jitter_is_per_sample_and_pixel_aligned() -> None:
    images = _batch(n=6)
    cfg = AugmentConfig(**{**NO_GEOMETRY, "brightness": 0.3, "contrast": 0.3})
    torch.manual_seed(2)
    out = BatchTransform(cfg, in_channels=1).train()(images)
    reference = _normalised(images)
    for sample, expected in zip(out, reference, strict=True):
        # An affine intensity change keeps pixels in order (up to clipping).
        corr = torch.corrcoef(torch.stack([sample.flatten(), expected.flatten()]))[0, 1]
        assert corr > 0.98
    assert not torch.allclose(out, reference, atol=1e-3)


def test_empty_batch() -> None:
    out = BatchTransform(AugmentConfig(), in_channels=1).train()(torch.empty(0, 1, 32, 32, dtype=torch.uint8))
    assert out.shape == (0, 1, 32, 32)


def test_varying_batch_sizes_reuse_memory_correctly() -> None:
    transform = BatchTransform(AugmentConfig(**{**NO_GEOMETRY, **NO_INTENSITY, "hflip": 1.0}), in_channels=1).train()
    big, small = _batch(n=8), _batch(n=3, seed=1)
    for images in (big, small, big):
        torch.testing.assert_close(transform(images), _normalised(images.flip(-1)))


def test_sampling_grid_equals_affine_grid() -> None:
    from mammo.data.augment import _sampling_grid

    theta = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0))
    for height, width in ((32, 32), (17, 40)):
        expected = torch.nn.functional.affine_grid(theta, [3, 1, height, width], align_corners=False)
        torch.testing.assert_close(_sampling_grid(theta, torch.empty(3, 2, height, width)), expected)
