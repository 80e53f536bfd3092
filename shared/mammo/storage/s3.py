"""The S3 backend (MinIO in the cluster, any S3 service elsewhere) through the ``minio`` client.

Each object written here carries its sha256 as user metadata (``x-amz-meta-sha256``); reads hash
the bytes as they stream and compare before the local file appears. Every request runs under
the bounded retry of ``mammo.storage.retry``; permanent S3 errors become one-line messages.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.credentials import IamAwsProvider
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from urllib3.response import BaseHTTPResponse

from mammo.errors import ArtifactNotFoundError, PreconditionFailed, StorageError
from mammo.storage.atomic import atomic_file
from mammo.storage.base import ObjectInfo, Store
from mammo.storage.integrity import (
    CHUNK,
    SHA256_META,
    copy_hashing,
    sha256_bytes,
    sha256_file,
    verify,
)
from mammo.storage.retry import call_with_retry, describe, is_tls_error
from mammo.storage.settings import MinioSettings, StorageSettings
from mammo.storage.uri import S3Location, join, parse_s3, s3_uri

log = logging.getLogger(__name__)
T = TypeVar("T")
MIB = 1024 * 1024
_META_HEADER = f"x-amz-meta-{SHA256_META}"
#: What S3 services answer when a conditional write's condition does not hold (409: a
#: conflicting conditional write in flight, AWS).
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)


def _content_type(uri: str) -> str:
    return mimetypes.guess_type(uri)[0] or "application/octet-stream"


def _etag(response: BaseHTTPResponse) -> str:
    return str(response.headers.get("etag", "")).strip('"')


class _Discard(io.RawIOBase):
    """A sink for bytes that are only hashed."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


class S3Store(Store):
    def __init__(self, minio: MinioSettings, settings: StorageSettings) -> None:
        if not minio.endpoint:
            raise StorageError(
                "MINIO_ENDPOINT is not set: s3:// URIs need MINIO_ENDPOINT (host:port), "
                "MINIO_ACCESS_KEY and MINIO_SECRET_KEY in the environment"
            )
        if (minio.access_key is None) != (minio.secret_key is None):
            raise StorageError("set both MINIO_ACCESS_KEY and MINIO_SECRET_KEY, or neither")
        self.endpoint = minio.endpoint
        self.workers = settings.workers
        self._part_size = settings.part_size_mib * MIB
        self._retry_seconds = settings.retry_seconds
        self._conditional = settings.conditional_writes
        self._probed: dict[str, bool] = {}
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(
                connect=settings.connect_timeout_seconds, read=settings.request_read_timeout
            ),
            # Each worker may run a multipart upload with its own 3 part threads.
            maxsize=settings.workers * 4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=False,  # mammo.storage.retry owns retries and their time budget
        )
        self._client = Minio(
            minio.endpoint,
            access_key=minio.access_key.get_secret_value() if minio.access_key else None,
            secret_key=minio.secret_key.get_secret_value() if minio.secret_key else None,
            session_token=minio.session_token.get_secret_value() if minio.session_token else None,
            secure=minio.secure,
            region=minio.region,
            http_client=http,
            # IRSA / pod identity: the minio client's provider exchanges the token for keys.
            credentials=IamAwsProvider(http_client=http) if minio.web_identity else None,
        )

    # --- error handling -----------------------------------------------------------------

    def _location(self, uri: str, *, object_key: bool = True) -> S3Location:
        loc = parse_s3(uri)
        try:
            check_bucket_name(loc.bucket)
        except ValueError:
            raise StorageError(f"{uri}: invalid bucket name '{loc.bucket}'") from None
        if object_key and not loc.key:
            raise StorageError(f"{uri}: expected an object key after the bucket name")
        return loc

    def _run(self, uri: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(
                fn, uri=uri, endpoint=self.endpoint, budget_seconds=self._retry_seconds
            )
        except S3Error as err:
            raise self._permanent(err, uri) from None
        except (InvalidResponseError, ServerError, urllib3.exceptions.HTTPError) as err:
            if is_tls_error(err):
                raise StorageError(
                    f"TLS handshake with {self.endpoint} failed for {uri}: check MINIO_SECURE "
                    "(true for https, false for plain http) and the server certificate"
                ) from None
            raise StorageError(f"storage request failed for {uri}: {describe(err)}") from None

    def _bucket_missing(self, bucket: str) -> bool:
        try:
            return not self._client.bucket_exists(bucket)
        except Exception:  # only refines an error message; the original error still stands
            return False

    def _permanent(self, err: S3Error, uri: str) -> StorageError:
        bucket = parse_s3(uri).bucket
        if err.code == "NoSuchBucket" or (err.code == "NoSuchKey" and self._bucket_missing(bucket)):
            return StorageError(f"bucket not found: {bucket} on {self.endpoint} (for {uri})")
        if err.code == "NoSuchKey":
            return ArtifactNotFoundError(f"artifact not found: {uri}")
        if err.code in _DENIED_CODES:
            return StorageError(
                f"access denied: check MINIO_ACCESS_KEY/MINIO_SECRET_KEY (and bucket policy) "
                f"for {self.endpoint} ({err.code} on {uri})"
            )
        return StorageError(f"storage request failed for {uri}: {err.code}: {err.message}")

    # --- primitives ---------------------------------------------------------------------

    def stat(self, uri: str) -> ObjectInfo:
        loc = self._location(uri)
        st = self._run(uri, lambda: self._client.stat_object(loc.bucket, loc.key))
        return ObjectInfo(
            uri, int(st.size or 0), str(st.etag), (st.metadata or {}).get(_META_HEADER)
        )

    def list_info(self, prefix_uri: str) -> list[ObjectInfo]:
        loc = self._location(prefix_uri, object_key=False)
        prefix = f"{loc.key}/" if loc.key else ""

        def listing() -> list[ObjectInfo]:
            found = self._client.list_objects(loc.bucket, prefix=prefix, recursive=True)
            return [
                ObjectInfo(s3_uri(loc.bucket, str(o.object_name)), int(o.size or 0), str(o.etag))
                for o in found
                if not o.is_dir and not str(o.object_name).endswith("/")
            ]

        return sorted(self._run(prefix_uri, listing), key=lambda info: info.uri)

    def put_file(self, local: str | Path, uri: str) -> ObjectInfo:
        src = Path(local)
        if not src.is_file():
            raise ArtifactNotFoundError(f"artifact not found: {src}")
        loc = self._location(uri)
        digest = sha256_file(src)
        result = self._run(
            uri,
            lambda: self._client.fput_object(
                loc.bucket,
                loc.key,
                str(src),
                content_type=_content_type(uri),
                metadata={SHA256_META: digest},
                part_size=self._part_size,
            ),
        )
        return ObjectInfo(uri, src.stat().st_size, str(result.etag), digest)

    def _get(self, uri: str, read: Callable[[BaseHTTPResponse], T]) -> T:
        loc = self._location(uri)

        def attempt() -> T:
            response = self._client.get_object(loc.bucket, loc.key)
            try:
                return read(response)
            finally:
                response.close()
                response.release_conn()

        return self._run(uri, attempt)

    def get_file(self, uri: str, local: str | Path, sha256: str | None = None) -> ObjectInfo:
        def read(response: BaseHTTPResponse) -> ObjectInfo:
            with atomic_file(local, durable=False) as out:
                digest, size = copy_hashing(response.stream(CHUNK), out)
                verify(uri, digest, sha256, response.headers.get(_META_HEADER))
            return ObjectInfo(uri, size, _etag(response), digest)

        return self._get(uri, read)

    def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        def read(response: BaseHTTPResponse) -> bytes:
            buffer = io.BytesIO()
            digest, _ = copy_hashing(response.stream(CHUNK), buffer)
            verify(uri, digest, sha256, response.headers.get(_META_HEADER))
            return buffer.getvalue()

        return self._get(uri, read)

    def digest(self, uri: str) -> ObjectInfo:
        def read(response: BaseHTTPResponse) -> ObjectInfo:
            digest, size = copy_hashing(response.stream(CHUNK), _Discard())
            return ObjectInfo(uri, size, _etag(response), digest)

        return self._get(uri, read)

    def put_bytes(self, data: bytes, uri: str) -> ObjectInfo:
        loc = self._location(uri)
        digest = sha256_bytes(data)
        result = self._run(
            uri,
            lambda: self._client.put_object(
                loc.bucket,
                loc.key,
                io.BytesIO(data),
                len(data),
                content_type=_content_type(uri),
                metadata={SHA256_META: digest},
            ),
        )
        return ObjectInfo(uri, len(data), str(result.etag), digest)

    # --- conditional writes -------------------------------------------------------------

    def conditional_writes(self, scratch_uri: str) -> bool:
        """``MAMMO_STORAGE_CONDITIONAL_WRITES``; on ``auto``, probed once per bucket: a second
        ``If-None-Match: *`` PUT of a fresh object below ``scratch_uri`` must be refused. A
        server that ignores the header (s3rver, some S3 services) overwrites instead."""
        if self._conditional != "auto":
            return self._conditional == "on"
        bucket = self._location(scratch_uri, object_key=False).bucket
        if bucket not in self._probed:
            probe = join(scratch_uri, f"conditional-write-probe-{uuid.uuid4().hex}.json")
            self.put_bytes_if(b'{"probe": 1}', probe, None)
            try:  # other bytes: a refused PUT of the same bytes counts as its own retry landing
                self.put_bytes_if(b'{"probe": 2}', probe, None)
                self._probed[bucket] = False
            except PreconditionFailed:
                self._probed[bucket] = True
            finally:
                self.delete(probe)
            log.info("%s: conditional writes %s", bucket, "honoured" if self._probed[bucket] else "ignored")
        return self._probed[bucket]

    def put_bytes_if(self, data: bytes, uri: str, etag: str | None) -> ObjectInfo:
        loc = self._location(uri)
        digest = sha256_bytes(data)
        condition = {"If-None-Match": "*"} if etag is None else {"If-Match": f'"{etag}"'}
        headers = {"Content-Type": _content_type(uri), _META_HEADER: digest, **condition}

        def attempt() -> ObjectInfo:
            try:
                # minio's public put_object turns extra headers into x-amz-meta-*; its
                # single-request PutObject takes them as they are.
                result = self._client._put_object(loc.bucket, loc.key, data, headers)
            except S3Error as err:
                if err.code not in _PRECONDITION_CODES:
                    raise
                # A retried PUT whose first try landed finds its own bytes: that is a success.
                try:
                    current, current_etag = self.get_bytes_and_etag(uri)
                except ArtifactNotFoundError:
                    current, current_etag = None, ""
                if current != data:
                    raise PreconditionFailed(f"{uri}: changed by another writer ({err.code})") from None
                return ObjectInfo(uri, len(data), current_etag, digest)
            return ObjectInfo(uri, len(data), str(result.etag), digest)

        return self._run(uri, attempt)

    def get_bytes_and_etag(self, uri: str) -> tuple[bytes, str]:
        def read(response: BaseHTTPResponse) -> tuple[bytes, str]:
            buffer = io.BytesIO()
            digest, _ = copy_hashing(response.stream(CHUNK), buffer)
            verify(uri, digest, None, response.headers.get(_META_HEADER))
            return buffer.getvalue(), _etag(response)

        return self._get(uri, read)

    def copy(self, src_uri: str, dst_uri: str) -> ObjectInfo:
        source = self.stat(src_uri)
        src, dst = self._location(src_uri), self._location(dst_uri)
        result = self._run(
            dst_uri,
            lambda: self._client.copy_object(dst.bucket, dst.key, CopySource(src.bucket, src.key)),
        )
        return ObjectInfo(dst_uri, source.size, str(result.etag), source.sha256)

    def delete(self, uri: str) -> None:
        loc = self._location(uri)
        self._run(uri, lambda: self._client.remove_object(loc.bucket, loc.key))
