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
from mammo.dicom.read import DicomError, DicomImage, decode, read_header, transfer_syntax_of
from mammo.dicom.roi import Box, Roi, find_roi
from mammo.dicom.windowing import choose_voi, to_display
from mammo.imagesize import image_hw

#: Columns every converted row gets in train.csv, in this order.
RECORD_COLUMNS = (
    "source", "source_height", "source_width", "crop_top", "crop_left", "crop_bottom", "crop_right",
    "crop_fallback", "chest_wall", "flipped", "scale", "pad_top", "pad_left", "voi", "photometric",
    "bits_stored", "transfer_syntax",
)


#: Columns a table gets from the tags (added to an input table that lacks them).
TAG_COLUMNS = ("laterality", "view", "view_modifier", "implant", "machine_id")
#: Why files are skipped, not converted (counted in preprocess.json and the summary).
SKIP_CATEGORIES = {
    "not_an_image": "not an image (DICOMDIR, structured report, presentation state, ...)",
    "tomosynthesis": "tomosynthesis or another multi-frame object",
    "for_processing": "raw detector image (FOR PROCESSING)",
    "view": "a view other than those converted (views)",
    "view_modifier": "spot compression or magnification view",
    "implant": "breast implant (implants=skip)",
}
#: SOP classes that hold no image to convert (their prefixes).
NON_IMAGE_CLASSES = {
    "1.2.840.10008.1.3.10": "a DICOMDIR (the index of an exported CD), not an image",
    "1.2.840.10008.5.1.4.1.1.88.": "a structured report, not an image",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state, not an image",
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document, not an image",
    "1.2.840.10008.5.1.4.1.1.66": "a raw data or registration object, not an image",
}
#: Breast Tomosynthesis Image Storage and Breast Projection X-Ray Image Storage (its projections).
TOMOSYNTHESIS_CLASSES = ("1.2.840.10008.5.1.4.1.1.13.1.3", "1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5")
#: Digital Mammography / Digital X-Ray Image Storage - For Processing.
FOR_PROCESSING_CLASSES = ("1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.1.1")
#: View codes (ViewCodeSequence, SNOMED RT or CT) and meanings by their usual abbreviation.
VIEW_CODES = {
    "CC": ("R-10242", "399162004", "cranio-caudal"),
    "MLO": ("R-10226", "399368009", "medio-lateral oblique"),
    "ML": ("R-10224", "399260004", "medio-lateral"),
    "LM": ("R-10228", "399352003", "latero-medial"),
    "LMO": ("R-10230", "399099002", "latero-medial oblique"),
    "XCCL": ("R-1024A", "399192003", "cranio-caudal exaggerated laterally"),
    "XCCM": ("R-1024B", "399101009", "cranio-caudal exaggerated medially"),
    # By meaning only:
    "FB": (None, None, "from below"),
    "SIO": (None, None, "superolateral to inferomedial oblique"),
    "CV": (None, None, "cleavage"),
    "AT": (None, None, "axillary tail"),
}
#: View modifiers that make an image something else than a screening view (skipped by default).
SPECIAL_MODIFIERS = ("spot compression", "magnification", "magnified")


@dataclass
class Converted:
    png: bytes
    record: dict[str, Any]
    tags: dict[str, str]
    #: What identifies patient and exam (for the identifier map only: never stored).
    identifiers: dict[str, str]


class DicomSkipped(DicomError):
    """A DICOM file the preprocessor leaves out by its policy (``category``: ``SKIP_CATEGORIES``)."""

    def __init__(self, message: str, category: str) -> None:
        super().__init__(message)
        self.category = category


def _text(dataset: Any, keyword: str) -> str:
    try:
        value = dataset.get(keyword)
    except Exception:  # a damaged element: treated as absent
        return ""
    return "" if value is None else " ".join(str(value).split())


def _codes(dataset: Any, keyword: str) -> list[Any]:
    try:
        items = dataset.get(keyword)
        return list(items) if items else []
    except Exception:
        return []


def view_of(dataset: Any) -> str:
    """ViewPosition, else the abbreviation of the first ViewCodeSequence item's code."""
    position = _text(dataset, "ViewPosition").upper()
    if position:
        return position
    for item in _codes(dataset, "ViewCodeSequence"):
        value, meaning = _text(item, "CodeValue"), _text(item, "CodeMeaning").lower()
        for name, (rt, ct, text) in VIEW_CODES.items():
            if (value and value in (rt, ct)) or meaning == text:
                return name
        return meaning.upper()
    return ""


def view_modifiers_of(dataset: Any) -> str:
    """The view modifiers' meanings, lower case, ``;``-separated (inside the view code or at the top)."""
    items = _codes(dataset, "ViewModifierCodeSequence")
    for view in _codes(dataset, "ViewCodeSequence"):
        items += _codes(view, "ViewModifierCodeSequence")
    meanings = [_text(item, "CodeMeaning").lower() or _text(item, "CodeValue") for item in items]
    return ";".join(dict.fromkeys(m for m in meanings if m))


def age_of(dataset: Any) -> str:
    """Age in whole years: PatientAge (nnnY, M, W or D), else from PatientBirthDate and the
    study's date; neither date is kept."""
    match = re.fullmatch(r"0*(\d+)([YMWD])", _text(dataset, "PatientAge").upper())
    if match:
        number, unit = int(match.group(1)), match.group(2)
        return str(number if unit == "Y" else number // {"M": 12, "W": 52, "D": 365}[unit])
    birth = _text(dataset, "PatientBirthDate")
    on = _text(dataset, "StudyDate") or _text(dataset, "AcquisitionDate") or _text(dataset, "ContentDate")
    if re.fullmatch(r"\d{8}", birth) and re.fullmatch(r"\d{8}", on):
        b, d = (int(birth[:4]), int(birth[4:6]), int(birth[6:])), (int(on[:4]), int(on[4:6]), int(on[6:]))
        years = d[0] - b[0] - ((d[1], d[2]) < (b[1], b[2]))
        if 0 <= years <= 130:
            return str(years)
    return ""


def header_tags(dataset: Any) -> dict[str, str]:
    """The tags a table is built from and the skip policy reads (empty strings where absent).
    ``patient_id`` and ``image_id`` are the originals: the preprocessor replaces them by
    pseudonyms before anything is stored."""
    laterality = _text(dataset, "ImageLaterality") or _text(dataset, "Laterality")
    implant = _text(dataset, "BreastImplantPresent").upper()
    meta = getattr(dataset, "file_meta", None)
    sop_class = _text(dataset, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    machine = " ".join(v for v in (_text(dataset, "Manufacturer"), _text(dataset, "ManufacturerModelName")) if v)
    return {
        "patient_id": _text(dataset, "PatientID"),
        "image_id": _text(dataset, "SOPInstanceUID"),
        "laterality": laterality.upper(),
        "view": view_of(dataset),
        "view_modifier": view_modifiers_of(dataset),
        "implant": {"YES": "1", "NO": "0"}.get(implant, ""),
        "machine_id": machine,
        "age": age_of(dataset),
        "presentation_intent": _text(dataset, "PresentationIntentType").upper(),
        "sop_class": sop_class,
        "frames": _text(dataset, "NumberOfFrames") or "1",
    }


def identifiers_of(dataset: Any) -> dict[str, str]:
    """The identifying attributes the identifier map records (never stored otherwise)."""
    return {
        "study_instance_uid": _text(dataset, "StudyInstanceUID"),
        "series_instance_uid": _text(dataset, "SeriesInstanceUID"),
        "sop_instance_uid": _text(dataset, "SOPInstanceUID"),
        "accession_number": _text(dataset, "AccessionNumber"),
    }


def skip_reason(tags: dict[str, str], options: PreprocessConfig, view_hint: str | None = None) -> tuple[str, str] | None:
    """(category, reason) when ``options`` leave this file out, else None; ``view_hint``: the
    table's view when the file names none."""
    sop = tags.get("sop_class", "")
    for prefix, what in NON_IMAGE_CLASSES.items():
        if sop.startswith(prefix):
            return "not_an_image", what
    frames = tags.get("frames", "1")
    if sop in TOMOSYNTHESIS_CLASSES or (frames.isdigit() and int(frames) > 1):
        return "tomosynthesis", f"tomosynthesis or multi-frame object ({frames} frame(s)): only 2-D mammograms are converted"
    if options.for_processing == "skip" and (
        tags.get("presentation_intent") == "FOR PROCESSING" or sop in FOR_PROCESSING_CLASSES
    ):
        return "for_processing", "raw detector image (FOR PROCESSING), not the FOR PRESENTATION image models train on"
    modifiers = tags.get("view_modifier", "")
    if options.view_modifiers == "skip" and any(m in modifiers for m in SPECIAL_MODIFIERS):
        return "view_modifier", f"{modifiers} view"
    view = tags.get("view", "") or (view_hint or "").strip().upper()
    if view and view not in options.views:
        return "view", f"view {view} is not one of {','.join(options.views)}"
    if options.implants == "skip" and tags.get("implant") == "1":
        return "implant", "breast implant present"
    return None


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


def convert_file(path: str | os.PathLike[str], options: PreprocessConfig, view_hint: str | None = None) -> Converted:
    """Read, decode and render one file; ``DicomSkipped`` when the policy leaves it out (read
    from the header, before decoding), ``DicomError`` (one line) when it cannot be converted."""
    dataset = read_header(path, options.max_pixels)
    tags = header_tags(dataset)
    skip = skip_reason(tags, options, view_hint)
    if skip is not None:
        raise DicomSkipped(f"{path}: {skip[1]}", skip[0])
    decoded = decode(path, dataset, options.max_pixels)
    image, record = render(decoded, options)
    return Converted(encode_png(image, options.png_compression), record, tags, identifiers_of(dataset))


def decode_only(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Read and decode, nothing else (the benchmark's reference); returns the image's size."""
    decoded = decode(path)
    return decoded.shape


__all__ = [
    "RECORD_COLUMNS", "SKIP_CATEGORIES", "TAG_COLUMNS", "Converted", "DicomSkipped", "convert_file", "skip_reason", "decode_only", "header_tags", "render",
    "transfer_syntax_of",
]
