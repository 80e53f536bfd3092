"""The breast's box in a displayed mammogram, and the side of its chest wall.

On a preview (the image subsampled to at most ``PREVIEW_SIDE`` pixels a side): Otsu's threshold
separates tissue from the dark background, the largest connected component is the breast (a
burnt-in label or marker in a corner is a separate, smaller component), and its bounding box
plus a margin, scaled back to full resolution, is the crop. When the mask is implausible - too
small, or covering nearly the whole image (a failed threshold) - the full image is used and the
reason recorded. The chest wall is on the edge where the breast touches the border most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

#: Longest side of the preview the mask is computed on.
PREVIEW_SIDE = 512
Side = Literal["left", "right"]


@dataclass(frozen=True)
class Box:
    """Rows ``top:bottom`` and columns ``left:right`` (half-open) in full-resolution pixels."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True)
class Roi:
    box: Box
    chest_wall: Side
    fallback: str  # "" when the breast's box was used, else why the full image was
    mask_fraction: float  # share of the image the breast mask covers


def otsu_threshold(image: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: the level maximising the between-class variance
    (pixels ``> t`` are foreground)."""
    hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    mass0 = np.cumsum(hist * levels)
    mean0 = np.divide(mass0, weight0, out=np.zeros(256), where=weight0 > 0)
    mean1 = np.divide(mass0[-1] - mass0, weight1, out=np.zeros(256), where=weight1 > 0)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return int(np.argmax(between))


def preview(image: np.ndarray) -> tuple[np.ndarray, int]:
    """The image subsampled by an integer step to at most ``PREVIEW_SIDE`` a side, as uint8,
    and the step."""
    step = max(1, -(-max(image.shape) // PREVIEW_SIDE))
    small = image[::step, ::step]
    if small.dtype != np.uint8:
        small = (small >> 8).astype(np.uint8) if small.dtype == np.uint16 else small.astype(np.uint8)
    return small, step


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (all False when it is empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def chest_wall_side(mask: np.ndarray) -> Side:
    """The side whose border column band the breast covers most (left on a tie)."""
    band = max(1, mask.shape[1] // 20)
    left = int(mask[:, :band].sum())
    right = int(mask[:, -band:].sum())
    return "right" if right > left else "left"


def find_roi(
    image: np.ndarray,
    *,
    margin: float = 0.02,
    min_fraction: float = 0.05,
    max_fraction: float = 0.95,
) -> Roi:
    """The breast's box in a displayed image (tissue bright), with ``margin`` (a fraction of
    the image's height and width) on every side, clipped to the image; the full image when the
    breast mask covers less than ``min_fraction`` or more than ``max_fraction`` of it."""
    height, width = image.shape
    small, step = preview(image)
    threshold = otsu_threshold(small)
    mask = largest_component(small > threshold)
    fraction = float(mask.mean()) if mask.size else 0.0
    full = Box(0, 0, height, width)
    side = chest_wall_side(mask) if mask.any() else "left"
    if fraction < min_fraction:
        return Roi(full, side, f"breast mask covers {fraction:.1%} of the image (< {min_fraction:.0%})", fraction)
    if fraction > max_fraction:
        return Roi(full, side, f"breast mask covers {fraction:.1%} of the image (> {max_fraction:.0%})", fraction)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    pad_y, pad_x = round(margin * height), round(margin * width)
    box = Box(
        top=max(0, int(rows[0]) * step - pad_y),
        left=max(0, int(cols[0]) * step - pad_x),
        bottom=min(height, (int(rows[-1]) + 1) * step + pad_y),
        right=min(width, (int(cols[-1]) + 1) * step + pad_x),
    )
    return Roi(box, side, "", fraction)
