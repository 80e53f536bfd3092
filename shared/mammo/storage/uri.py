"""Storage URIs: ``s3://bucket/key``, ``file:///abs/path`` or a plain local path.

URIs are plain strings so they travel unchanged through configs, CLI flags and pipeline
parameters; these helpers are the only place that knows how to take them apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from mammo.errors import StorageError

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class S3Location(NamedTuple):
    bucket: str
    key: str


def is_remote(uri: str) -> bool:
    """True for ``s3://`` URIs; local paths and ``file://`` URIs are not remote."""
    return str(uri).startswith(S3_SCHEME)


def check_scheme(uri: str) -> None:
    """Reject schemes no backend serves (``gs://``, ``http://``) with a clear message."""
    match = _SCHEME.match(str(uri))
    if match and match.group(0) not in (S3_SCHEME, FILE_SCHEME):
        scheme = match.group(1)
        raise StorageError(
            f"unsupported URI scheme '{scheme}' in {uri}: use s3://bucket/key or a local path"
        )


def parse_s3(uri: str) -> S3Location:
    """Split ``s3://bucket/key`` into bucket and key (key without leading/trailing slash)."""
    if not is_remote(uri):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: missing bucket name (expected s3://bucket/key)")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise StorageError(f"{uri}: '.' and '..' are not allowed in object keys")
    return S3Location(bucket, key.strip("/"))


def s3_uri(bucket: str, key: str) -> str:
    return f"{S3_SCHEME}{bucket}/{key}" if key else f"{S3_SCHEME}{bucket}"


def local_path(uri: str | Path) -> Path:
    """The filesystem path of a plain path or ``file://`` URI."""
    text = str(uri)
    if is_remote(text):
        raise StorageError(f"not a local path: {text}")
    check_scheme(text)
    if text.startswith(FILE_SCHEME):
        rest = text[len(FILE_SCHEME) :]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise StorageError(f"{text}: file:// URIs need an absolute path (file:///abs/path)")
        return Path(rest)
    return Path(text)


def join(uri: str | Path, *parts: str) -> str:
    """Append key/path segments: ``join("s3://b/runs", "r1", "x.pt") == "s3://b/runs/r1/x.pt"``.

    The URI keeps its form (s3, file:// or plain path); empty segments are ignored.
    """
    text = str(uri)
    segments = [seg for part in parts for seg in str(part).split("/") if seg]
    if ".." in segments:
        raise StorageError(f"'..' is not allowed in storage keys: {'/'.join(map(str, parts))}")
    if not segments:
        return text
    return text.rstrip("/") + "/" + "/".join(segments)


def relative_key(prefix_uri: str, uri: str) -> str:
    """The part of ``uri`` below ``prefix_uri`` (posix separators)."""
    base = str(prefix_uri).rstrip("/") + "/"
    if not uri.startswith(base):
        raise StorageError(f"{uri} is not below {prefix_uri}")
    return uri[len(base) :]
