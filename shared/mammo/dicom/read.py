"""Open a DICOM file and decode its pixels; every failure is one line naming the file.

Decoders: pydicom 3 decodes uncompressed, RLE Lossless and deflated data itself; JPEG 2000
(``1.2.840.10008.1.2.4.90``/``.91``) goes to pylibjpeg-openjpeg (MIT), JPEG lossless
(``.4.57``/``.4.70``) and JPEG-LS to python-gdcm (BSD-style). pylibjpeg-libjpeg (GPLv3) is not
used. A transfer syntax none of the installed plugins decodes is a ``DicomError`` naming it and
the package to install.

Nothing reaches a decoder that it should not see: the image's Rows x Columns x frames must be at
most ``max_pixels`` (``data.max_pixels``, checked from the header before anything is
decompressed - a deflated file is inflated only up to what its header claims), a JPEG 2000 or
JPEG (lossless, LS) codestream must be complete and of the header's size, and the decoded
values must fit the declared ``BitsStored``. pydicom's log lines (a truncated file is one of
its warnings) become the file's one-line error instead of reaching the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammo.config import DEFAULT_MAX_PIXELS
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
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
#: JPEG (lossless, JPEG-LS, baseline/extended) transfer syntaxes: their SOF marker gives the size.
JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
#: A deflated file's header (everything before the pixel data) is read from at most this much
#: inflated data before its size is checked.
DEFLATED_HEADER_BYTES = 4 << 20
#: How much of a fragment's start the codestream check reads (JPEG tables come before its SOF).
FRAGMENT_HEAD = 64 << 10


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


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def _quiet() -> Iterator[list[str]]:
    """pydicom's (and the decoders') warnings and errors collected instead of logged: a file's
    problem is its one-line error, never lines or a traceback on the console."""
    collect = _Collect()
    loggers = [logging.getLogger(name) for name in ("pydicom", "openjpeg", "pylibjpeg", "gdcm")]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.propagate = False
        lg.handlers[:] = [collect]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield collect.messages
    finally:
        for lg, (propagate, handlers) in zip(loggers, saved, strict=True):
            lg.propagate = propagate
            lg.handlers[:] = handlers


def _truncation(messages: list[str]) -> str | None:
    return next((m for m in messages if "end of file" in m.lower() or "truncat" in m.lower()), None)


def read_header(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """The dataset with its pixel data left encoded; ``DicomError`` if not a DICOM file, if it is
    truncated, or (deflated) if it claims more than ``max_pixels`` or inflates beyond its header."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ModuleNotFoundError:
        raise DicomError("pydicom is not installed: pip install 'mammo[dicom]' (see requirements/lock.txt)") from None
    try:
        with _quiet() as messages:
            dataset = _read_deflated(path, max_pixels) if _is_deflated(path) else pydicom.dcmread(os.fspath(path))
    except DicomError:
        raise
    except InvalidDicomError:
        raise DicomError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except Exception as exc:  # the reader raises many types on damaged files
        raise DicomError(f"{path}: unreadable DICOM ({_reason(exc)})") from None
    cut = _truncation(messages)
    if cut is not None:
        cut = cut.replace(f" in file {os.fspath(path)}", "").replace(os.fspath(path), "the file")
        raise DicomError(f"{path}: truncated DICOM file ({cut[:200]})")
    return dataset


def _is_deflated(path: str | os.PathLike[str]) -> bool:
    """Whether the file's meta header names the deflated transfer syntax (a cheap byte search
    of the meta group; the full read decides everything else)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head[128:132] == b"DICM" and DEFLATED.encode() in head


def _read_deflated(path: str | os.PathLike[str], max_pixels: int) -> Any:
    """A deflated dataset inflated only as far as its header allows: the header (up to
    ``DEFLATED_HEADER_BYTES``) first, its size checked, then at most the pixel data it declares."""
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    with open(path, "rb") as handle:
        preamble = read_preamble(handle, False)
        meta = _read_file_meta_info(handle)
        zipped = handle.read()
    if str(getattr(meta, "TransferSyntaxUID", "")) != DEFLATED:
        import pydicom

        return pydicom.dcmread(os.fspath(path))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(zipped, DEFLATED_HEADER_BYTES)
        header = read_dataset(DicomBytesIO(head), False, True, stop_when=_at_pixels)
        check_size(path, header, max_pixels)
        declared = _declared_bytes(header)
        rest = inflater.decompress(inflater.unconsumed_tail, declared + DEFLATED_HEADER_BYTES)
    except zlib.error as exc:
        raise DicomError(f"{path}: deflated data cannot be inflated ({_reason(exc)})") from None
    if not inflater.eof and inflater.unconsumed_tail:
        raise DicomError(f"{path}: deflated data inflates to more than the {declared} bytes of pixel data its header declares")
    if not inflater.eof:
        raise DicomError(f"{path}: truncated DICOM file (the deflated data ends early)")
    body = read_dataset(DicomBytesIO(head + rest), False, True)
    return FileDataset(os.fspath(path), body, preamble=preamble, file_meta=meta, is_implicit_VR=False, is_little_endian=True)


def _at_pixels(tag: Any, vr: Any, length: int) -> bool:
    return int(tag) >= 0x7FE00000


def _dims(dataset: Any) -> tuple[int, int, int]:
    def number(keyword: str, default: int) -> int:
        try:
            value = dataset.get(keyword, default)
            return int(value if value not in (None, "") else default)
        except (TypeError, ValueError):
            return -1

    return number("Rows", 0), number("Columns", 0), number("NumberOfFrames", 1)


def _declared_bytes(dataset: Any) -> int:
    rows, cols, frames = _dims(dataset)
    allocated = int(dataset.get("BitsAllocated", 16) or 16)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    return max(rows, 0) * max(cols, 0) * max(frames, 1) * samples * max(1, -(-allocated // 8))


def check_size(path: Any, dataset: Any, max_pixels: int) -> None:
    """``DicomError`` unless the header's Rows x Columns x frames is a plausible image of at most
    ``max_pixels`` (before anything is decompressed)."""
    rows, cols, frames = _dims(dataset)
    if rows < 0 or cols < 0 or frames < 0:
        raise DicomError(f"{path}: Rows, Columns or NumberOfFrames is not a number")
    if "PixelData" not in dataset and rows == cols == 0:
        return  # no image: the caller says so
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise DicomError(f"{path}: image of {rows}x{cols} pixels, {frames} frame(s): not an image size")
    if rows * cols * frames > max_pixels:
        raise DicomError(
            f"{path}: {rows}x{cols} pixels x {frames} frame(s) is more than data.max_pixels ({max_pixels}); "
            "refused before decompressing"
        )


def transfer_syntax_of(dataset: Any) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid is not None else "1.2.840.10008.1.2"


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def decode(path: str | os.PathLike[str], dataset: Any | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> DicomImage:
    """Read ``path`` (or use its already read ``dataset``) and decode the first and only frame,
    checked as the module says before and after decoding."""
    dataset = read_header(path, max_pixels) if dataset is None else dataset
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
    check_size(path, dataset, max_pixels)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"{path}: {frames} frames (tomosynthesis?): only single-frame images are supported")
    syntax = transfer_syntax_of(dataset)
    _check_codestream(path, dataset, syntax)
    pixels = _pixels(path, dataset, syntax)
    if pixels.ndim != 2:
        raise DicomError(f"{path}: pixel data of shape {pixels.shape} is not a single grayscale frame")
    _check_bits(path, dataset, pixels)
    return DicomImage(os.fspath(path), dataset, pixels, photometric, syntax)


def _fragments(dataset: Any) -> list[bytes]:
    """The encapsulated pixel data's fragments after the Basic Offset Table, each cut to its
    first ``FRAGMENT_HEAD`` and last 64 bytes (the image header and the end marker: all the
    checks read; nothing is copied whole); [] when damaged."""
    data = dataset.PixelData
    item, end = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
    if len(data) < 8 or data[:4] != item:
        return []
    pos = 8 + int.from_bytes(data[4:8], "little")
    found = []
    while pos + 8 <= len(data):
        tag, length = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == end:
            break
        if tag != item or pos + 8 + length > len(data):
            return []
        start = pos + 8
        head = min(length, FRAGMENT_HEAD)
        found.append(data[start : start + head] + data[max(start + head, start + length - 64) : start + length])
        pos = start + length
    return found


def _check_codestream(path: Any, dataset: Any, syntax: str) -> None:
    """A JPEG 2000 or JPEG codestream of the header's size, complete (the end marker present):
    a decoder is never handed a stream that claims another size or stops half-way."""
    if syntax not in JPEG2000 and syntax not in JPEG:
        return
    fragments = _fragments(dataset)
    if not fragments:
        raise DicomError(f"{path}: encapsulated pixel data without a readable fragment")
    stream = fragments[0]
    rows, cols, _ = _dims(dataset)
    size: tuple[int, int] | None = None
    if stream[:2] == b"\xff\x4f":  # J2K codestream: SOC, then SIZ
        if stream[2:4] == b"\xff\x51" and len(stream) >= 24:
            x, y, x0, y0 = (int.from_bytes(stream[i : i + 4], "big") for i in (8, 12, 16, 20))
            size = (y - y0, x - x0)
    elif stream[:4] == b"\x00\x00\x00\x0c":  # JP2 file wrapper: the decoder reads its codestream
        index = stream.find(b"\xff\x4f\xff\x51")
        if index >= 0 and len(stream) >= index + 24:
            s = stream[index:]
            x, y, x0, y0 = (int.from_bytes(s[i : i + 4], "big") for i in (8, 12, 16, 20))
            size = (y - y0, x - x0)
    elif stream[:2] == b"\xff\xd8":  # JPEG: SOI, then the first SOF marker
        size = _jpeg_size(stream)
    kind = "JPEG 2000" if syntax in JPEG2000 else "JPEG"
    if size is None:
        raise DicomError(f"{path}: {kind} pixel data without a readable image header (not a {kind} codestream)")
    if size != (rows, cols):
        raise DicomError(f"{path}: {kind} codestream of {size[0]}x{size[1]} pixels, the header says {rows}x{cols}")
    # One frame (checked before): its last fragment ends with the end marker (then padding).
    if not fragments[-1].rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise DicomError(f"{path}: truncated {kind} codestream (no end-of-image marker)")


def _jpeg_size(stream: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(stream):
        if stream[i] != 0xFF:
            return None
        marker = stream[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(stream[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if i + 9 > len(stream):
                return None
            return int.from_bytes(stream[i + 5 : i + 7], "big"), int.from_bytes(stream[i + 7 : i + 9], "big")
        i += 2 + length
    return None


def _check_bits(path: Any, dataset: Any, pixels: np.ndarray) -> None:
    """Stored values within ``BitsStored`` (an 8 declared over 12-bit values would window the
    image to black): a one-line error, never a silently wrong PNG."""
    try:
        bits = int(dataset.get("BitsStored", 0) or 0)
    except (TypeError, ValueError):
        raise DicomError(f"{path}: BitsStored {dataset.get('BitsStored')!r} is not a number") from None
    if bits <= 0 or bits >= 8 * pixels.dtype.itemsize:
        return
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    lo, hi = int(pixels.min()), int(pixels.max())
    if lo < low or hi > high:
        raise DicomError(
            f"{path}: stored values {lo}..{hi} do not fit BitsStored {bits} ({low}..{high}): "
            "the header's bit depth is wrong (or the unused bits carry an overlay)"
        )


def _pixels(path: Any, dataset: Any, syntax: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # pydicom knows the syntax and has no decoder for it (MPEG2, ...)
        decoder = None
    if decoder is None:
        raise DicomError(f"{path}: transfer syntax {_syntax_name(syntax)} is not supported (no decoder for it)")
    if not decoder.is_available:
        hint = INSTALL_HINT.get(syntax, "a pydicom decoding plugin for it")
        raise DicomError(f"{path}: no decoder for transfer syntax {_syntax_name(syntax)}: install {hint}")
    # The stored values as they are (pydicom would mask bits above BitsStored): _check_bits
    # refuses a file whose values do not fit its declared depth.
    # Signed values keep pydicom's correction (it is their sign extension).
    unsigned = int(dataset.get("PixelRepresentation", 0) or 0) == 0
    options: dict[str, Any] = {"correct_unused_bits": False} if unsigned else {}
    preferred = PREFERRED_PLUGINS.get(syntax)
    if preferred and preferred in decoder.available_plugins:
        options["decoding_plugin"] = preferred
    try:
        with _quiet():
            dataset.pixel_array_options(**options)
            return dataset.pixel_array
    except Exception as exc:  # decoders raise many types on truncated or corrupted data
        raise DicomError(f"{path}: pixel data cannot be decoded ({_reason(exc)})") from None
