"""Local files appear whole or not at all: write a hidden temp file, then ``os.replace``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: Suffix of in-progress files; listings skip them.
TEMP_SUFFIX = ".tmp"


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
