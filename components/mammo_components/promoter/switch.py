"""Moving the production pointer: a verified copy, a compare-and-swap, garbage collection.

The mechanics live in ``mammo.production`` (shared with ``mammo models rollback``); this
module keeps the promoter's names for them."""

from __future__ import annotations

from mammo.production import (  # noqa: F401
    KEEP_PROMOTED,
    collect_garbage,
    current_manifest,
    expected_sha256,
    fence_of,
    model_key,
    stage,
    swap,
)

__all__ = ["KEEP_PROMOTED", "collect_garbage", "current_manifest", "expected_sha256", "fence_of", "model_key",
           "stage", "swap"]
