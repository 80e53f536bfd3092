"""Talking to a KFP API server (v2beta1) through ``kfp.Client``: submit runs, follow them,
manage recurring runs (schedules) by name.

Schedules are identified by their display name: ``schedule`` creates the new recurring run,
then deletes every other one of that name, so running it again replaces the schedule instead of
adding a second one (KFP has no update call for recurring runs). A failure between the two
steps leaves the old one too, and the next ``schedule`` call removes it.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo.errors import ConfigError, MammoError

#: Where a pod's projected ServiceAccount token for KFP lives (multi-user KFP checks it).
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
HOST_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


class KfpError(MammoError):
    """The KFP API refused a request or could not be reached."""


@dataclass(frozen=True)
class Schedule:
    id: str
    name: str
    cron: str | None
    enabled: bool
    max_concurrency: int | None
    no_catchup: bool | None
    experiment_id: str | None
    created: str | None


@contextlib.contextmanager
def api_errors(host: str) -> Iterator[None]:
    """KFP/HTTP failures as one-line ``KfpError``s naming the host; kfp's own prints (links,
    "Experiment details") are swallowed, this package prints its own."""
    import kfp_server_api
    from urllib3.exceptions import HTTPError

    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except kfp_server_api.ApiException as exc:
        detail = (exc.body or exc.reason or "").strip().replace("\n", " ")[:300]
        raise KfpError(f"KFP API at {host}: HTTP {exc.status}: {detail}") from None
    except (HTTPError, OSError, TimeoutError) as exc:
        raise KfpError(f"KFP API at {host} unreachable: {exc.__class__.__name__}: {exc}") from None


def resolve_host(host: str | None) -> str:
    chosen = host or os.environ.get(HOST_ENV)
    if not chosen:
        raise ConfigError(f"no KFP endpoint: pass --host URL or set {HOST_ENV}")
    if not chosen.startswith(("http://", "https://")):
        raise ConfigError(f"--host {chosen}: expected http://HOST:PORT or https://...")
    return chosen.rstrip("/")


def connect(host: str, token: str | None = None):  # -> kfp.Client
    """A client for ``host``: bearer ``token`` (or $KF_PIPELINES_TOKEN), else the pod's
    projected ServiceAccount token when $KF_PIPELINES_SA_TOKEN_PATH names one, else none."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    token = token or os.environ.get(TOKEN_ENV)
    credentials = None
    token_path = os.environ.get(SA_TOKEN_PATH_ENV)
    if not token and token_path and Path(token_path).is_file():
        credentials = ServiceAccountTokenVolumeCredentials(token_path)
    with api_errors(host):
        return kfp.Client(host=host, existing_token=token, credentials=credentials)


def run_link(host: str, run_id: str) -> str:
    return f"{os.environ.get(UI_ENV, host).rstrip('/')}/#/runs/details/{run_id}"


def submit(
    client: Any,
    host: str,
    package: Path,
    arguments: dict[str, Any],
    *,
    experiment: str,
    run_name: str,
    service_account: str | None,
    enable_caching: bool | None,
) -> str:
    """Create a run of the compiled ``package``; returns its id."""
    with api_errors(host):
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            service_account=service_account or None, enable_caching=enable_caching,
        )
    return str(result.run_id)


def wait(
    client: Any,
    host: str,
    run_id: str,
    *,
    poll_seconds: float,
    timeout_seconds: float | None,
    echo: Callable[[str], None],
) -> tuple[str, str | None]:
    """Follow the run until it ends; returns its final state and error message (if any).
    Every state change is echoed."""
    started = time.monotonic()
    last = None
    while True:
        with api_errors(host):
            run = client.get_run(run_id)
        state = str(run.state or "PENDING")
        if state != last:
            echo(f"run {run_id}: {state}")
            last = state
        if state in FINAL_STATES:
            error = getattr(run, "error", None)
            message = getattr(error, "message", None) if error is not None else None
            return state, message
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise KfpError(f"run {run_id} still {state} after {timeout_seconds:g} s (--timeout)")
        time.sleep(poll_seconds)


def check_cron(cron: str) -> str:
    """KFP's cron format has six fields, seconds first (e.g. ``0 0 3 * * 0``, Sundays 03:00)."""
    fields = cron.split()
    if len(fields) != 6:
        hint = f" (add seconds first: '0 {cron}')" if len(fields) == 5 else ""
        raise ConfigError(
            f"--cron {cron!r}: KFP cron expressions have six fields, seconds first, "
            f"e.g. '0 0 3 * * 0'{hint}"
        )
    return " ".join(fields)


def _schedule(item: Any) -> Schedule:
    trigger = getattr(item, "trigger", None)
    cron = getattr(getattr(trigger, "cron_schedule", None), "cron", None)
    return Schedule(
        id=str(item.recurring_run_id),
        name=str(item.display_name),
        cron=cron,
        enabled=str(item.mode or "ENABLE").upper() == "ENABLE",
        max_concurrency=None if item.max_concurrency is None else int(item.max_concurrency),
        no_catchup=item.no_catchup,
        experiment_id=item.experiment_id,
        created=None if item.created_at is None else str(item.created_at),
    )


def list_schedules(client: Any, host: str) -> list[Schedule]:
    """Every recurring run the server lists (all pages)."""
    found: list[Schedule] = []
    token = ""
    while True:
        with api_errors(host):
            page = client.list_recurring_runs(page_token=token, page_size=100)
        found.extend(_schedule(item) for item in page.recurring_runs or [])
        token = page.next_page_token or ""
        if not token:
            return found


def schedule(
    client: Any,
    host: str,
    package: Path,
    arguments: dict[str, Any],
    *,
    name: str,
    cron: str,
    experiment: str,
    service_account: str | None,
    enable_caching: bool | None,
) -> tuple[Schedule, int]:
    """Create or replace the recurring run ``name`` (max concurrency 1, no catch-up); returns
    it and how many earlier schedules of that name it replaced."""
    cron = check_cron(cron)
    with api_errors(host):
        experiment_id = client.create_experiment(name=experiment).experiment_id
        created = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=cron,
            max_concurrency=1, no_catchup=True, params=arguments,
            pipeline_package_path=str(package), enabled=True,
            service_account=service_account or None, enable_caching=enable_caching,
        )
    new = _schedule(created)
    old = [s for s in list_schedules(client, host) if s.name == name and s.id != new.id]
    for item in old:
        with api_errors(host):
            client.delete_recurring_run(item.id)
    return new, len(old)


def unschedule(client: Any, host: str, name: str) -> int:
    """Delete every recurring run called ``name``; returns how many (an error when none)."""
    matching = [s for s in list_schedules(client, host) if s.name == name]
    if not matching:
        raise ConfigError(f"no schedule named {name!r} at {host} (see `mammo pipeline schedules`)")
    for item in matching:
        with api_errors(host):
            client.delete_recurring_run(item.id)
    return len(matching)
