"""One DICOM file to one PNG of the training dataset, and the record of what was done.

decode -> modality and VOI LUT, MONOCHROME1 inverted (one lookup table) -> breast box ->
crop -> optional flip (chest wall on the chosen side) -> fit into HxW with the aspect ratio kept
(bilinear, antialiased) -> pad (black; the image sits against the chest-wall side, centred
vertically) -> PNG (8-bit, or 16-bit).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mammo.dicom.options import PreprocessConfig
from mammo.dicom.read import DicomImage, decode, read_header, transfer_syntax_of
from mammo.dicom.roi import Box, Roi, find_roi
from mammo.dicom.windowing import choose_voi, to_display
from mammo.imagesize import image_hw

#: Columns every converted row gets in train.csv, in this order.
RECORD_COLUMNS = (
    "source", "source_height", "source_width", "crop_top", "crop_left", "crop_bottom", "crop_right",
    "crop_fallback", "chest_wall", "flipped", "scale", "pad_top", "pad_left", "voi", "photometric",
    "bits_stored", "transfer_syntax",
)


@dataclass
class Converted:
    png: bytes
    record: dict[str, Any]
    tags: dict[str, str]


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def header_tags(dataset: Any) -> dict[str, str]:
    """The tags a table is built from (empty strings where absent)."""
    laterality = _text(dataset, "ImageLaterality") or _text(dataset, "Laterality")
    age = _text(dataset, "PatientAge")
    match = re.fullmatch(r"0*(\d+)Y", age)
    return {
        "patient_id": _text(dataset, "PatientID"),
        "image_id": _text(dataset, "SOPInstanceUID"),
        "laterality": laterality.upper(),
        "view": _text(dataset, "ViewPosition").upper(),
        "age": match.group(1) if match else "",
    }


def fit(height: int, width: int, target: tuple[int, int]) -> tuple[float, int, int]:
    """The scale that fits ``height`` x ``width`` into ``target`` and the fitted size."""
    out_h, out_w = target
    scale = min(out_h / height, out_w / width)
    return scale, max(1, min(out_h, round(height * scale))), max(1, min(out_w, round(width * scale)))


def place(image: np.ndarray, target: tuple[int, int], chest_wall: str) -> tuple[np.ndarray, int, int]:
    """``image`` (already fitted) on a black ``target`` canvas, against the chest-wall side,
    centred vertically; returns the canvas and the top/left padding."""
    out_h, out_w = target
    h, w = image.shape
    top = (out_h - h) // 2
    left = out_w - w if chest_wall == "right" else 0
    canvas = np.zeros((out_h, out_w), dtype=image.dtype)
    canvas[top : top + h, left : left + w] = image
    return canvas, top, left


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased (PIL scales the filter's support when shrinking)."""
    if image.shape == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=image.dtype)


def encode_png(image: np.ndarray, compression: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compression)
    return buffer.getvalue()


def render(decoded: DicomImage, options: PreprocessConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The output image of a decoded file and its record (without ``source``)."""
    dataset = decoded.dataset
    voi = choose_voi(dataset, options.voi, options.window_index)
    display, voi = to_display(decoded.pixels, dataset, decoded.photometric, bits=options.bits, voi=voi)
    height, width = display.shape
    if options.crop:
        roi = find_roi(display, margin=options.margin)
    else:
        full = find_roi(display, margin=0.0)
        roi = Roi(Box(0, 0, height, width), full.chest_wall, "crop disabled", full.mask_fraction)
    box = roi.box
    cropped = display[box.top : box.bottom, box.left : box.right]
    flipped = options.align != "none" and roi.chest_wall != options.align
    side = options.align if options.align != "none" else roi.chest_wall
    if flipped:
        cropped = cropped[:, ::-1]
    target = image_hw(options.image_size)
    scale, fit_h, fit_w = fit(box.height, box.width, target)
    fitted = resize(np.ascontiguousarray(cropped), fit_h, fit_w)
    canvas, pad_top, pad_left = place(fitted, target, side)
    record = {
        "source_height": height,
        "source_width": width,
        "crop_top": box.top,
        "crop_left": box.left,
        "crop_bottom": box.bottom,
        "crop_right": box.right,
        "crop_fallback": roi.fallback,
        "chest_wall": roi.chest_wall,
        "flipped": int(flipped),
        "scale": round(scale, 6),
        "pad_top": pad_top,
        "pad_left": pad_left,
        "voi": voi.describe(),
        "photometric": decoded.photometric,
        "bits_stored": int(dataset.get("BitsStored", 0) or 0),
        "transfer_syntax": decoded.transfer_syntax,
    }
    return canvas, record


def convert_file(path: str | os.PathLike[str], options: PreprocessConfig) -> Converted:
    """Read, decode and render one file; ``DicomError`` (one line) when it cannot be."""
    dataset = read_header(path)
    tags = header_tags(dataset)
    decoded = decode(path, dataset)
    image, record = render(decoded, options)
    return Converted(encode_png(image, options.png_compression), record, tags)


def decode_only(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Read and decode, nothing else (the benchmark's reference); returns the image's size."""
    decoded = decode(path)
    return decoded.shape


__all__ = [
    "RECORD_COLUMNS", "Converted", "convert_file", "decode_only", "header_tags", "render",
    "transfer_syntax_of",
]
