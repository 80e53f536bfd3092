"""Decode one PNG into the uint8 grayscale tensor the training data path ships around.

This is the only per-sample CPU work of the data path: read, decode (libpng via torchvision),
scale 16-bit to 8-bit and resize only when the stored size differs. Everything else
(augmentation, float conversion, normalisation) runs on whole batches on the training device.
"""

from __future__ import annotations

import re

import torch
from torchvision.io import ImageReadMode, decode_png, read_file
from torchvision.transforms.v2 import functional as TF

from mammo.errors import DataError
from mammo.imagesize import ImageSize, image_hw


def _reason(exc: RuntimeError) -> str:
    """torchvision's message without its C++ source location prefix."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
    return re.sub(r"^\w+, \S+:\d+, ", "", text).rstrip(".")


def read_png(path: str, image_size: ImageSize) -> torch.Tensor:
    """uint8 tensor [1, H, W] (``image_size`` is S or (H, W)); ``DataError`` naming the file if
    unreadable. A PNG of another size is resized to it (not cropped or padded: DICOMs converted
    by ``mammo data dicom`` already have the input size, with their aspect ratio kept)."""
    try:
        image = decode_png(read_file(path), mode=ImageReadMode.GRAY)
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable PNG ({_reason(exc)})") from None
    if image.dtype != torch.uint8:
        # 16-bit exports: map the full 0..65535 range onto 0..255.
        image = TF.to_dtype(image, torch.uint8, scale=True)
    height, width = image_hw(image_size)
    if image.shape[-2:] != (height, width):
        image = TF.resize(image, [height, width], antialias=True)
    return image
