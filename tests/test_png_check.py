"""Damaged PNGs never reach libpng (``mammo.data.png_check``): inside torchvision's decode_png a
libpng error crashes the process (a flipped byte in the compressed data: exit 139, no line).
Valid PNGs decode exactly as before; damaged ones - flipped bytes anywhere, truncations, bad
CRCs, corrupt zlib data behind a valid CRC, bad filter bytes - are one ``DataError`` naming the
file, in training, in the decoded cache and under fuzzing in a real process."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from torchvision.io import ImageReadMode, decode_png

from mammo.data.decode import read_png
from mammo.data.png_check import ADAM7, checked_png
from mammo.errors import DataError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(pixels: np.ndarray | Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _interlaced(pixels: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit grayscale PNG (PIL does not write them), filter 0 rows."""
    height, width = pixels.shape
    raw = b"".join(b"\x00" + pixels[y0::dy, x0::dx][row].tobytes()
                   for x0, y0, dx, dy in ADAM7 if pixels[y0::dy, x0::dx].size
                   for row in range(pixels[y0::dy, x0::dx].shape[0]))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _variants() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    gray = (rng.random((40, 24)) * 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "ancillary chunks are dropped, pixels are not")
    return {
        "gray8": _png(gray),
        "gray16": _png((rng.random((40, 24)) * 65535).astype(np.uint16)),
        "rgb": _png((rng.random((16, 16, 3)) * 255).astype(np.uint8)),
        "palette": _png(Image.fromarray(gray).convert("P")),
        "text": _png(gray, pnginfo=info),
        "interlaced": _interlaced(gray),
    }


@pytest.mark.parametrize("name", sorted(_variants()))
def test_valid_pngs_decode_exactly_as_libpng_decodes_them(name: str) -> None:
    data = _variants()[name]
    expected = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.GRAY)
    checked = checked_png(data, name)
    got = decode_png(torch.frombuffer(bytearray(checked), dtype=torch.uint8), mode=ImageReadMode.GRAY)
    assert torch.equal(got, expected)
    if name == "interlaced":
        assert torch.equal(got[0], torch.from_numpy(np.array(Image.open(io.BytesIO(data)))))


def _idat(data: bytes) -> tuple[int, int]:
    """(offset of the IDAT type field, its data length)."""
    at = data.index(b"IDAT")
    return at, struct.unpack(">I", data[at - 4:at])[0]


def _with_fixed_crc(data: bytearray) -> bytes:
    at, length = _idat(bytes(data))
    data[at + 4 + length:at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + length])) & 0xFFFFFFFF)
    return bytes(data)


def _damaged(kind: str) -> bytes:
    data = bytearray(_variants()["gray8"])
    at, length = _idat(bytes(data))
    if kind == "crc":  # a flipped byte in the compressed data: the CRC says so
        data[at + 4 + length // 2] ^= 0xFF
        return bytes(data)
    if kind == "zlib":  # the same, behind a recomputed CRC: only inflating finds it
        data[at + 4 + length // 2] ^= 0xFF
        return _with_fixed_crc(data)
    if kind == "filter":  # a valid stream of rows whose filter byte is 9
        gray = np.zeros((8, 8), np.uint8)
        raw = b"".join(b"\x09" + gray[row].tobytes() for row in range(8))
        header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    if kind == "short":  # a complete zlib stream that holds too few rows
        header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
        raw = b"".join(b"\x00" + bytes(8) for _ in range(7))
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    assert kind == "truncated"
    return bytes(data[: at + 4 + length // 2])


@pytest.mark.parametrize(("kind", "reason"), [
    ("crc", "IDAT chunk at byte 33 is damaged (CRC mismatch)"),
    ("zlib", "its compressed image data is corrupt"),
    ("filter", "invalid scanline filter type 9"),
    ("short", "not the 72 its header implies"),
    ("truncated", "truncated (in its IDAT chunk)"),
])
def test_damage_is_one_error_naming_the_file(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / f"{kind}.png"
    path.write_bytes(_damaged(kind))
    with pytest.raises(DataError) as err:
        read_png(str(path), 32)
    assert str(err.value).startswith(f"{path}: not a readable PNG (") and reason in str(err.value)


#: The fuzzing child: every file through read_png; only a DataError may come out of it.
FUZZ = """
import json, sys
from pathlib import Path
from mammo.data.decode import read_png
from mammo.errors import DataError
counts = {"decoded": 0, "refused": 0}
for path in sorted(Path(sys.argv[1]).glob("*.png")):
    try:
        read_png(str(path), 32)
        counts["decoded"] += 1
    except DataError as err:
        assert str(err).startswith(f"{path}: "), err
        counts["refused"] += 1
print(json.dumps(counts))
"""


def test_fuzzed_pngs_never_crash_a_real_process(tmp_path: Path) -> None:
    """600 mutations of two valid PNGs (one byte flipped anywhere, a run of bytes overwritten,
    truncated anywhere, the compressed data damaged behind a valid CRC) decode or are refused
    with one error; a crash would end the child with a signal."""
    rng = np.random.default_rng(7)
    sources = [_variants()["gray8"], _variants()["gray16"]]
    for i in range(600):
        data = bytearray(sources[i % 2])
        how = i % 4
        if how == 0:
            data[int(rng.integers(8, len(data)))] ^= int(rng.integers(1, 256))
        elif how == 1:
            start = int(rng.integers(8, len(data) - 4))
            data[start:start + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif how == 2:
            data = data[: int(rng.integers(8, len(data)))]
        else:
            at, length = _idat(bytes(data))
            data[at + 4 + int(rng.integers(2, length))] ^= int(rng.integers(1, 256))
            data = bytearray(_with_fixed_crc(data))
        (tmp_path / f"{i:03d}.png").write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-c", FUZZ, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["decoded"] + counts["refused"] == 600 and counts["refused"] > 400


def test_a_damaged_png_in_a_dataset_is_one_line_or_skipped_in_training_and_the_cache(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mammo.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = sorted((data / "train_images").rglob("*.png"))[0]
    original = bytearray(victim.read_bytes())
    at, length = _idat(bytes(original))
    original[at + 4 + length // 2] ^= 0xFF
    victim.write_bytes(_with_fixed_crc(original))  # what segfaulted: zlib damage, valid CRC
    split = tmp_path / "split"
    assert main(["split", "--data", str(data), "--out", str(split)]) == 0
    capsys.readouterr()
    args = ["train", "--data", str(data), "--split", str(split), "--image-size", "32", "--backbone", "tinynet",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--set", "warmup_epochs=0",
            "--set", "data.cache=off"]
    assert main([*args, "--out", str(tmp_path / "fail")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{victim}: not a readable PNG (its compressed image data is corrupt" in err
    assert main([*args, "--out", str(tmp_path / "skip"), "--set", "data.bad_images=skip", "--json"]) == 0
    assert '"skipped_images": 1' in (tmp_path / "skip" / "history.json").read_text()
    capsys.readouterr()
    cache = ["data", "cache", "--data", str(data), "--image-size", "32", "--cache", str(tmp_path / "cache"), "--workers", "0"]
    assert main(cache) == 2
    assert f"{victim}: not a readable PNG" in capsys.readouterr().err
    assert main([*cache, "--bad-images", "skip"]) == 0
