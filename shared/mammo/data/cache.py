"""Decode each image once: a fixed-size uint8 array store of the decoded, resized images.

Decoding a PNG costs ~100x more than reading the same pixels back from memory, and it is
repeated every epoch; at 1024x512 and up a GPU needs 10+ cores of decoding to stay busy. The
cache holds every image of a dataset at one input size (H x W) in one ``np.memmap`` file
(``pixels.u8``, N x H x W), beside a state byte and a CRC32 per image and a JSON header that
says what it holds. Why a memmap rather than litdata or webdataset: training reads images in a
new random order every epoch, so it needs random access by row, which a memmap gives with no
copy and no dependency (webdataset streams tar shards in order; litdata adds a streaming and
cloud layer this job does not need); the OS page cache shares one copy between DataLoader
workers, processes and pipeline steps on a node.

Filling happens while the first epoch runs (in the DataLoader workers: a miss decodes, stores
and marks the image) or ahead of it (``mammo data cache``). The header records the dataset
rows and each source file's name, size and modification time, the input size and the decoder
version; any change makes another cache (another folder), never a stale read. An image's pixels
are written before its state byte, so a process killed mid-write leaves the image unmarked and it
is decoded again; opening a cache checks every marked image's CRC32 (``verify``), so flipped or
truncated bytes are found and rebuilt, never read. Two processes filling one cache write the same
bytes for the same image (decoding is deterministic), so they can share it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mammo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Bumped whenever the stored bytes of an image would change (decoding, resizing, layout).
FORMAT = 1
HEADER = "cache.json"
PIXELS = "pixels.u8"
STATE = "state.u8"
CRC = "crc.u32"
#: Per-image state: not yet decoded, decoded and stored, or unreadable (``bad_images: skip``).
EMPTY, READY, BAD = 0, 1, 2


def decoder_version() -> str:
    """Everything that decides the decoded bytes besides the file and the size."""
    import torchvision

    return f"format {FORMAT}; torch {torch.__version__}; torchvision {torchvision.__version__}"


def cache_key(paths: Sequence[str], size: tuple[int, int]) -> str:
    """Digest of the rows (in order), each source file's name, size, mtime, inode and ctime,
    the input size and the decoder version; a missing file is a one-line ``DataError``. The
    inode and ctime catch a file replaced by another of the same size with its mtime kept
    (``cp -p``, ``rsync -a``, ``touch -r``): no one can set a ctime."""
    digest = hashlib.sha256(json.dumps([list(size), decoder_version()]).encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\0{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:24]


def resolve_cache_root(setting: str) -> Path | None:
    """``data.cache``: ``off`` (None), ``auto`` ($MAMMO_CACHE_DIR/decoded, else
    ~/.cache/mammo/decoded) or a directory."""
    if setting == "off":
        return None
    if setting == "auto":
        base = os.environ.get("MAMMO_CACHE_DIR") or Path.home() / ".cache" / "mammo"
        return Path(base) / "decoded"
    return Path(setting)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time creates or repairs a cache folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class CacheInfo:
    folder: Path
    count: int
    height: int
    width: int
    key: str


class DecodedCache:
    """The cache of one dataset at one size. Picklable: each process (DataLoader worker) maps
    the files itself on first use."""

    def __init__(self, info: CacheInfo) -> None:
        self.info = info
        self._arrays: tuple[np.memmap, np.memmap, np.memmap] | None = None

    def __getstate__(self) -> dict:
        return {"info": self.info, "_arrays": None}

    def _open(self) -> tuple[np.memmap, np.memmap, np.memmap]:
        if self._arrays is None:
            info = self.info
            self._arrays = (
                np.memmap(info.folder / PIXELS, np.uint8, "r+", shape=(info.count, info.height, info.width)),
                np.memmap(info.folder / STATE, np.uint8, "r+", shape=(info.count,)),
                np.memmap(info.folder / CRC, np.uint32, "r+", shape=(info.count,)),
            )
        return self._arrays

    def get(self, row: int, decode: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """Row ``row`` as uint8 [1, H, W]: read when stored, else decoded with ``decode``,
        stored and marked. None for a row marked unreadable; ``decode``'s ``DataError``
        marks it so (callers that skip bad images catch it) and propagates."""
        pixels, state, crc = self._open()
        if state[row] == READY:
            return torch.from_numpy(np.array(pixels[row]))[None]
        if state[row] == BAD:
            return None
        try:
            image = decode()
        except DataError:
            state[row] = BAD
            raise
        values = image[0].numpy()
        if values.shape != pixels.shape[1:]:
            raise DataError(f"decoded image of shape {values.shape} does not fit the cache's {pixels.shape[1:]}")
        pixels[row] = values
        crc[row] = zlib.crc32(values.tobytes())
        state[row] = READY  # after the pixels: a torn write is never marked
        return image

    def read_many(self, rows: Sequence[int]) -> torch.Tensor | None:
        """uint8 [len(rows), 1, H, W] in one copy when every row is stored; else None."""
        pixels, state, _ = self._open()
        index = np.asarray(rows, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(state)):
            raise IndexError(f"cache rows outside 0..{len(state) - 1}")
        if not (state[index] == READY).all():
            return None
        out = torch.empty((len(index), 1, self.info.height, self.info.width), dtype=torch.uint8)
        # mode="clip" (the rows are checked above): numpy buffers ``out`` for the default
        # mode="raise", a second copy of the whole batch that halved the throughput.
        np.take(pixels, index, axis=0, out=out.numpy()[:, 0], mode="clip")
        return out

    def count(self, kind: int = READY) -> int:
        return int((self._open()[1] == kind).sum())


def open_cache(
    root: Path, paths: Sequence[str], size: tuple[int, int], *, verify: bool = True
) -> DecodedCache:
    """The cache of these rows at ``size`` under ``root`` (made when absent: after checking the
    free space). With ``verify`` every stored image's CRC32 is checked and failures are marked
    for decoding again."""
    height, width = size
    key = cache_key(paths, size)
    folder = root / f"{height}x{width}-{key}"
    info = CacheInfo(folder, len(paths), height, width, key)
    header = {"format": FORMAT, "key": key, "count": len(paths), "height": height, "width": width,
              "decoder": decoder_version(), "rows": [os.path.abspath(p) for p in paths]}
    try:
        with _locked(folder):
            if not _valid_header(folder, header):
                _create(folder, header)
            cache = DecodedCache(info)
            if verify:
                _verify(cache)
            else:
                cache._open()
    except PermissionError:
        raise ConfigError(f"data.cache: {root} is not writable; choose another directory or data.cache=off") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ConfigError(f"data.cache: {folder}: no space left on the device; set data.cache=off or another directory") from None
        raise ConfigError(f"data.cache: {folder}: {exc.strerror or exc.__class__.__name__}") from None
    log.info("decoded cache %s: %d of %d images stored", folder, cache.count(), len(paths))
    return cache


def _valid_header(folder: Path, header: dict) -> bool:
    try:
        stored = json.loads((folder / HEADER).read_text())
    except (OSError, ValueError):
        return False
    sizes = {PIXELS: header["count"] * header["height"] * header["width"], STATE: header["count"], CRC: 4 * header["count"]}
    try:
        same_files = all((folder / name).stat().st_size == size for name, size in sizes.items())
    except OSError:
        return False
    return stored == header and same_files


def _create(folder: Path, header: dict) -> None:
    """Fresh, empty files (sparse where the filesystem allows), then the header last."""
    need = header["count"] * (header["height"] * header["width"] + 5)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ConfigError(
            f"data.cache: {folder} needs {need / 2**30:.2f} GiB for {header['count']} images at "
            f"{header['height']}x{header['width']}, but only {free / 2**30:.2f} GiB are free; "
            "free space, set data.cache to another directory, or data.cache=off"
        )
    (folder / HEADER).unlink(missing_ok=True)
    for name, size in ((PIXELS, need - 5 * header["count"]), (STATE, header["count"]), (CRC, 4 * header["count"])):
        with open(folder / name, "wb") as handle:
            handle.truncate(size)
            try:  # reserve the blocks: writing into a sparse map on a full disk kills with SIGBUS
                os.posix_fallocate(handle.fileno(), 0, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise
                log.debug("%s: no preallocation on this filesystem (%s)", folder, exc.strerror)
    (folder / HEADER).write_text(json.dumps(header))


def _verify(cache: DecodedCache) -> None:
    pixels, state, crc = cache._open()
    broken = 0
    for row in np.flatnonzero(state == READY):
        if zlib.crc32(pixels[row].tobytes()) != int(crc[row]):
            state[row] = EMPTY
            broken += 1
    if broken:
        log.warning("decoded cache %s: %d image(s) failed their checksum and will be decoded again", cache.info.folder, broken)

