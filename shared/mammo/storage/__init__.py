"""Object storage for every input and output: ``s3://bucket/key`` or a local path.

The backend is chosen by URI: ``s3://`` goes to an S3 service (MinIO in the cluster) through
the ``minio`` client; plain paths and ``file://`` URIs use the local filesystem, the embedded
default for local runs. S3 settings come from the environment only (``MINIO_ENDPOINT``
host:port, ``MINIO_ACCESS_KEY``, ``MINIO_SECRET_KEY``, ``MINIO_SECURE`` true/false,
``MINIO_REGION``), transfer tuning from ``MAMMO_STORAGE_*`` (see ``settings``). Nothing here
imports torch.

Functions (each takes URIs of either kind)::

    put_file(local, uri) / get_file(uri, local, sha256=None) -> ObjectInfo
    put_bytes(data, uri) / get_bytes(uri, sha256=None)
    put_json(obj, uri) / get_json(uri, sha256=None)
    stat(uri) -> ObjectInfo, exists(uri), list_objects(prefix_uri) -> [uri, ...]
    copy(src_uri, dst_uri)               also local <-> S3
    delete(uri), delete_prefix(prefix_uri)
    upload_dir(local_dir, prefix_uri)    parallel
    download_prefix(prefix_uri, local_dir, cache=True) -> [Path, ...]
                                         parallel; unchanged objects are not fetched again
    open_store(uri) -> Store             the same operations as methods of one backend
    join(uri, *parts), is_remote(uri), local_path(uri)

Guarantees:

- Integrity: everything written here records its sha256 (S3 user metadata
  ``x-amz-meta-sha256``; a hidden ``.<name>.sha256`` sidecar locally) and every read hashes the
  bytes and compares them (also with the ``sha256`` argument, e.g. from a manifest) before the
  data is returned or the local file appears; a mismatch raises ``IntegrityError`` naming the
  object. Objects written by other tools carry no checksum and are verified only against a
  manifest.
- Visibility: ``publish(source, prefix_uri, metadata)`` uploads a step's files and writes
  ``manifest.json`` last; readers use ``read_manifest``/``fetch_from_manifest`` and see only
  complete, verified sets. Local writes are atomic (temp file + ``os.replace``); S3 objects
  appear only when their upload completes (multipart above ``MAMMO_STORAGE_PART_SIZE_MIB``).
- Faults: transient errors (connection refused/reset, timeouts, 5xx, SlowDown) are retried with
  exponential backoff and jitter for at most ``MAMMO_STORAGE_RETRY_SECONDS``; permanent ones fail
  at once with one line: ``artifact not found: s3://...`` (``ArtifactNotFoundError``),
  ``bucket not found: ...``, ``access denied: check MINIO_ACCESS_KEY/MINIO_SECRET_KEY ...``,
  ``storage endpoint unreachable: host:port after N attempts ...`` (``StorageError``).

Layout below a root (``layout``): ``datasets/<name>/``, ``splits/<dataset-fingerprint>/``,
``runs/<run-id>/<component>/``, ``models/<name>/production/``.
"""

from mammo.errors import ArtifactNotFoundError, IntegrityError, StorageError
from mammo.storage.api import (
    copy,
    delete,
    delete_prefix,
    download_prefix,
    exists,
    get_bytes,
    get_file,
    get_json,
    list_objects,
    open_store,
    put_bytes,
    put_file,
    put_json,
    stat,
    upload_dir,
)
from mammo.storage.base import ObjectInfo, Store
from mammo.storage.layout import dataset_uri, production_model_uri, run_uri, split_uri
from mammo.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    fetch_from_manifest,
    publish,
    read_manifest,
)
from mammo.storage.uri import is_remote, join, local_path

__all__ = [
    "MANIFEST_NAME",
    "ArtifactNotFoundError",
    "IntegrityError",
    "Manifest",
    "ManifestEntry",
    "ObjectInfo",
    "StorageError",
    "Store",
    "copy",
    "dataset_uri",
    "delete",
    "delete_prefix",
    "download_prefix",
    "exists",
    "fetch_from_manifest",
    "get_bytes",
    "get_file",
    "get_json",
    "is_remote",
    "join",
    "list_objects",
    "local_path",
    "open_store",
    "production_model_uri",
    "publish",
    "put_bytes",
    "put_file",
    "put_json",
    "read_manifest",
    "run_uri",
    "split_uri",
    "stat",
    "upload_dir",
]
