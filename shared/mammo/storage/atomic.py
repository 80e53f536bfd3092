"""Local files appear whole or not at all: write a hidden temp file, then ``os.replace``.

The temp file gets the mode a plainly created file would get (``0666`` less the umask, so
usually ``0644``; ``0664`` under umask 002), not ``mkstemp``'s ``0600``: colleagues sharing a
volume can read the reports, checkpoints and runs written here.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: Suffix of in-progress files; listings skip them.
TEMP_SUFFIX = ".tmp"


@functools.cache
def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only
    be read by setting it, which would briefly affect other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a newly created file: ``0666`` less the umask."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (torch.save,
    savefig, to_csv); on success it replaces ``path`` in one step, on error it is removed and
    ``path`` is untouched.

    ``durable`` also fsyncs before the rename (survives power loss); caches, which can be
    fetched again, skip it for speed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.fchmod(fd, file_mode())
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """``atomic_path`` for writers that want a binary handle."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as handle:
        yield handle


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """``target`` with the content of ``source``, atomically: a hard link where the file system
    allows (no second copy on disk), else a copy. Only for files that are never changed in
    place, only replaced, which is how every file here is written."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)
