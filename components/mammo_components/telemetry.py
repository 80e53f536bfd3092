"""A component's telemetry: the step's success and duration (and, for the trainers, every
epoch) pushed to the Pushgateway, labelled with the component and the run id. Torch-free."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mammo.telemetry import Telemetry

log = logging.getLogger(__name__)


def run_id_from_uri(uri: str) -> str | None:
    """``<run-id>`` of ``.../runs/<run-id>/<component>``; None for URIs outside that layout."""
    parts = [p for p in str(uri).split("/") if p]
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "runs":
            return parts[i + 1]
    return None


@contextmanager
def telemetry_step(component: str, run_id: str | None, quiet: bool = False) -> Iterator[Telemetry | None]:
    """The step's telemetry: success/failure and duration are pushed when the block ends.
    Without a run id there is nothing to label the series with, so nothing is pushed
    (``quiet``: and nothing said, as for the non-main processes of a distributed job)."""
    if run_id is None:
        if not quiet:
            log.info("%s: no run id (none given, none in the output URI): telemetry off", component)
        yield None
        return
    telemetry = Telemetry(component, run_id)
    with telemetry.step():
        yield telemetry
