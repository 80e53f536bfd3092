"""Where a command may write a file it names with ``--out``: never onto one of its own inputs,
never inside a store's production folder (``models/<name>/production/``, which only the
promoter changes, under its lock and with verified bytes), and never over an existing file
that is not an earlier output of the same kind (a training checkpoint, a labelled table, a
user's file). Checked before any work, so a refusal leaves everything as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from mammo import storage
from mammo.errors import ConfigError


def _identity(location: str) -> str:
    """A comparable form: local paths resolved (symlinks, ``..``), URIs without a trailing /."""
    if storage.is_remote(location):
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


def in_production_folder(location: str) -> bool:
    """Whether ``location`` lies in a ``models/<name>/production`` folder (local or remote)."""
    parts = PurePosixPath(_identity(location).split("://", 1)[-1]).parts
    return any(parts[i] == "models" and parts[i + 2] == "production" for i in range(len(parts) - 2))


def _exists(location: str) -> bool:
    return storage.exists(location) if storage.is_remote(location) else Path(location).exists()


def check_output(
    location: str, *, flag: str, inputs: Iterable[str] = (), ours: Callable[[str], bool] | None = None, what: str,
) -> None:
    """``ConfigError`` (one line naming ``flag``) unless ``location`` may be written: not one of
    ``inputs``, not in a production folder, and either new or, by ``ours(location)``, an earlier
    ``what`` (e.g. "weights export") that this command may replace."""
    target = _identity(location)
    for source in inputs:
        if source and _identity(source) == target:
            raise ConfigError(f"{flag} {location}: is an input of this command; write the {what} elsewhere")
    if in_production_folder(location):
        raise ConfigError(
            f"{flag} {location}: is inside a production model folder (models/<name>/production), which only the "
            f"promoter changes; write the {what} elsewhere"
        )
    if _exists(location) and not (ours is not None and ours(location)):
        raise ConfigError(
            f"{flag} {location}: exists and is not an earlier {what}; it is not replaced: choose another path "
            "or move it away first"
        )


def csv_header(location: str) -> list[str]:
    """The column names of a CSV file (its first line), [] if unreadable."""
    try:
        if storage.is_remote(location):
            first = storage.get_bytes(location).split(b"\n", 1)[0].decode("utf-8", "replace")
        else:
            with open(location, encoding="utf-8", errors="replace") as handle:
                first = handle.readline()
    except (OSError, storage.StorageError):
        return []
    return [name.strip() for name in first.strip().split(",")]
