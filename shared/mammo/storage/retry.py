"""Which S3 failures are worth retrying, and the bounded retry loop.

Transient: connection refused/reset, timeouts, broken transfers, HTTP 5xx, ``SlowDown`` and
friends. They are retried with exponential backoff and jitter until the operation's time budget
(``MAMMO_STORAGE_RETRY_SECONDS``) is spent. Everything else (missing object or bucket, rejected
credentials, TLS mismatch) is permanent and raised at once. The minio client's own urllib3 pool
is built without retries, so this budget is the only one that applies.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import urllib3.exceptions as u3
from minio.error import InvalidResponseError, S3Error, ServerError

from mammo.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_S3_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "OperationAborted",
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)
_CONNECTION_ERRORS = (
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    u3.ProtocolError,
    u3.TimeoutError,
    u3.MaxRetryError,
)
BASE_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 5.0


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (urllib3 keeps the socket error as ``reason``/``__cause__``)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        item = todo.pop()
        if any(item is s for s in seen):
            continue
        seen.append(item)
        linked = (getattr(item, "reason", None), item.__cause__, item.__context__)
        todo += [e for e in linked if isinstance(e, BaseException)]
    return seen


def _http_status(exc: BaseException) -> int:
    if isinstance(exc, S3Error):
        return int(exc.response.status)
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):
        return int(getattr(exc, "_code", 0) or 0)
    return 0


def is_tls_error(exc: BaseException) -> bool:
    """A TLS failure (e.g. https against a plain-http server): configuration, not weather."""
    return any(isinstance(e, u3.SSLError) for e in _causes(exc))


def is_connection_error(exc: BaseException) -> bool:
    """The endpoint could not be reached or dropped the connection (not a TLS mismatch)."""
    if is_tls_error(exc):
        return False
    return any(isinstance(e, _CONNECTION_ERRORS) for e in _causes(exc))


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error) and exc.code in TRANSIENT_S3_CODES:
        return True
    if isinstance(exc, (S3Error, ServerError, InvalidResponseError)):
        status = _http_status(exc)
        return status >= 500 or status == 429
    return is_connection_error(exc)


def describe(exc: BaseException) -> str:
    """A few words for a log line or message: 'connection refused', 'SlowDown', 'HTTP 502'."""
    if isinstance(exc, S3Error):
        return str(exc.code)
    if isinstance(exc, (ServerError, InvalidResponseError)):
        return f"HTTP {_http_status(exc)}"
    causes = _causes(exc)
    for kind, words in (
        (ConnectionRefusedError, "connection refused"),
        (ConnectionResetError, "connection reset"),
        (u3.ProtocolError, "connection broken mid-transfer"),
        (http.client.IncompleteRead, "connection broken mid-transfer"),
        (u3.NameResolutionError, "host name not resolved"),
        (TimeoutError, "timed out"),
        (u3.TimeoutError, "timed out"),
    ):
        if any(isinstance(e, kind) for e in causes):
            return words
    return type(exc).__name__


def call_with_retry(fn: Callable[[], T], *, uri: str, endpoint: str, budget_seconds: float) -> T:
    """Run ``fn``; retry transient failures within ``budget_seconds``, then raise a one-line
    ``StorageError``. Permanent failures propagate unchanged for the caller to translate."""
    deadline = time.monotonic() + budget_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if is_connection_error(exc):
                    raise StorageError(
                        f"storage endpoint unreachable: {endpoint} after {attempt} attempts "
                        f"({describe(exc)}, while accessing {uri})"
                    ) from None
                raise StorageError(
                    f"storage endpoint failing: {endpoint} answered {describe(exc)} for {uri} "
                    f"after {attempt} attempts"
                ) from None
            backoff = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2 ** (attempt - 1))
            delay = min(remaining, random.uniform(backoff / 2, backoff))
            log.warning(
                "%s: %s (attempt %d); retrying in %.1fs", uri, describe(exc), attempt, delay
            )
            time.sleep(delay)
