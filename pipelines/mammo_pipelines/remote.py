"""Talking to a KFP API server (v2beta1) through ``kfp.Client``: upload the pipeline as a named
pipeline with versions, submit runs of a version, follow them, manage recurring runs
(schedules) by name, in a namespace (multi-user Kubeflow: the profile's namespace).

Versions are named after the compiled package (``<profile>-<sha256 prefix>``), so uploading the
same pipeline again finds the version instead of adding one: ``upload`` is idempotent, and every
run and recurring run references the version it ran (the KFP UI lists them under Pipelines).

Authentication: a bearer token (``--token``, ``$KF_PIPELINES_TOKEN``, or a pod's projected
ServiceAccount token at ``$KF_PIPELINES_SA_TOKEN_PATH``), or for Kubeflow behind Dex/OIDC the
session cookie in ``$KF_PIPELINES_COOKIE`` (``authservice_session=...`` or
``oauth2_proxy_kubeflow=...``, copied from a logged-in browser). Neither is ever printed: error
messages are scrubbed of both.

Schedules are identified by their display name: ``schedule`` creates the new recurring run,
then deletes every other one of that name, so running it again replaces the schedule instead of
adding a second one (KFP has no update call for recurring runs). A failure between the two
steps leaves the old one too, and the next ``schedule`` call removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo.errors import ConfigError, MammoError

#: A Kubernetes namespace name (RFC 1123 label).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

#: Where a pod's projected ServiceAccount token for KFP lives (multi-user KFP checks it).
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
HOST_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


class KfpError(MammoError):
    """The KFP API refused a request or could not be reached."""


@dataclass(frozen=True)
class Connection:
    """A client for one KFP endpoint, the namespace it works in (None: single-user KFP) and
    the secrets it sends (kept to scrub them from error messages)."""

    client: Any
    host: str
    namespace: str | None
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    pipeline_name: str
    version_name: str
    #: False when the version existed already (same compiled package).
    uploaded: bool


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
    #: The pipeline version it runs (None: a package sent with the schedule).
    version_id: str | None = None


AUTH_HINT = (
    f"authenticate with ${TOKEN_ENV} (bearer token) or, behind Dex/OIDC, ${COOKIE_ENV} "
    "(the session cookie, e.g. authservice_session=...)"
)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _login_page(exc: Exception) -> bool:
    """An answer that is an HTML login page (Dex/OIDC redirects there without a session)."""
    body = getattr(exc, "body", None) or ""
    headers = getattr(exc, "headers", None) or {}
    content_type = str(headers.get("Content-Type", "")) if hasattr(headers, "get") else ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return "text/html" in content_type or text.lstrip().lower().startswith(("<!doctype html", "<html"))


@contextlib.contextmanager
def api_errors(host: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """KFP/HTTP failures as one-line ``KfpError``s naming the host; kfp's own prints (links,
    "Experiment details") are swallowed, this package prints its own. ``secrets`` (token,
    cookie) never appear in a message."""
    import kfp_server_api
    from urllib3.exceptions import HTTPError

    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except kfp_server_api.ApiException as exc:
        if exc.status in (401, 403) or (exc.status in (200, 302, 303) and _login_page(exc)):
            reason = "refused the credentials" if exc.status in (401, 403) else "answered with a login page"
            raise KfpError(f"KFP API at {host} {reason} (HTTP {exc.status}): {AUTH_HINT}") from None
        detail = (exc.body or exc.reason or "")
        detail = (detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)).strip().replace("\n", " ")[:300]
        raise KfpError(_scrub(f"KFP API at {host}: HTTP {exc.status}: {detail}", secrets)) from None
    except (HTTPError, OSError, TimeoutError) as exc:
        raise KfpError(_scrub(f"KFP API at {host} unreachable: {exc.__class__.__name__}: {exc}", secrets)) from None
    except ValueError as exc:  # a body that is not the API's JSON: a login page or a proxy
        raise KfpError(
            f"KFP API at {host} did not answer as the KFP API ({exc.__class__.__name__}); "
            f"behind a login page? {AUTH_HINT}"
        ) from None


def resolve_host(host: str | None) -> str:
    chosen = host or os.environ.get(HOST_ENV)
    if not chosen:
        raise ConfigError(f"no KFP endpoint: pass --host URL or set {HOST_ENV}")
    if not chosen.startswith(("http://", "https://")):
        raise ConfigError(f"--host {chosen}: expected http://HOST:PORT or https://...")
    return chosen.rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _probe(host: str, token: str | None, cookie: str | None, secrets: tuple[str, ...]) -> None:
    """One GET of the health endpoint with the credentials, redirects not followed, so that a
    login page (Dex/OIDC), refused credentials or an unreachable host fail at once with one
    line (kfp.Client itself retries its health check for half a minute)."""
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz", headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if cookie:
        request.add_header("Cookie", cookie)
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler())
    try:
        with opener.open(request, timeout=30) as response:
            content_type = response.headers.get("Content-Type", "")
            if "html" in content_type:
                raise KfpError(f"KFP API at {host} answered with a web page, not the API: behind a login page? {AUTH_HINT}")
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308):
            location = urllib.parse.urlparse(exc.headers.get("Location", "")).path or "?"
            raise KfpError(f"KFP API at {host} redirected to a login page ({location}): {AUTH_HINT}") from None
        if exc.code in (401, 403):
            raise KfpError(f"KFP API at {host} refused the credentials (HTTP {exc.code}): {AUTH_HINT}") from None
        if exc.code == 404:
            raise KfpError(f"KFP API at {host}: no KFP v2 API there (HTTP 404 for /apis/v2beta1/healthz)") from None
        raise KfpError(_scrub(f"KFP API at {host}: HTTP {exc.code}: {exc.reason}", secrets)) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KfpError(_scrub(f"KFP API at {host} unreachable: {reason.__class__.__name__}: {reason}", secrets)) from None


def resolve_namespace(namespace: str | None) -> str | None:
    """``--namespace``, else ``$KF_PIPELINES_NAMESPACE``, else None (single-user KFP)."""
    chosen = namespace or os.environ.get(NAMESPACE_ENV) or None
    if chosen is not None and DNS_LABEL.fullmatch(chosen) is None:
        raise ConfigError(f"--namespace {chosen!r}: not a Kubernetes namespace name")
    return chosen


def connect(host: str, token: str | None = None, namespace: str | None = None) -> Connection:
    """A connection to ``host`` in ``namespace``: bearer ``token`` (or $KF_PIPELINES_TOKEN),
    else the pod's projected ServiceAccount token when $KF_PIPELINES_SA_TOKEN_PATH names one;
    the Dex/OIDC session cookie of $KF_PIPELINES_COOKIE as well when set."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    token = token or os.environ.get(TOKEN_ENV) or None
    cookie = os.environ.get(COOKIE_ENV) or None
    credentials = None
    token_path = os.environ.get(SA_TOKEN_PATH_ENV)
    if not token and token_path and Path(token_path).is_file():
        credentials = ServiceAccountTokenVolumeCredentials(token_path)
    secrets = tuple(s for s in (token, cookie) if s)
    probe_token = token or (Path(token_path).read_text().strip() if credentials is not None and token_path else None)
    _probe(host, probe_token, cookie, secrets)
    with api_errors(host, secrets):
        client = kfp.Client(
            host=host, existing_token=token, cookies=cookie, credentials=credentials,
            namespace=namespace or "kubeflow",
        )
    return Connection(client, host, namespace, secrets)


def run_link(host: str, run_id: str) -> str:
    return f"{os.environ.get(UI_ENV, host).rstrip('/')}/#/runs/details/{run_id}"


def pipeline_link(host: str, version: PipelineVersion) -> str:
    base = os.environ.get(UI_ENV, host).rstrip("/")
    return f"{base}/#/pipelines/details/{version.pipeline_id}/version/{version.version_id}"


def version_name(package: Path, profile: str) -> str:
    """``<profile>-<first 12 hex digits of the package's sha256>``: the same compiled pipeline
    always gets the same name, another one never does."""
    return f"{profile}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def find_pipeline(conn: Connection, name: str) -> str | None:
    """The id of the pipeline called ``name`` (in the namespace, or shared), None if absent."""
    with api_errors(conn.host, conn.secrets):
        page = conn.client.list_pipelines(filter=_name_filter(name), page_size=10, namespace=conn.namespace)
    found = [p for p in page.pipelines or [] if p.display_name == name]
    return str(found[0].pipeline_id) if found else None


def find_version(conn: Connection, pipeline_id: str, name: str) -> str | None:
    with api_errors(conn.host, conn.secrets):
        page = conn.client.list_pipeline_versions(pipeline_id=pipeline_id, filter=_name_filter(name), page_size=10)
    found = [v for v in page.pipeline_versions or [] if v.display_name == name]
    return str(found[0].pipeline_version_id) if found else None


def _conflict(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 409


def upload(conn: Connection, package: Path, *, pipeline_name: str, version: str, description: str) -> PipelineVersion:
    """The pipeline ``pipeline_name`` (created without versions when missing) and its version
    ``version`` holding ``package`` (uploaded when missing). Idempotent; a concurrent upload of
    the same name (HTTP 409) is found again instead of failing."""
    import kfp_server_api

    pipeline_id = find_pipeline(conn, pipeline_name)
    if pipeline_id is None:
        body = kfp_server_api.V2beta1Pipeline(
            name=pipeline_name, display_name=pipeline_name, description=description, namespace=conn.namespace
        )
        with api_errors(conn.host, conn.secrets):
            try:
                pipeline_id = str(conn.client._pipelines_api.pipeline_service_create_pipeline(pipeline=body).pipeline_id)
            except kfp_server_api.ApiException as exc:
                if not _conflict(exc):
                    raise
        pipeline_id = pipeline_id or find_pipeline(conn, pipeline_name)
        if pipeline_id is None:
            raise KfpError(f"KFP API at {conn.host}: pipeline {pipeline_name!r} was neither created nor found")
    version_id = find_version(conn, pipeline_id, version)
    if version_id is not None:
        return PipelineVersion(pipeline_id, version_id, pipeline_name, version, uploaded=False)
    with api_errors(conn.host, conn.secrets):
        try:
            created = conn.client._upload_api.upload_pipeline_version(
                str(package), name=version, display_name=version, pipelineid=pipeline_id, description=description
            )
            return PipelineVersion(pipeline_id, str(created.pipeline_version_id), pipeline_name, version, uploaded=True)
        except kfp_server_api.ApiException as exc:
            if not _conflict(exc):
                raise
    version_id = find_version(conn, pipeline_id, version)
    if version_id is None:
        raise KfpError(f"KFP API at {conn.host}: version {version!r} of {pipeline_name!r} was neither uploaded nor found")
    return PipelineVersion(pipeline_id, version_id, pipeline_name, version, uploaded=False)


def _experiment_id(conn: Connection, experiment: str) -> str:
    with api_errors(conn.host, conn.secrets):
        return str(conn.client.create_experiment(name=experiment, namespace=conn.namespace).experiment_id)


def submit(
    conn: Connection,
    version: PipelineVersion,
    arguments: dict[str, Any],
    *,
    experiment: str,
    run_name: str,
    service_account: str | None,
) -> str:
    """Create a run of the uploaded pipeline ``version``; returns its id."""
    experiment_id = _experiment_id(conn, experiment)
    with api_errors(conn.host, conn.secrets):
        result = conn.client.run_pipeline(
            experiment_id=experiment_id, job_name=run_name, params=arguments,
            pipeline_id=version.pipeline_id, version_id=version.version_id,
            service_account=service_account or None,
        )
    return str(result.run_id)


def wait(
    conn: Connection,
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
        with api_errors(conn.host, conn.secrets):
            run = conn.client.get_run(run_id)
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
    reference = getattr(item, "pipeline_version_reference", None)
    return Schedule(
        id=str(item.recurring_run_id),
        name=str(item.display_name),
        cron=cron,
        enabled=str(item.mode or "ENABLE").upper() == "ENABLE",
        max_concurrency=None if item.max_concurrency is None else int(item.max_concurrency),
        no_catchup=item.no_catchup,
        experiment_id=item.experiment_id,
        created=None if item.created_at is None else str(item.created_at),
        version_id=getattr(reference, "pipeline_version_id", None),
    )


def list_schedules(conn: Connection) -> list[Schedule]:
    """Every recurring run the server lists in the namespace (all pages)."""
    found: list[Schedule] = []
    token = ""
    while True:
        with api_errors(conn.host, conn.secrets):
            page = conn.client.list_recurring_runs(page_token=token, page_size=100, namespace=conn.namespace)
        found.extend(_schedule(item) for item in page.recurring_runs or [])
        token = page.next_page_token or ""
        if not token:
            return found


def schedule(
    conn: Connection,
    version: PipelineVersion,
    arguments: dict[str, Any],
    *,
    name: str,
    cron: str,
    experiment: str,
    service_account: str | None,
) -> tuple[Schedule, int]:
    """Create or replace the recurring run ``name`` of pipeline ``version`` (max concurrency 1,
    no catch-up); returns it and how many earlier schedules of that name it replaced."""
    cron = check_cron(cron)
    experiment_id = _experiment_id(conn, experiment)
    with api_errors(conn.host, conn.secrets):
        created = conn.client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=cron,
            max_concurrency=1, no_catchup=True, params=arguments,
            pipeline_id=version.pipeline_id, version_id=version.version_id, enabled=True,
            service_account=service_account or None,
        )
    new = _schedule(created)
    old = [s for s in list_schedules(conn) if s.name == name and s.id != new.id]
    for item in old:
        with api_errors(conn.host, conn.secrets):
            conn.client.delete_recurring_run(item.id)
    return new, len(old)


def unschedule(conn: Connection, name: str) -> int:
    """Delete every recurring run called ``name``; returns how many (an error when none)."""
    matching = [s for s in list_schedules(conn) if s.name == name]
    if not matching:
        where = f" in namespace {conn.namespace}" if conn.namespace else ""
        raise ConfigError(f"no schedule named {name!r} at {conn.host}{where} (see `mammo pipeline schedules`)")
    for item in matching:
        with api_errors(conn.host, conn.secrets):
            conn.client.delete_recurring_run(item.id)
    return len(matching)
