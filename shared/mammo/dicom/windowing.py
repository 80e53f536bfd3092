"""From stored pixel values to display values in [0, 1], then to 8- or 16-bit integers.

The steps of the DICOM grayscale pipeline (PS3.3 C.11.1 and C.11.2):

1. Modality LUT: ``RescaleSlope * x + RescaleIntercept`` (default 1 and 0), or a Modality
   LUT Sequence when present.
2. VOI LUT, the first that applies:
   - WindowCenter/WindowWidth (the first pair unless another is chosen) with VOILUTFunction
     ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``, by the standard's formulas;
   - a VOI LUT Sequence (its first LUT), its entries as pydicom's ``apply_voi_lut`` gives them,
     divided by the LUT's nominal top ``2**bits - 1`` (LUT Descriptor's third value), not
     stretched by the table's own min and max;
   - otherwise min-max over the image.
3. Inverted (``1 - y``) when PhotometricInterpretation is MONOCHROME1 or PresentationLUTShape
   is INVERSE, once (MG and DX pair INVERSE with MONOCHROME1: the same inversion), so that
   tissue is bright in every output. A Presentation LUT Sequence is not applied.

All three are functions of the stored value alone, so ``to_display`` evaluates them once per
distinct value in the image's range (at most 65,536 for 16-bit data) and applies the result as
one lookup table: a gather instead of several full-image float passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
#: Largest value range mapped through a lookup table; wider data is computed directly.
MAX_LUT_ENTRIES = 1 << 20


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: VoiFunction = "LINEAR"


@dataclass(frozen=True)
class Voi:
    """How the image was windowed: ``window``, ``lut`` (VOI LUT Sequence) or ``minmax``."""

    kind: Literal["window", "lut", "minmax"]
    window: Window | None = None
    lut_first: int = 0
    lut: np.ndarray | None = None
    lut_bits: int = 16  # the LUT Descriptor's bits per entry: entries run 0 .. 2**bits - 1

    def describe(self) -> str:
        if self.kind == "window" and self.window is not None:
            w = self.window
            return f"{w.function} c={w.center:g} w={w.width:g}"
        if self.kind == "lut" and self.lut is not None:
            return f"VOI LUT ({len(self.lut)} entries from {self.lut_first}, {self.lut_bits} bits)"
        return "min-max"


# --- the standard's functions, on float arrays ------------------------------------------------


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function LINEAR (C.11.2.1.2.1), output in [0, 1]; ``width`` >= 1."""
    c, w = center - 0.5, width - 1.0
    if w <= 0:  # width 1: a step at the centre
        return (x > c).astype(np.float64)
    y = (x - c) / w + 0.5
    return np.clip(y, 0.0, 1.0)


def window_linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function LINEAR_EXACT (C.11.2.1.3.2), output in [0, 1]; ``width`` > 0."""
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def window_sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function SIGMOID (C.11.2.1.3.1), output in (0, 1); ``width`` > 0."""
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


WINDOW_FUNCTIONS = {"LINEAR": window_linear, "LINEAR_EXACT": window_linear_exact, "SIGMOID": window_sigmoid}


# --- reading the tags ---------------------------------------------------------------------------


def _values(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [float(v) for v in value]
    return [float(value)]


def _lut_array(item: Any, signed: bool) -> tuple[int, np.ndarray, int]:
    """(first mapped value, LUT entries, bits per entry) of a Modality or VOI LUT Sequence item."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if signed and first > 32767:
        first -= 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        dtype = np.uint8 if bits <= 8 and len(data) == entries else np.uint16
        table = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float64)
    else:
        table = np.asarray(_values(data), dtype=np.float64)
    if table.size == 0:
        raise ValueError("empty LUTData")
    return first, table[:entries], bits


def apply_lut(x: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    """Values below ``first`` take the first entry, above the range the last (C.11.1.1)."""
    index = np.clip(np.rint(x - first), 0, len(table) - 1).astype(np.int64)
    return table[index]


def modality(x: np.ndarray, dataset: Any) -> np.ndarray:
    """The Modality LUT stage on float values ``x``."""
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    sequence = dataset.get("ModalityLUTSequence")
    if sequence:
        first, table, _ = _lut_array(sequence[0], signed)
        return apply_lut(x, first, table)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return x
    return x * slope + intercept


def choose_voi(dataset: Any, mode: Literal["auto", "minmax"] = "auto", index: int = 0) -> Voi:
    """The VOI transform the tags ask for (``auto``): a usable window first, then a VOI LUT
    Sequence, else min-max; ``minmax`` ignores the tags."""
    if mode == "minmax":
        return Voi("minmax")
    centers = _values(dataset.get("WindowCenter"))
    widths = _values(dataset.get("WindowWidth"))
    if centers and widths:
        i = min(index, len(centers) - 1, len(widths) - 1)
        center, width = centers[i], widths[i]
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if function not in WINDOW_FUNCTIONS:
            function = "LINEAR"
        usable = math.isfinite(center) and math.isfinite(width) and (width >= 1 if function == "LINEAR" else width > 0)
        if usable:
            return Voi("window", Window(center, width, function))  # type: ignore[arg-type]
    sequence = dataset.get("VOILUTSequence")
    if sequence:
        signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
        try:
            first, table, bits = _lut_array(sequence[0], signed)
        except (AttributeError, ValueError, TypeError):
            return Voi("minmax")
        return Voi("lut", lut_first=first, lut=table, lut_bits=bits)
    return Voi("minmax")


def apply_voi(x: np.ndarray, voi: Voi) -> np.ndarray:
    """The VOI stage on modality values ``x``: display values in [0, 1]."""
    if voi.kind == "window" and voi.window is not None:
        w = voi.window
        return WINDOW_FUNCTIONS[w.function](x, w.center, w.width)
    if voi.kind == "lut" and voi.lut is not None:
        return np.clip(apply_lut(x, voi.lut_first, voi.lut) / lut_top(voi.lut, voi.lut_bits), 0.0, 1.0)
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x, dtype=np.float64)


def lut_top(table: np.ndarray, bits: int) -> float:
    """The nominal top of a VOI LUT's output, ``2**bits - 1`` (8 or 10-16 bits; other values
    as 16); when entries exceed it (a descriptor that understates them), the smallest
    ``2**b - 1`` that holds them."""
    bits = bits if 8 <= bits <= 16 else 16
    top = float((1 << bits) - 1)
    largest = float(table.max()) if table.size else 0.0
    while largest > top and bits < 32:
        bits += 1
        top = float((1 << bits) - 1)
    return top


# --- the whole chain ----------------------------------------------------------------------------


def inverted(dataset: Any, photometric: str) -> bool:
    """Whether the display is inverted: MONOCHROME1, or PresentationLUTShape INVERSE (once,
    never twice: MG and DX images pair INVERSE with MONOCHROME1)."""
    shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def display_function(x: np.ndarray, dataset: Any, photometric: str, voi: Voi) -> np.ndarray:
    """Stored values -> display values in [0, 1] (modality, VOI, inversion: ``inverted``)."""
    y = apply_voi(modality(x.astype(np.float64), dataset), voi)
    if inverted(dataset, photometric):
        y = 1.0 - y
    return y


def quantize(y: np.ndarray, bits: Literal[8, 16]) -> np.ndarray:
    top = 255 if bits == 8 else 65535
    return np.rint(np.clip(y, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)


def to_display(
    pixels: np.ndarray,
    dataset: Any,
    photometric: str,
    *,
    bits: Literal[8, 16] = 8,
    voi: Voi | None = None,
) -> tuple[np.ndarray, Voi]:
    """The displayed image as uint8 or uint16, and the VOI transform used.

    Integer data goes through a lookup table over [min, max] of the stored values; min-max
    windowing then means the min and max of the modality values in that range, which for the
    usual linear rescale are those of the image."""
    voi = voi or choose_voi(dataset)
    if pixels.dtype.kind in "ui" and pixels.size:
        lo, hi = int(pixels.min()), int(pixels.max())
        if hi - lo < MAX_LUT_ENTRIES:
            table = quantize(display_function(np.arange(lo, hi + 1), dataset, photometric, voi), bits)
            if lo == 0 and pixels.dtype.kind == "u":
                return table[pixels], voi
            return table[pixels.astype(np.intp) - lo], voi
    return quantize(display_function(pixels, dataset, photometric, voi), bits), voi
