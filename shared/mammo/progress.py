"""Progress reporting: a tqdm bar on a terminal, sparse log lines otherwise (CI, pods, files)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("mammo.progress")


def interactive() -> bool:
    """A bar on a terminal, from the main process only (one bar for a distributed job)."""
    return sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"


def track(items: Iterable[T], *, desc: str, total: int | None = None, every_s: float = 30.0) -> Iterator[T]:
    """Iterate ``items`` showing progress; without a terminal log at most every ``every_s``."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if interactive():
        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    last = time.monotonic()
    for i, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s: %d/%s", desc, i, total if total is not None else "?")
