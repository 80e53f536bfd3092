"""Prometheus metrics of one component run, pushed to a Pushgateway.

Batch steps are not scraped while they run, so each component pushes its own registry to the
Pushgateway named by ``MAMMO_PUSHGATEWAY_URL`` after every epoch and at the end. Series carry
job ``mammo`` and the grouping key ``component``/``run_id`` and nothing else: no label can hold
a patient or image id, because the API accepts no other labels and checks both values are plain
names. Without ``MAMMO_PUSHGATEWAY_URL`` nothing is pushed; an unreachable Pushgateway logs one
warning and the run goes on. No torch import here.

Groups expire: after its final push a step deletes every ``mammo`` group whose last push is older
than ``MAMMO_PUSHGATEWAY_RETENTION_SECONDS`` (default one day; 0 keeps everything). So the
gateway holds the recent runs (the latest run's always, whatever the schedule) instead of one
group per run for ever; Prometheus keeps the history.

    telemetry = Telemetry("baseline", run_id)
    with telemetry.step():                      # mammo_step_success / _duration_seconds
        for epoch in ...:
            telemetry.epoch(epoch, train_loss=..., val_loss=..., val={"auc": ..., ...},
                            lr=..., duration_s=..., images_per_s=...)

The validation series are the metric registry's ``pushed`` metrics (``mammo_val_<name>``, each
at its level: image AUC and PR-AUC, breast pF1; ``mammo.metric_registry``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mammo import metric_registry
from mammo.errors import ConfigError
from mammo.storage.layout import check_name
from mammo.storage.settings import load_env_settings

log = logging.getLogger(__name__)
JOB = "mammo"


class TelemetrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAMMO_", frozen=True)

    pushgateway_url: str | None = Field(None, description="e.g. http://pushgateway:9091")
    pushgateway_timeout_seconds: float = Field(5.0, gt=0)
    pushgateway_retention_seconds: float = Field(86400.0, ge=0, description="0: never delete groups")


class Gateway:
    """``MAMMO_PUSHGATEWAY_URL`` taken apart: the URL without credentials (what is requested and
    what messages show), and the user and password for HTTP basic auth when the URL has them
    (``http://user:password@host:9091``). The password never appears in a message."""

    def __init__(self, url: str) -> None:
        self.raw = url
        full = url if "://" in url else f"http://{url}"
        parts = urllib.parse.urlsplit(full)
        self.username = urllib.parse.unquote(parts.username) if parts.username else None
        self.password = urllib.parse.unquote(parts.password) if parts.password else None
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{redact(url)}: the port is not a number from 0 to 65535") from None
        if port is not None:
            netloc += f":{port}"
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{redact(url)}: use http:// or https://")
        if not host:
            raise ValueError(f"{redact(url)}: no host name")
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    def handler(self) -> Callable[..., Callable[[], None]]:
        if self.username is None:
            return default_handler
        username, password = self.username, self.password or ""

        def with_auth(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes) -> Callable[[], None]:
            return basic_auth_handler(url, method, timeout, headers, data, username, password)

        return with_auth

    def headers(self) -> dict[str, str]:
        if self.username is None:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def hide(self, text: str) -> str:
        """``text`` with this gateway's password (raw and URL-encoded) replaced by ``***``."""
        text = redact(text)
        for secret in {self.password, urllib.parse.quote(self.password or "", safe="")} - {None, ""}:
            text = text.replace(str(secret), "***")
        return text


def redact(text: str) -> str:
    """Credentials in any URL inside ``text`` (``scheme://user:password@``) replaced by ``***``."""
    out = []
    for word in str(text).split(" "):
        if "://" in word and "@" in word.split("://", 1)[1].split("/", 1)[0]:
            scheme, rest = word.split("://", 1)
            userinfo, _, tail = rest.partition("@")
            user = userinfo.split(":", 1)[0]
            word = f"{scheme}://{user}:***@{tail}" if ":" in userinfo else f"{scheme}://***@{tail}"
        out.append(word)
    return " ".join(out)


def _value(metric: float | None) -> float:
    """Missing metrics (e.g. AUC of a one-class validation set) are pushed as NaN."""
    return float("nan") if metric is None else float(metric)


#: The series of every component besides the validation metrics (``metric_descriptions``); each
#: appears once it has a value (a running step has no ``mammo_step_success`` yet, an evaluator
#: no training loss).
SERIES = {
    "mammo_epoch": "Last completed epoch (1-based).",
    "mammo_train_loss": "Mean training loss of the last epoch.",
    "mammo_val_loss": "Validation loss of the last epoch.",
    "mammo_learning_rate": "Learning rate at the last epoch.",
    "mammo_epoch_duration_seconds": "Wall time of the last epoch.",
    "mammo_images_per_second": "Training throughput of the last epoch.",
    "mammo_step_success": "1 if the step succeeded, 0 if it failed.",
    "mammo_step_duration_seconds": "Wall time of the whole step.",
    "mammo_step_end_timestamp_seconds": "Unix time at which the step ended.",
}


def metric_descriptions() -> dict[str, str]:
    """Every series a component can push, with its help text: ``SERIES`` and one
    ``mammo_val_<name>`` per pushed metric of the registry."""
    validation = {
        f"mammo_val_{m.name}": f"Validation {m.title} ({m.pushed} level) of the last epoch."
        for m in metric_registry.pushed()
    }
    return {**SERIES, **validation}


class Telemetry:
    """The metrics of one component run (its own registry) and their pushes."""

    def __init__(self, component: str, run_id: str) -> None:
        self.grouping_key = {
            "component": check_name("component", component),
            "run_id": check_name("run id", run_id),
        }
        self._warned = False
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self.gateway: Gateway | None = None
        try:
            self._settings = load_env_settings(TelemetrySettings)
        except ConfigError as exc:  # telemetry never stops a run: one warning, then on
            self._settings = TelemetrySettings.model_construct()
            self._warn(f"telemetry settings: {exc}; metrics are not pushed, the run goes on")
            return
        url = self._settings.pushgateway_url
        if url:
            try:
                self.gateway = Gateway(url)
            except ValueError as exc:
                self._warn(f"MAMMO_PUSHGATEWAY_URL {exc}: metrics are not pushed; the run goes on")

    def _warn(self, message: str) -> None:
        """The one warning of this run's telemetry (later problems are debug lines)."""
        message = self.gateway.hide(message) if self.gateway is not None else redact(message)
        if not self._warned:
            log.warning("%s", message)
            self._warned = True
        else:
            log.debug("%s", message)

    def _set(self, name: str, value: float) -> None:
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, metric_descriptions()[name], registry=self.registry)
        self._gauges[name].set(value)

    @property
    def enabled(self) -> bool:
        """Whether a usable Pushgateway is configured."""
        return self.gateway is not None

    def epoch(
        self,
        epoch: int,
        *,
        train_loss: float | None,
        val_loss: float | None,
        val: Mapping[str, float | None],
        lr: float,
        duration_s: float,
        images_per_s: float,
    ) -> bool:
        """Record one finished epoch and push; returns whether the push reached the gateway.
        ``val``: the pushed metrics' validation values by name (missing ones are NaN)."""
        self._set("mammo_epoch", epoch)
        self._set("mammo_train_loss", _value(train_loss))
        self._set("mammo_val_loss", _value(val_loss))
        for metric in metric_registry.pushed():
            self._set(f"mammo_val_{metric.name}", _value(val.get(metric.name)))
        self._set("mammo_learning_rate", lr)
        self._set("mammo_epoch_duration_seconds", duration_s)
        self._set("mammo_images_per_second", images_per_s)
        return self.push()

    def finish(self, success: bool, duration_s: float) -> bool:
        """Record the step's outcome and push; returns whether the push reached the gateway."""
        self._set("mammo_step_success", 1 if success else 0)
        self._set("mammo_step_duration_seconds", duration_s)
        self._set("mammo_step_end_timestamp_seconds", time.time())
        pushed = self.push()
        if pushed:
            self.expire_groups()
        return pushed

    def expire_groups(self) -> list[dict[str, str]]:
        """Delete the ``mammo`` groups last pushed more than the retention ago (never this
        step's own); returns their grouping keys. Never raises: hygiene must not fail a run."""
        gateway, retention = self.gateway, self._settings.pushgateway_retention_seconds
        if gateway is None or retention <= 0:
            return []
        url = gateway.url
        deleted: list[dict[str, str]] = []
        try:
            request = urllib.request.Request(f"{url}/api/v1/metrics", headers=gateway.headers())
            # An opener of its own, as prometheus_client's pushes build: urlopen's process-wide one
            # keeps the proxy settings of its first use (torch's weight download, say) for good.
            opener = urllib.request.build_opener()
            with opener.open(request, timeout=self._settings.pushgateway_timeout_seconds) as answer:
                groups = json.load(answer).get("data") or []
            cutoff = time.time() - retention
            for group in groups:
                labels = group.get("labels", {})
                key = {k: v for k, v in labels.items() if k in ("component", "run_id")}
                pushed = [float(m["value"]) for m in group.get("push_time_seconds", {}).get("metrics", [])]
                ours = labels.get("job") == JOB and set(labels) <= {"job", "component", "run_id"}
                if not ours or key == self.grouping_key or not pushed or max(pushed) >= cutoff:
                    continue
                delete_from_gateway(url, job=JOB, grouping_key=key, timeout=self._settings.pushgateway_timeout_seconds,
                                    handler=gateway.handler())
                deleted.append(key)
        except Exception as exc:  # noqa: BLE001 - hygiene must not fail a run, whatever answers
            log.debug("expiring old Pushgateway groups at %s failed: %s", url, gateway.hide(str(exc)))
        if deleted:
            log.debug("deleted %d Pushgateway group(s) older than %g s", len(deleted), retention)
        return deleted

    @contextmanager
    def step(self) -> Iterator[Telemetry]:
        """Time the block; success if it returns, failure if it raises (the error propagates)."""
        start = time.monotonic()
        try:
            yield self
        except BaseException:
            self.finish(False, time.monotonic() - start)
            raise
        self.finish(True, time.monotonic() - start)

    def push(self) -> bool:
        """Push the whole registry (replacing this run's previous push); never raises: an
        unreachable gateway, one answering garbage (not HTTP, a 5xx), a timeout or a bad URL
        give one warning for the run, with credentials hidden, and the run goes on."""
        gateway = self.gateway
        if gateway is None:
            return False
        try:
            push_to_gateway(
                gateway.url,
                job=JOB,
                registry=self.registry,
                grouping_key=self.grouping_key,
                timeout=self._settings.pushgateway_timeout_seconds,
                handler=gateway.handler(),
            )
        except Exception as exc:  # noqa: BLE001 - telemetry never stops a run
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._warn(
                f"Pushgateway {gateway.url} not reachable or not answering as one ({reason}): metrics of {self.grouping_key} "
                "are not pushed; the run goes on"
            )
            return False
        return True
