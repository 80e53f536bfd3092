"""The decoded-image cache: hits and misses, invalidation on each part of its key, torn writes,
flipped bytes, concurrent builders, bit-exact equality with decoding, disk-space refusal, and
training that reads from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mammo.data import cache as cache_mod
from mammo.data.cache import BAD, EMPTY, open_cache
from mammo.data.dataset import MammoImages, collate_batch, make_loader
from mammo.data.decode import read_png
from mammo.data.layout import open_dataset
from mammo.errors import ConfigError, DataError

SIZE = (32, 32)


@pytest.fixture
def paths(tiny_dataset: Path) -> list[str]:
    return [str(p) for p in open_dataset(tiny_dataset)[1]]


def _fill(cache, paths: list[str]) -> None:
    for row, path in enumerate(paths):
        cache.get(row, lambda path=path: read_png(path, SIZE[0]))


def test_a_filled_cache_returns_exactly_the_decoded_pixels(paths: list[str], tmp_path: Path) -> None:
    cache = open_cache(tmp_path, paths, SIZE)
    assert cache.count() == 0
    calls = []

    def decode(path: str) -> torch.Tensor:
        calls.append(path)
        return read_png(path, SIZE[0])

    first = [cache.get(row, lambda p=p: decode(p)) for row, p in enumerate(paths)]
    assert len(calls) == len(paths) and cache.count() == len(paths)
    again = open_cache(tmp_path, paths, SIZE)
    second = [again.get(row, lambda p=p: decode(p)) for row, p in enumerate(paths)]
    assert len(calls) == len(paths)  # every image read back, none decoded again
    for a, b, path in zip(first, second, paths):
        assert b.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(b, read_png(path, SIZE[0]))


def test_a_whole_batch_reads_back_the_stored_rows_in_the_order_asked(paths: list[str], tmp_path: Path) -> None:
    """``read_many``: one copy of the asked rows (any order, repeats too) once all are stored;
    None while one is missing; rows outside the cache are an IndexError, never clipped."""
    cache = open_cache(tmp_path, paths, SIZE)
    assert cache.read_many([0, 1]) is None
    images = [cache.get(row, lambda p=p: read_png(p, SIZE[0])) for row, p in enumerate(paths)]
    order = [len(paths) - 1, 0, len(paths) - 1, 1]
    batch = cache.read_many(order)
    assert batch.shape == (4, 1, *SIZE) and batch.dtype == torch.uint8
    for got, row in zip(batch, order):
        assert torch.equal(got, images[row])
    for outside in ([len(paths)], [-1], [0, len(paths) + 5]):
        with pytest.raises(IndexError):
            cache.read_many(outside)


def test_every_part_of_the_key_makes_another_cache(paths: list[str], tmp_path: Path, monkeypatch) -> None:
    base = open_cache(tmp_path, paths, SIZE).info.folder
    assert open_cache(tmp_path, paths, SIZE).info.folder == base
    assert open_cache(tmp_path, paths, (32, 16)).info.folder != base  # image size
    assert open_cache(tmp_path, paths[:-1], SIZE).info.folder != base  # table rows
    assert open_cache(tmp_path, list(reversed(paths)), SIZE).info.folder != base  # row order
    os.utime(paths[0], ns=(1, 1))
    assert open_cache(tmp_path, paths, SIZE).info.folder != base  # a changed source file
    monkeypatch.setattr(cache_mod, "FORMAT", cache_mod.FORMAT + 1)
    assert open_cache(tmp_path, paths, SIZE).info.folder != base  # decoder version


def test_an_image_replaced_with_its_size_and_mtime_kept_is_decoded_again(paths: list[str], tmp_path: Path) -> None:
    """``cp -p`` / ``rsync -a`` of another image of the same byte size over one of the dataset:
    size and mtime are what they were, the pixels are not."""
    import shutil

    import numpy as np
    from PIL import Image

    # Stored (uncompressed) PNGs: the byte size depends on the dimensions only.
    pixels = [np.asarray(Image.open(path)) for path in paths[:2]]
    copies = [tmp_path / f"{i}.png" for i in range(2)]
    for array, copy in zip(pixels, copies):
        Image.fromarray(array).save(copy, compress_level=0)
    rows = [str(c) for c in copies]
    cache = open_cache(tmp_path / "c", rows, SIZE)
    _fill(cache, rows)
    before = cache.get(0, lambda: read_png(rows[0], SIZE[0]))
    stat = copies[0].stat()
    replacement = tmp_path / "other.png"
    Image.fromarray(pixels[0][::-1].copy()).save(replacement, compress_level=0)  # upside down
    shutil.copyfile(replacement, copies[0])
    os.utime(copies[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (copies[0].stat().st_size, copies[0].stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = open_cache(tmp_path / "c", rows, SIZE)
    assert again.info.folder != cache.info.folder
    decoded = again.get(0, lambda: read_png(rows[0], SIZE[0]))
    assert torch.equal(decoded, read_png(rows[0], SIZE[0])) and not torch.equal(decoded, before)


def test_a_torn_write_is_never_read(paths: list[str], tmp_path: Path) -> None:
    cache = open_cache(tmp_path, paths, SIZE)
    pixels, state, crc = cache._open()
    pixels[0] = 7  # pixels written, state byte not yet: the process died in between
    pixels.flush()
    again = open_cache(tmp_path, paths, SIZE)
    assert again._open()[1][0] == EMPTY
    assert torch.equal(again.get(0, lambda: read_png(paths[0], SIZE[0])), read_png(paths[0], SIZE[0]))


def test_flipped_or_truncated_bytes_are_found_and_rebuilt(paths: list[str], tmp_path: Path) -> None:
    cache = open_cache(tmp_path, paths, SIZE)
    _fill(cache, paths)
    folder = cache.info.folder
    with open(folder / cache_mod.PIXELS, "r+b") as handle:
        handle.seek(5 * SIZE[0] * SIZE[1] + 100)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    reopened = open_cache(tmp_path, paths, SIZE)
    assert reopened._open()[1][5] == EMPTY and reopened.count() == len(paths) - 1
    with open(folder / cache_mod.PIXELS, "r+b") as handle:  # truncated: the whole cache is made again
        handle.truncate(100)
    rebuilt = open_cache(tmp_path, paths, SIZE)
    assert rebuilt.count() == 0
    _fill(rebuilt, paths)
    assert torch.equal(rebuilt.get(5, lambda: pytest.fail("decoded")), read_png(paths[5], SIZE[0]))


def test_bad_images_are_marked_and_skipped_or_fatal(paths: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = [paths[0], str(broken)]
    cache = open_cache(tmp_path / "c", rows, SIZE)
    skipping = MammoImages(rows, [0, 1], SIZE[0], bad_images="skip", cache=cache, cache_rows=[0, 1])
    batch = collate_batch([skipping[0], skipping[1]])
    assert batch["skipped"] == 1 and len(batch["labels"]) == 1
    assert cache._open()[1][1] == BAD
    assert skipping[1] is None  # known bad: not decoded again
    failing = MammoImages(rows, [0, 1], SIZE[0], bad_images="fail", cache=open_cache(tmp_path / "c", rows, SIZE), cache_rows=[0, 1])
    with pytest.raises(DataError, match="broken.png"):
        failing[1]


def test_no_space_is_refused_naming_both_numbers(paths: list[str], tmp_path: Path, monkeypatch) -> None:
    class Tiny:
        free = 1000

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _: Tiny)
    with pytest.raises(ConfigError, match=r"needs 0\.04 GiB for \d+ images at 512x512, but only 0\.00 GiB are free"):
        open_cache(tmp_path, paths, (512, 512))
    assert not list(tmp_path.rglob(cache_mod.HEADER))


def test_an_unusable_cache_directory_is_one_line(paths: list[str], tmp_path: Path) -> None:
    """Read-only (permission bits; root ignores them, so there a file stands in the way)."""
    target = tmp_path / "ro"
    if os.geteuid() == 0:
        target.write_text("a file, not a directory")
    else:
        target.mkdir()
        target.chmod(0o555)
    with pytest.raises(ConfigError, match=r"^data\.cache: "):
        open_cache(target, paths, SIZE)


@pytest.mark.slow
def test_two_processes_filling_one_cache_agree(paths: list[str], tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from mammo.data.cache import open_cache; "
        "from mammo.data.decode import read_png; paths = sys.argv[1:]; "
        "c = open_cache(Path(r'%s'), paths, (32, 32)); "
        "[c.get(i, lambda p=p: read_png(p, 32)) for i, p in enumerate(paths)]" % tmp_path
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, *paths]) for _ in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    cache = open_cache(tmp_path, paths, SIZE)
    assert cache.count() == len(paths)
    for row, path in enumerate(paths):
        assert torch.equal(cache.get(row, lambda: pytest.fail("decoded")), read_png(path, SIZE[0]))
    pixels, _, crc = cache._open()
    assert all(zlib.crc32(np.ascontiguousarray(pixels[i]).tobytes()) == crc[i] for i in range(len(paths)))
    header = json.loads((cache.info.folder / cache_mod.HEADER).read_text())
    assert header["count"] == len(paths) and header["rows"] == [os.path.abspath(p) for p in paths]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_from_the_cache_equal_decoded_batches_bit_for_bit(paths: list[str], tmp_path: Path, workers: int) -> None:
    """Filled by the loader's workers during the first epoch, read in the second; the boundary
    between building and reading changes nothing."""
    labels = [0] * len(paths)
    plain = list(make_loader(MammoImages(paths, labels, SIZE[0]), batch_size=16, workers=0))
    cache = open_cache(tmp_path, paths, SIZE)
    cached = MammoImages(paths, labels, SIZE[0], cache=cache, cache_rows=range(len(paths)))
    for epoch in range(2):
        batches = list(make_loader(cached, batch_size=16, workers=workers))
        assert len(batches) == len(plain)
        for a, b in zip(plain, batches):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])
        if epoch == 0:
            assert open_cache(tmp_path, paths, SIZE).count() == len(paths)


def test_mammo_data_cache_fills_the_cache_training_then_reads(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    from mammo.cli import main

    args = ["data", "cache", "--data", str(tiny_dataset), "--image-size", "32", "--cache", str(tmp_path), "--workers", "0"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["decoded"] == first["images"] > 0 and first["already_stored"] == 0 and first["size"] == "32x32"
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["decoded"] == 0 and second["already_stored"] == first["images"]
    paths = [str(p) for p in open_dataset(tiny_dataset)[1]]
    assert str(open_cache(tmp_path, paths, SIZE).info.folder) == first["cache"]  # the one training opens
