"""The audit trail of promotion decisions: ``<store>/models/<name>/promotions/``.

Every decision is written there, promoted or not (and refusals, and the operator's rollbacks and
freezes), by ``mammo.production.record_decision``; this module keeps the promoter's names."""

from __future__ import annotations

from mammo.production import RECORD_KEYS, RECORDS, read_records, record_decision, records_uri  # noqa: F401

__all__ = ["RECORDS", "RECORD_KEYS", "read_records", "record_decision", "records_uri"]
