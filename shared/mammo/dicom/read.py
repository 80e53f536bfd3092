"""Open a DICOM file and decode its pixels; every failure is one line naming the file.

Decoders: pydicom 3 decodes uncompressed, RLE Lossless and deflated data itself; JPEG 2000
(``1.2.840.10008.1.2.4.90``/``.91``) goes to pylibjpeg-openjpeg (MIT), JPEG lossless
(``.4.57``/``.4.70``) and JPEG-LS to python-gdcm (BSD-style). pylibjpeg-libjpeg (GPLv3) is not
used. A transfer syntax none of the installed plugins decodes is a ``DicomError`` naming it and
the package to install.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammo.errors import DataError

log = logging.getLogger(__name__)

#: Preferred decoding plugin by transfer syntax (pydicom otherwise tries them in its own order).
PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.57": "gdcm",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "gdcm",  # JPEG Lossless SV1 (RSNA)
}
#: What to install for a transfer syntax that cannot be decoded.
INSTALL_HINT = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.57": "python-gdcm",
    "1.2.840.10008.1.2.4.70": "python-gdcm",
    "1.2.840.10008.1.2.4.80": "python-gdcm",
    "1.2.840.10008.1.2.4.81": "python-gdcm",
}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


class DicomError(DataError):
    """A DICOM file that cannot be turned into an image (the message names file and reason)."""


@dataclass
class DicomImage:
    """A decoded single-frame grayscale image and the tags the conversion needs."""

    path: str
    dataset: Any  # pydicom Dataset, pixel data still encoded
    pixels: np.ndarray  # stored values, 2-D
    photometric: str
    transfer_syntax: str

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def read_header(path: str | os.PathLike[str]) -> Any:
    """The dataset with its pixel data left encoded; ``DicomError`` if not a DICOM file."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ModuleNotFoundError:
        raise DicomError("pydicom is not installed: pip install 'mammo[dicom]' (see requirements/lock.txt)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(os.fspath(path))
    except InvalidDicomError:
        raise DicomError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        raise DicomError(f"{path}: unreadable DICOM ({_reason(exc)})") from None


def transfer_syntax_of(dataset: Any) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid is not None else "1.2.840.10008.1.2"


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def decode(path: str | os.PathLike[str], dataset: Any | None = None) -> DicomImage:
    """Read ``path`` (or use its already read ``dataset``) and decode the first and only frame."""
    dataset = read_header(path) if dataset is None else dataset
    if "PixelData" not in dataset:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in dataset]
        what = f"{kinds[0]} is not supported" if kinds else "no pixel data (not an image)"
        raise DicomError(f"{path}: {what}")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GRAYSCALE:
        raise DicomError(
            f"{path}: photometric interpretation {photometric or 'missing'} is not grayscale "
            "(MONOCHROME1 or MONOCHROME2)"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"{path}: {frames} frames (tomosynthesis?): only single-frame images are supported")
    syntax = transfer_syntax_of(dataset)
    pixels = _pixels(path, dataset, syntax)
    if pixels.ndim != 2:
        raise DicomError(f"{path}: pixel data of shape {pixels.shape} is not a single grayscale frame")
    return DicomImage(os.fspath(path), dataset, pixels, photometric, syntax)


def _pixels(path: Any, dataset: Any, syntax: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    if decoder is None:
        raise DicomError(f"{path}: transfer syntax {_syntax_name(syntax)} is not supported")
    if not decoder.is_available:
        hint = INSTALL_HINT.get(syntax, "a pydicom decoding plugin for it")
        raise DicomError(f"{path}: no decoder for transfer syntax {_syntax_name(syntax)}: install {hint}")
    options: dict[str, Any] = {}
    preferred = PREFERRED_PLUGINS.get(syntax)
    if preferred and preferred in decoder.available_plugins:
        options["decoding_plugin"] = preferred
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset.pixel_array_options(**options)
            return dataset.pixel_array
    except Exception as exc:  # decoders raise many types on truncated or corrupted data
        raise DicomError(f"{path}: pixel data cannot be decoded ({_reason(exc)})") from None
