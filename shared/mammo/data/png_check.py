"""Check a PNG completely before libpng sees it.

libpng reports damage by ``longjmp``; inside torchvision's ``decode_png`` that takes the whole
process down (a flipped byte in the compressed data: "IDAT: incorrect data check", then a
segmentation fault), so one damaged file among 54,000 would end a training run with no line
naming it. Here every chunk's CRC is checked, the header's values are checked against the PNG
specification, the compressed image data is inflated (bounded by the size the header implies)
and every scanline's filter byte is checked. What libpng is then given is a minimal PNG rebuilt
from the checked chunks (IHDR, PLTE for palette images, IDAT, IEND): ancillary chunks, which it
would parse with code of its own, never reach it, and none of them changes the grayscale pixels
the data path decodes. Damage is a ``DataError`` naming the file and what is
wrong. Pure Python (zlib, numpy): about the cost of one more inflate per image, paid once per
image with the decoded cache.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from mammo.errors import DataError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Critical chunks libpng is given; the others are dropped (they do not change the decoded
#: grayscale pixels). PLTE is kept for palette images only.
KEPT = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
#: Channels per color type (PNG specification, table 11.1) and the bit depths allowed for it.
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
#: Adam7 passes: (x start, y start, x step, y step).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
MAX_CHUNK = 2**31 - 1


class _Damaged(Exception):
    """Internal: what is wrong, without the file name."""


def _chunks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, data, the whole chunk as stored) of every chunk up to IEND, each CRC checked."""
    if data[:8] != SIGNATURE:
        raise _Damaged("not a PNG file (no PNG signature)")
    chunks, at = [], 8
    while True:
        if at + 8 > len(data):
            raise _Damaged("truncated (the file ends before its IEND chunk)")
        length, kind = struct.unpack(">I", data[at:at + 4])[0], data[at + 4:at + 8]
        if length > MAX_CHUNK or not kind.isalpha():
            raise _Damaged(f"malformed chunk header at byte {at}")
        end = at + 8 + length
        if end + 4 > len(data):
            raise _Damaged(f"truncated (in its {kind.decode('ascii')} chunk)")
        body = data[at + 8:end]
        (stored,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != stored:
            raise _Damaged(f"{kind.decode('ascii')} chunk at byte {at} is damaged (CRC mismatch)")
        chunks.append((kind, body, data[at:end + 4]))
        at = end + 4
        if kind == b"IEND":
            return chunks


def _scanlines(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> list[tuple[int, int]]:
    """(rows, bytes per row without the filter byte) of each (sub)image in the data stream."""
    if not interlaced:
        return [(height, (width * bits_per_pixel + 7) // 8)]
    passes = []
    for x0, y0, dx, dy in ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            passes.append((h, (w * bits_per_pixel + 7) // 8))
    return passes


def _check(data: bytes) -> bytes:
    chunks = _chunks(data)
    if chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise _Damaged("the first chunk is not a 13-byte IHDR")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if not (0 < width <= MAX_CHUNK and 0 < height <= MAX_CHUNK):
        raise _Damaged(f"invalid image size {width}x{height}")
    if color not in CHANNELS or depth not in BIT_DEPTHS[color]:
        raise _Damaged(f"invalid color type {color} with bit depth {depth}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise _Damaged("unknown compression, filter or interlace method")
    kinds = [kind for kind, _, _ in chunks]
    idat = [i for i, kind in enumerate(kinds) if kind == b"IDAT"]
    if not idat:
        raise _Damaged("no image data (IDAT chunk)")
    if idat != list(range(idat[0], idat[-1] + 1)):
        raise _Damaged("its IDAT chunks are not consecutive")
    for kind in kinds:
        if kind[0:1].isupper() and kind not in KEPT:  # a critical chunk this decoder does not know
            raise _Damaged(f"unknown critical chunk {kind.decode('ascii')}")
    palettes = [body for kind, body, _ in chunks if kind == b"PLTE"]
    if color == 3 and (len(palettes) != 1 or not 0 < len(palettes[0]) <= 768 or len(palettes[0]) % 3):
        raise _Damaged("a palette image without one valid PLTE chunk")

    passes = _scanlines(width, height, depth * CHANNELS[color], interlace == 1)
    expected = sum(rows * (1 + row_bytes) for rows, row_bytes in passes)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(body for kind, body, _ in chunks if kind == b"IDAT"), expected + 1)
    except zlib.error as exc:
        raise _Damaged(f"its compressed image data is corrupt ({exc})") from None
    if len(raw) != expected or not inflater.eof:
        raise _Damaged(f"its image data holds {len(raw)}{'+' if len(raw) > expected else ''} bytes, "
                       f"not the {expected} its header implies, or ends early")
    filters, at = [], 0
    buffer = np.frombuffer(raw, dtype=np.uint8)
    for rows, row_bytes in passes:
        filters.append(buffer[at:at + rows * (1 + row_bytes)].reshape(rows, 1 + row_bytes)[:, 0])
        at += rows * (1 + row_bytes)
    worst = int(np.concatenate(filters).max())
    if worst > 4:
        raise _Damaged(f"invalid scanline filter type {worst}")
    # The checked chunks as stored (their CRCs are right): no copy of them is made again.
    return SIGNATURE + b"".join(stored for kind, _, stored in chunks if kind in KEPT and (kind != b"PLTE" or color == 3))


def checked_png(data: bytes, path: str) -> bytes:
    """``data`` rebuilt as a minimal PNG of checked chunks, safe to hand to libpng; a
    ``DataError`` naming ``path`` and the damage otherwise."""
    try:
        return _check(data)
    except _Damaged as exc:
        raise DataError(f"{path}: not a readable PNG ({exc})") from None
