"""PNG decompression bombs: a 30000x30000 1-bit PNG is about 110 KB on disk and 900 MB decoded.
The header's size is checked against data.max_pixels before decoding: one line naming the file
(or skipped and counted with data.bad_images: skip), and memory stays flat (measured in a real
process)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from mammo.config import DEFAULT_MAX_PIXELS
from mammo.data.decode import png_size, read_png
from mammo.errors import DataError


def write_bomb(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit grayscale PNG of side x side black pixels, compressed row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.mark.slow
def test_the_header_is_checked_before_decoding(bomb: Path) -> None:
    assert bomb.stat().st_size < 200_000
    assert png_size(bomb.read_bytes()[:24]) == (30000, 30000)
    with pytest.raises(DataError, match=rf"{bomb}: 30000x30000 pixels is more than data.max_pixels \({DEFAULT_MAX_PIXELS}\); not decoded"):
        read_png(str(bomb), 32)
    assert read_png(str(bomb), 32, max_pixels=30000 * 30000).shape == (1, 32, 32)  # allowed: decoded


def _peak_rss_mib(code: str) -> float:
    """Peak resident memory of a fresh Python process running ``code`` (after its imports)."""
    script = f"import resource, torch, mammo.data.decode as d\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n{code}\n" \
             "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_stays_flat_on_a_bomb(bomb: Path) -> None:
    refused = _peak_rss_mib(f"try:\n    d.read_png({str(bomb)!r}, 32)\nexcept Exception:\n    pass")
    assert refused < 100, f"{refused:.0f} MiB"


def test_a_bomb_in_a_dataset_is_one_line_or_skipped_and_counted(
    tiny_dataset: Path, tmp_path: Path, bomb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mammo.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = sorted((data / "train_images").rglob("*.png"))[0]
    shutil.copy(bomb, victim)
    split = tmp_path / "split"
    assert main(["split", "--data", str(data), "--out", str(split)]) == 0
    args = ["train", "--data", str(data), "--split", str(split), "--image-size", "32", "--backbone", "tinynet",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--set", "warmup_epochs=0"]
    assert main([*args, "--out", str(tmp_path / "fail")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{victim}: 30000x30000 pixels is more than data.max_pixels" in err
    assert main([*args, "--out", str(tmp_path / "skip"), "--set", "data.bad_images=skip", "--json"]) == 0
    history = (tmp_path / "skip" / "history.json").read_text()
    assert '"skipped_images": 1' in history
