"""The audit trail of promotion decisions: ``<store>/models/<name>/promotions/``.

Every decision is written here, promoted or not (and refusals such as a candidate whose bytes do
not match its checksum), by whichever step makes it: the promoter step, which the pipeline runs
after every evaluation. One object per decision, named by UTC time to the microsecond, the
candidate's sha256 prefix and a random suffix, so two decisions in the same second (or the same
microsecond) never overwrite each other, and a listing is in time order.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from mammo.storage import get_json, join, list_objects, put_json
from mammo.storage.layout import check_name

RECORDS = "promotions"
#: What every record holds (besides whatever else the caller adds).
RECORD_KEYS = ("promoted", "candidate_uri", "metric", "candidate", "production", "reason", "decided_at")


def records_uri(store_uri: str, model_name: str) -> str:
    return join(store_uri, "models", check_name("model name", model_name), RECORDS)


def record_decision(store_uri: str, model_name: str, result: dict[str, Any], *, when: datetime | None = None) -> str:
    """Write one decision (``result``: at least ``RECORD_KEYS``; ``sha256`` or
    ``candidate_sha256`` names the candidate); returns the record's URI."""
    missing = [key for key in RECORD_KEYS if key not in result]
    if missing:
        raise ValueError(f"decision record without {', '.join(missing)}")
    when = when or datetime.now(timezone.utc)
    sha = str(result.get("candidate_sha256") or result.get("sha256") or "unknown")[:12]
    name = f"{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{sha}-{uuid.uuid4().hex[:8]}.json"
    uri = join(records_uri(store_uri, model_name), name)
    put_json(result, uri)
    return uri


def read_records(store_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every decision on record, oldest first."""
    return [get_json(uri) for uri in list_objects(records_uri(store_uri, model_name))]
