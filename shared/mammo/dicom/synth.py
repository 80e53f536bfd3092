"""Synthetic DICOM mammograms: for the tests, the benchmark and the README's picture.

A breast-like half-ellipse against one side (the chest wall) with smooth tissue texture, on a
dark background, and a bright burnt-in label in a far corner (which a crop must leave out).
Written with pydicom: uncompressed, RLE Lossless or JPEG 2000 (lossless, via
pylibjpeg-openjpeg); 12- or 16-bit; MONOCHROME1 or MONOCHROME2; with or without window tags.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

TRANSFER_SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "j2k": "1.2.840.10008.1.2.4.90",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
}
Compression = Literal["explicit", "rle", "j2k", "jpeg-lossless"]


def breast_phantom(
    height: int,
    width: int,
    *,
    bits: int = 12,
    chest_wall: Literal["left", "right"] = "left",
    seed: int = 0,
    label: bool = True,
) -> np.ndarray:
    """Stored values (uint16, ``bits`` significant) of a MONOCHROME2 mammogram: tissue bright."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    # Half-ellipse: centred vertically, the chest wall at column 0 (flipped below for "right").
    cy, ry, rx = height * 0.5, height * 0.42, width * 0.62
    inside = ((rows - cy) / ry) ** 2 + (cols / rx) ** 2 <= 1.0
    # Tissue: brighter towards the chest wall, with smooth blobs (coarse noise upsampled).
    texture = np.zeros((height, width), dtype=np.float32)
    for cells, weight in ((6, 0.5), (20, 0.35), (60, 0.15)):  # smooth blobs at three scales
        coarse = rng.random((cells, max(2, cells * width // max(height, 1)))).astype(np.float32)
        layer = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        texture += weight * np.asarray(layer, dtype=np.float32)
    depth = 1.0 - np.clip(cols / rx, 0, 1) * 0.5
    tissue = (0.45 + 0.25 * texture) * depth
    image = np.where(inside, tissue, 0.03).astype(np.float32)
    image += rng.normal(0, 0.01, size=image.shape).astype(np.float32)
    if label:
        # A burnt-in marker in the corner far from the chest wall: a bright block with a gap.
        lh, lw = max(4, height // 14), max(6, width // 7)
        r0, c0 = height // 30, width - width // 30 - lw
        image[r0 : r0 + lh, c0 : c0 + lw] = 0.98
        image[r0 + lh // 3 : r0 + 2 * lh // 3, c0 + lw // 4 : c0 + 3 * lw // 4] = 0.1
    if chest_wall == "right":
        image = image[:, ::-1]
    return np.clip(np.rint(image * top), 0, top).astype(np.uint16)


def make_dataset(
    pixels: np.ndarray,
    *,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    patient_id: str = "10006",
    image_id: str | None = None,
    laterality: str = "L",
    view: str = "CC",
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
    rescale: tuple[float, float] | None = None,
    age: int | None = 61,
) -> Any:
    """A pydicom FileDataset (uncompressed, explicit VR little endian) holding ``pixels``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = image_id or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography, for presentation
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.PatientID = patient_id
    ds.Modality = "MG"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    if age is not None:
        ds.PatientAge = f"{age:03d}Y"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        first, table = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(table), first, 16]
        item.LUTData = np.asarray(table, dtype="<u2").tobytes()
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    return ds


def save(ds: Any, path: str | os.PathLike[str], compression: Compression = "explicit") -> Path:
    """Write ``ds`` to ``path``, compressed as asked (JPEG lossless through GDCM)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per tile otherwise
    if compression == "rle":
        ds.compress(TRANSFER_SYNTAXES["rle"], encoding_plugin="pydicom", generate_instance_uid=False)
    elif compression == "j2k":
        ds.compress(TRANSFER_SYNTAXES["j2k"], encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif compression == "jpeg-lossless":
        _save_jpeg_lossless(ds, target)
        return target
    ds.save_as(target, enforce_file_format=True)
    return target


def _save_jpeg_lossless(ds: Any, target: Path) -> None:
    """pydicom cannot encode JPEG lossless (.4.70); GDCM can."""
    import gdcm

    plain = target.with_suffix(".plain.dcm")
    ds.save_as(plain, enforce_file_format=True)
    try:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(plain))
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not compress to JPEG lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the JPEG lossless file")
    finally:
        plain.unlink(missing_ok=True)


def write_synthetic_dicoms(
    out: str | os.PathLike[str],
    *,
    count: int,
    size: tuple[int, int] = (2000, 1600),
    bits: int = 12,
    compression: Compression = "j2k",
    seed: int = 0,
) -> list[Path]:
    """``count`` mammograms in the RSNA layout ``<out>/train_images/{patient_id}/{image_id}.dcm``
    (two images per patient, L and R; half MONOCHROME1), plus a ``train.csv`` with labels."""
    root = Path(out)
    paths, rows = [], []
    for i in range(count):
        patient, image = str(10000 + i // 2), str(500000 + i)
        side = "L" if i % 2 == 0 else "R"
        photometric = "MONOCHROME1" if i % 4 >= 2 else "MONOCHROME2"
        pixels = breast_phantom(*size, bits=bits, chest_wall="left" if side == "L" else "right", seed=seed + i)
        top = (1 << bits) - 1
        if photometric == "MONOCHROME1":
            pixels = (top - pixels).astype(np.uint16)
        ds = make_dataset(
            pixels, bits=bits, photometric=photometric, patient_id=patient,
            image_id=f"1.2.826.0.1.3680043.10.1.{image}", laterality=side,
            view="CC" if (i // 2) % 2 == 0 else "MLO", window=(top * 0.5, top * 0.9),
        )
        paths.append(save(ds, root / "train_images" / patient / f"{image}.dcm", compression))
        rows.append(f"1,{patient},{image},{side},{ds.ViewPosition},61,{int(i % 7 == 0)}")
    (root / "train.csv").write_text("site_id,patient_id,image_id,laterality,view,age,cancer\n" + "\n".join(rows) + "\n")
    return paths
