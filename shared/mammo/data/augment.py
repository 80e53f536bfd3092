"""Batch-level augmentation and normalisation on the training device.

The loader ships uint8 batches; this module turns them into normalised float input. In training
mode it first applies, per sample, random flips, a small rotation/translation/scale (all folded
into one affine matrix, so one sampling grid and one ``grid_sample`` per batch) and
brightness/contrast jitter (folded into the normalisation, so one fused multiply-add).
Resampling is nearest-neighbour, torchvision's default for RandomAffine/RandomRotation and the
research code's: every output pixel is an original pixel value (no smoothing of tiny bright
calcifications), and on the CPU it costs half of bilinear sampling. Random
parameters are drawn on the CPU from torch's global RNG, so ``torch.manual_seed`` reproduces a
run and the same seed gives the same augmentation on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mammo.config import AugmentConfig

#: Grayscale statistics: the mean of ImageNet's channel means/stds, because 1-channel models
#: get conv1 as the sum of the ImageNet weights over the colour channels.
GRAY_MEAN = 0.449
GRAY_STD = 0.226


class BatchTransform(torch.nn.Module):
    """uint8 [B,1,H,W] on the device -> normalised float [B,C,H,W], channels_last."""

    def __init__(self, augment: AugmentConfig | None, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.augment = augment
        self.in_channels = in_channels
        # Reused intermediate memory: fresh 16-64 MB temporaries every batch cost the CPU more
        # in page faults than the arithmetic on them.
        self._scratch: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Normalisation of 0..255 pixel values as y = x * scale + shift.
        scale = 1.0 / (255.0 * GRAY_STD)
        shift = -GRAY_MEAN / GRAY_STD
        cfg = self.augment
        if self.training and cfg is not None and cfg.enabled and images.shape[0] > 0:
            y = self._augment(images, cfg, scale, shift)
        else:
            y = images.to(torch.float32, copy=True).mul_(scale).add_(shift)
        if self.in_channels == 3:
            y = y.expand(-1, 3, -1, -1)
        return y.contiguous(memory_format=torch.channels_last)

    def _augment(self, images: torch.Tensor, cfg: AugmentConfig, scale: float, shift: float) -> torch.Tensor:
        batch, _, height, width = images.shape
        params = _draw_params(cfg, batch).to(images.device, non_blocking=True)
        pixels = self._memory("pixels", images.shape, images.device).copy_(images)
        if _moves_pixels(cfg):
            memory = self._memory("grid", (batch, 2, height, width), images.device)
            grid = _sampling_grid(_affine_matrices(params, aspect=height / width), memory)
            pixels = F.grid_sample(pixels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            out: torch.Tensor | None = pixels
        else:
            out = None
        # brightness * (contrast blend towards the image mean), folded into scale and shift.
        brightness, contrast = params[:, 6], params[:, 7]
        mean = pixels.mean(dim=(1, 2, 3))
        gain = (scale * brightness * contrast).view(-1, 1, 1, 1)
        offset = (shift + scale * brightness * (1 - contrast) * mean).view(-1, 1, 1, 1)
        # Clip to what 0..255 pixels normalise to, as jitter in image space would.
        return torch.addcmul(offset, pixels, gain, out=out).clamp_(shift, shift + 255.0 * scale)

    def _memory(self, name: str, shape: torch.Size | tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 workspace of ``shape`` on ``device``, kept across batches of that image size."""
        held = self._scratch.get(name)
        if held is None or held.device != device or held.shape[0] < shape[0] or held.shape[1:] != shape[1:]:
            held = self._scratch[name] = torch.empty(shape, device=device)
        return held[: shape[0]]


def _moves_pixels(cfg: AugmentConfig) -> bool:
    return bool(
        cfg.hflip or cfg.vflip or cfg.rotate_degrees or cfg.translate
        or cfg.scale_min != 1 or cfg.scale_max != 1
    )


def _draw_params(cfg: AugmentConfig, batch: int) -> torch.Tensor:
    """[B, 8] per-sample flip_x, flip_y, angle (rad), zoom, shift_x, shift_y, brightness, contrast.

    Drawn on the CPU from the global RNG with a fixed number of draws, whatever the settings.
    """
    u = torch.rand(batch, 8)
    centred = 2 * u - 1
    return torch.stack(
        [
            torch.where(u[:, 0] < cfg.hflip, -1.0, 1.0),
            torch.where(u[:, 1] < cfg.vflip, -1.0, 1.0),
            centred[:, 2] * math.radians(cfg.rotate_degrees),
            cfg.scale_min + u[:, 3] * (cfg.scale_max - cfg.scale_min),
            # affine_grid works in [-1, 1] coordinates: a shift of f * size is 2 * f there.
            centred[:, 4] * 2 * cfg.translate,
            centred[:, 5] * 2 * cfg.translate,
            1 + centred[:, 6] * cfg.brightness,
            1 + centred[:, 7] * cfg.contrast,
        ],
        dim=1,
    )


def _sampling_grid(theta: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """What ``F.affine_grid(theta, ..., align_corners=False)`` returns, written into ``out``.

    ``out`` is [B, 2, H, W]: one broadcast add fills both coordinate planes, and the returned
    [B, H, W, 2] view is what ``grid_sample`` takes. ``affine_grid``'s batched matmul over every
    pixel is several times slower on the CPU.
    """
    height, width = out.shape[-2:]
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=out.device)
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=out.device)
    along_x = theta[:, :, 0, None] * xs + theta[:, :, 2, None]
    along_y = theta[:, :, 1, None] * ys
    torch.add(along_x[:, :, None, :], along_y[:, :, :, None], out=out)
    return out.permute(0, 2, 3, 1)


def _affine_matrices(params: torch.Tensor, aspect: float = 1.0) -> torch.Tensor:
    """Per-sample [2, 3] maps from output to input coordinates (flip, rotation, zoom, shift).

    Coordinates are normalised to [-1, 1] on both axes; for a non-square image (``aspect`` =
    height / width) the rotation's cross terms are scaled so that it rotates in pixel space
    (a rigid rotation, not a shear)."""
    flip_x, flip_y, angle, zoom, shift_x, shift_y = params[:, :6].unbind(dim=1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    row_x = torch.stack([cos * flip_x, -sin * flip_y * aspect, shift_x], dim=1)
    row_y = torch.stack([sin * flip_x / aspect, cos * flip_y, shift_y], dim=1)
    return torch.stack([row_x, row_y], dim=1)
