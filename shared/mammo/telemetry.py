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
            telemetry.epoch(epoch, train_loss=..., val_loss=..., val_auc=..., val_pr_auc=...,
                            val_pf1=..., lr=..., duration_s=..., images_per_s=...)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import json
import urllib.request

from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mammo.storage.layout import check_name
from mammo.storage.settings import load_env_settings

log = logging.getLogger(__name__)
JOB = "mammo"


class TelemetrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAMMO_", frozen=True)

    pushgateway_url: str | None = Field(None, description="e.g. http://pushgateway:9091")
    pushgateway_timeout_seconds: float = Field(5.0, gt=0)
    pushgateway_retention_seconds: float = Field(86400.0, ge=0, description="0: never delete groups")


def _value(metric: float | None) -> float:
    """Missing metrics (e.g. AUC of a one-class validation set) are pushed as NaN."""
    return float("nan") if metric is None else float(metric)


#: Every series a component can push; each appears once it has a value (a running step has no
#: ``mammo_step_success`` yet, an evaluator no training loss).
METRICS = {
    "mammo_epoch": "Last completed epoch (1-based).",
    "mammo_train_loss": "Mean training loss of the last epoch.",
    "mammo_val_loss": "Validation loss of the last epoch.",
    "mammo_val_auc": "Validation ROC-AUC of the last epoch.",
    "mammo_val_pr_auc": "Validation PR-AUC (average precision) of the last epoch.",
    "mammo_val_pf1": "Validation probabilistic F1 of the last epoch.",
    "mammo_learning_rate": "Learning rate at the last epoch.",
    "mammo_epoch_duration_seconds": "Wall time of the last epoch.",
    "mammo_images_per_second": "Training throughput of the last epoch.",
    "mammo_step_success": "1 if the step succeeded, 0 if it failed.",
    "mammo_step_duration_seconds": "Wall time of the whole step.",
    "mammo_step_end_timestamp_seconds": "Unix time at which the step ended.",
}


class Telemetry:
    """The metrics of one component run (its own registry) and their pushes."""

    def __init__(self, component: str, run_id: str) -> None:
        self.grouping_key = {
            "component": check_name("component", component),
            "run_id": check_name("run id", run_id),
        }
        self._settings = load_env_settings(TelemetrySettings)
        self._warned = False
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}

    def _set(self, name: str, value: float) -> None:
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, METRICS[name], registry=self.registry)
        self._gauges[name].set(value)

    @property
    def enabled(self) -> bool:
        """Whether a Pushgateway is configured."""
        return self._settings.pushgateway_url is not None

    def epoch(
        self,
        epoch: int,
        *,
        train_loss: float | None,
        val_loss: float | None,
        val_auc: float | None,
        val_pr_auc: float | None,
        val_pf1: float | None,
        lr: float,
        duration_s: float,
        images_per_s: float,
    ) -> bool:
        """Record one finished epoch and push; returns whether the push reached the gateway."""
        self._set("mammo_epoch", epoch)
        self._set("mammo_train_loss", _value(train_loss))
        self._set("mammo_val_loss", _value(val_loss))
        self._set("mammo_val_auc", _value(val_auc))
        self._set("mammo_val_pr_auc", _value(val_pr_auc))
        self._set("mammo_val_pf1", _value(val_pf1))
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
        url, retention = self._settings.pushgateway_url, self._settings.pushgateway_retention_seconds
        if url is None or retention <= 0:
            return []
        base = url if "://" in url else f"http://{url}"
        deleted = []
        try:
            with urllib.request.urlopen(f"{base.rstrip('/')}/api/v1/metrics", timeout=self._settings.pushgateway_timeout_seconds) as answer:
                groups = json.load(answer).get("data") or []
            cutoff = time.time() - retention
            for group in groups:
                labels = group.get("labels", {})
                key = {k: v for k, v in labels.items() if k in ("component", "run_id")}
                pushed = [float(m["value"]) for m in group.get("push_time_seconds", {}).get("metrics", [])]
                ours = labels.get("job") == JOB and set(labels) <= {"job", "component", "run_id"}
                if not ours or key == self.grouping_key or not pushed or max(pushed) >= cutoff:
                    continue
                delete_from_gateway(url, job=JOB, grouping_key=key, timeout=self._settings.pushgateway_timeout_seconds)
                deleted.append(key)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("expiring old Pushgateway groups at %s failed: %s", url, exc)
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
        """Push the whole registry (replacing this run's previous push); never raises."""
        url = self._settings.pushgateway_url
        if url is None:
            return False
        try:
            push_to_gateway(
                url,
                job=JOB,
                registry=self.registry,
                grouping_key=self.grouping_key,
                timeout=self._settings.pushgateway_timeout_seconds,
            )
        except OSError as exc:  # URLError/HTTPError/socket errors: telemetry never stops a run
            if not self._warned:
                log.warning(
                    "Pushgateway %s not reachable (%s): metrics of %s are not pushed; "
                    "the run goes on",
                    url,
                    exc,
                    self.grouping_key,
                )
                self._warned = True
            else:
                log.debug("push to %s failed again: %s", url, exc)
            return False
        return True
