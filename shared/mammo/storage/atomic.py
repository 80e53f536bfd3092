"""Local files appear whole or not at all: write a hidden temp file, then ``os.replace``.

The temp file gets the mode a plainly created file would get (``0666`` less the umask, so
usually ``0644``; ``0664`` under umask 002), not ``mkstemp``'s ``0600``: colleagues sharing a
volume can read the reports, checkpoints and runs written here.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mammo.errors import DiskFullError

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


def remove_leftover_temps(folder: str | Path, patterns: Iterable[str]) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that ``atomic_path`` writes of
    files matching ``patterns`` (globs such as ``last.pt``, ``topk_epoch*.pt``) left in
    ``folder`` when their process was killed mid-write; returns them. They are this program's
    own and never a finished file: call it before the command writes there again."""
    removed = []
    for pattern in patterns:
        for tmp in sorted(Path(folder).glob(f".{pattern}.*{TEMP_SUFFIX}")):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (torch.save,
    savefig, to_csv); on success it replaces ``path`` in one step, on error it is removed and
    ``path`` is untouched.

    ``durable`` also fsyncs before the rename (survives power loss); caches, which can be
    fetched again, skip it for speed.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        if is_out_of_space(exc):
            raise disk_full(exc, target) from None
        raise
    os.fchmod(fd, file_mode())
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        # rename(2) does nothing when both names are links to one file (link_or_copy of a
        # target that already links to the source): the temp name would be left behind.
        tmp.unlink(missing_ok=True)
    except BaseException as exc:
        full = is_out_of_space(exc, target.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full(exc, target) from None
        raise


#: errno values meaning "no room": the disk is full, or the user's quota is.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: What torch.save's C++ writer says instead of an errno when a write fails.
_WRITE_FAILED = ("file write failed", "inline_container.cc", "unexpected pos", "No space left on device")
#: Free space below which a failed write is put down to a full disk.
_ALMOST_FULL = 1024 * 1024


def is_out_of_space(exc: BaseException, directory: Path | None = None) -> bool:
    """Whether ``exc`` is a write that failed for lack of space: ENOSPC/EDQUOT, or (torch.save
    hides the errno) a failed write while ``directory``'s file system is (almost) full. Call it
    before removing the partial file."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    if isinstance(exc, RuntimeError) and directory is not None and any(m in str(exc) for m in _WRITE_FAILED):
        try:
            return shutil.disk_usage(directory).free < _ALMOST_FULL
        except OSError:
            return False
    return False


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def disk_full(exc: BaseException, target: Path) -> DiskFullError:
    """The one-line error for a write to ``target`` that ran out of space."""
    directory = target.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        usage = shutil.disk_usage(directory)
        space = f"{_size(usage.free)} free of {_size(usage.total)} on {_mount_point(directory)}"
    except OSError:
        space = f"free space of {directory} unknown"
    quota = " (quota exceeded)" if isinstance(exc, OSError) and exc.errno == errno.EDQUOT else ""
    return DiskFullError(
        f"no space left on device{quota} writing {target} ({space}); free some space or write "
        "elsewhere, then run the command again (training goes on from its last checkpoint with --resume)"
    )


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A scratch folder inside ``out`` for a command that writes several files there: they
    move into ``out`` together (renames, no extra space) when the block succeeds; on any error
    (a full disk halfway) the scratch folder goes and ``out`` keeps what it had - never some
    of the new files without the others."""
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
