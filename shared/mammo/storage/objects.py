"""What a store says about an object, and the one store ability the fetch cache relies on.

Kept apart from ``base`` so that ``cache`` (used by ``base``) needs nothing from it: the
storage package has no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    ``etag`` changes whenever the content changes (S3 ETag; size and mtime for local files).
    ``sha256`` is the recorded checksum (``None`` when none was recorded or the listing does not
    carry it); after a ``get_file`` it is the checksum of the bytes actually received.
    """

    uri: str
    size: int
    etag: str
    sha256: str | None = None


class ObjectSource(Protocol):
    """A store as the fetch cache sees it: verified single-object downloads, in parallel."""

    workers: int

    def get_file(self, uri: str, local: str | Path, sha256: str | None = None) -> ObjectInfo: ...
