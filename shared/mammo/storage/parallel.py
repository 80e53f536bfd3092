"""Run transfers on a thread pool: network round trips, not CPU, bound prefix up/downloads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def run_parallel(
    fn: Callable[[ItemT], ResultT], items: Iterable[ItemT], workers: int
) -> Iterator[tuple[ItemT, ResultT]]:
    """Yield ``(item, fn(item))`` as each finishes; the first failure cancels what has not
    started and is raised (running transfers finish first, each bounded by its retry budget)."""
    todo = list(items)
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
        futures = {pool.submit(fn, item): item for item in todo}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()
