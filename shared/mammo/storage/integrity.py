"""sha256 of artifacts, computed while bytes stream, and the check that refuses bad bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from mammo.errors import IntegrityError

CHUNK = 1024 * 1024
#: Object user metadata key (sent as ``x-amz-meta-sha256``).
SHA256_META = "sha256"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_hashing(chunks: Iterable[bytes], out: BinaryIO) -> tuple[str, int]:
    """Write ``chunks`` to ``out``; return (sha256 hex, size) of what was written."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def file_chunks(path: str | Path) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def verify(uri: str, actual: str, *expected: str | None) -> None:
    """Raise ``IntegrityError`` naming ``uri`` unless ``actual`` equals every known expectation.

    ``None`` means "nothing recorded": objects not written by this layer (e.g. a dataset
    uploaded with another tool) carry no checksum, and manifests then provide one.
    """
    for want in expected:
        if want is not None and want != actual:
            raise IntegrityError(
                f"integrity check failed for {uri}: sha256 {actual[:12]}... but {want[:12]}... "
                "was recorded (object corrupted or replaced); refusing to use it"
            )
