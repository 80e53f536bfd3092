"""Decode one PNG into the uint8 grayscale tensor the training data path ships around.

This is the only per-sample CPU work of the data path: read, check the whole file
(``png_check``: libpng must never see damaged bytes), decode (libpng via torchvision),
scale 16-bit to 8-bit and resize only when the stored size differs. Everything else
(augmentation, float conversion, normalisation) runs on whole batches on the training device.
"""

from __future__ import annotations

import re
import struct

import torch
from torchvision.io import ImageReadMode, decode_png, read_file
from torchvision.transforms.v2 import functional as TF

from mammo.config import DEFAULT_MAX_PIXELS
from mammo.data.png_check import checked_png
from mammo.errors import DataError
from mammo.imagesize import ImageSize, image_hw


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _reason(exc: RuntimeError) -> str:
    """torchvision's message without its C++ source location prefix."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
    return re.sub(r"^\w+, \S+:\d+, ", "", text).rstrip(".")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` does not start like a PNG
    (the decoder then says what is wrong)."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read_png(path: str, image_size: ImageSize, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 tensor [1, H, W] (``image_size`` is S or (H, W)); ``DataError`` naming the file if
    unreadable, or larger than ``max_pixels`` by its header (checked before decoding: a small
    file can decode to gigabytes). A PNG of another size is resized to it (not cropped or
    padded: DICOMs converted by ``mammo data dicom`` already have the input size, with their
    aspect ratio kept)."""
    try:
        data = read_file(path)
        size = png_size(data[:24].numpy().tobytes())
        if size is not None and size[0] * size[1] > max_pixels:
            raise DataError(
                f"{path}: {size[0]}x{size[1]} pixels is more than data.max_pixels ({max_pixels}); "
                "not decoded (a decompression bomb, or not a mammogram export)"
            )
        # Checked whole first: libpng's own error path crashes the process (png_check).
        checked = checked_png(data.numpy().tobytes(), path)
        image = decode_png(torch.frombuffer(bytearray(checked), dtype=torch.uint8), mode=ImageReadMode.GRAY)
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable PNG ({_reason(exc)})") from None
    if image.dtype != torch.uint8:
        # 16-bit exports: map the full 0..65535 range onto 0..255.
        image = TF.to_dtype(image, torch.uint8, scale=True)
    height, width = image_hw(image_size)
    if image.shape[-2:] != (height, width):
        image = TF.resize(image, [height, width], antialias=True)
    return image
