"""Telemetry against a real Pushgateway: what is pushed is read back over HTTP."""

from __future__ import annotations

import base64
import logging
import math
import socket
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from mammo.errors import ConfigError
from mammo.telemetry import Telemetry

from servers import Pushgateway, free_port

EPOCH = dict(
    train_loss=0.61,
    val_loss=0.55,
    val={"auc": 0.72, "pr_auc": 0.18, "pf1": 0.21},
    lr=1e-3,
    duration_s=12.5,
    images_per_s=480.0,
)


def _run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def _values(gateway: Pushgateway, run_id: str) -> dict[str, float]:
    """mammo_* series of one run, by name; also checks they carry only the allowed labels."""
    found = {}
    for sample in gateway.samples(run_id=run_id):
        if sample.name.startswith("mammo_"):
            assert set(sample.labels) <= {"job", "instance", "component", "run_id"}, sample
            assert sample.labels["job"] == "mammo"
            found[sample.name] = sample.value
    return found


def test_epochs_and_the_end_of_a_step_are_pushed(pushgateway: Pushgateway) -> None:
    run_id = _run_id()
    telemetry = Telemetry("baseline", run_id)
    with telemetry.step():
        assert telemetry.epoch(1, **EPOCH)
        first = _values(pushgateway, run_id)
        assert first["mammo_epoch"] == 1
        assert first["mammo_val_auc"] == pytest.approx(0.72)
        assert first["mammo_images_per_second"] == 480.0
        assert "mammo_step_success" not in first  # still running: neither success nor failure
        assert telemetry.epoch(2, **{**EPOCH, "val": {"auc": None, "pr_auc": 0.18, "pf1": 0.21}, "lr": 5e-4})

    values = _values(pushgateway, run_id)
    assert values["mammo_epoch"] == 2
    assert math.isnan(values["mammo_val_auc"])  # not computable this epoch: NaN, not stale
    assert values["mammo_learning_rate"] == pytest.approx(5e-4)
    assert values["mammo_train_loss"] == pytest.approx(0.61)
    assert values["mammo_val_pr_auc"] == pytest.approx(0.18)
    assert values["mammo_val_pf1"] == pytest.approx(0.21)
    assert values["mammo_epoch_duration_seconds"] == 12.5
    assert values["mammo_step_success"] == 1
    assert values["mammo_step_duration_seconds"] >= 0
    assert values["mammo_step_end_timestamp_seconds"] > 1.6e9
    labels = {s.labels["component"] for s in pushgateway.samples(run_id=run_id)}
    assert labels == {"baseline"}


def test_a_failing_step_is_pushed_as_failure(pushgateway: Pushgateway) -> None:
    run_id = _run_id()
    with pytest.raises(RuntimeError, match="boom"):
        with Telemetry("evaluate", run_id).step():
            raise RuntimeError("boom")
    values = _values(pushgateway, run_id)
    assert values["mammo_step_success"] == 0
    assert "mammo_train_loss" not in values  # no epoch ran: no made-up zeros


def test_without_a_pushgateway_nothing_is_pushed(
    pushgateway: Pushgateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAMMO_PUSHGATEWAY_URL")
    run_id = _run_id()
    telemetry = Telemetry("baseline", run_id)
    assert not telemetry.enabled
    with telemetry.step():
        assert not telemetry.epoch(1, **EPOCH)
    assert pushgateway.samples(run_id=run_id) == []


def test_unreachable_pushgateway_warns_once_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    telemetry = Telemetry("unfreeze", _run_id())
    with caplog.at_level(logging.WARNING, logger="mammo.telemetry"):
        with telemetry.step():
            for epoch in range(1, 4):
                assert not telemetry.epoch(epoch, **EPOCH)
    warnings = [
        r for r in caplog.records if r.name == "mammo.telemetry" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1
    assert "not reachable" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "component, run_id",
    [("baseline", "patient/10006"), ("baseline", "../etc"), ("base line", "r1"), ("", "r1")],
)
def test_labels_are_plain_names(component: str, run_id: str) -> None:
    with pytest.raises(ConfigError):
        Telemetry(component, run_id)


@pytest.mark.slow
def test_groups_older_than_the_retention_are_deleted_after_a_final_push(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Per-run groups expire: a step's final push deletes the ``mammo`` groups last pushed more
    than MAMMO_PUSHGATEWAY_RETENTION_SECONDS ago, never its own nor other jobs' groups. A
    gateway of its own: the expiry would sweep the other tests' groups."""
    import time
    import urllib.request

    gateway = Pushgateway(tmp_path)
    try:
        monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", gateway.url)
        monkeypatch.setenv("MAMMO_PUSHGATEWAY_RETENTION_SECONDS", "1")
        # urlopen's process-wide opener as another test's torch weight download leaves it: bound
        # to the dead proxy of that moment. The sweep used it, and failed quietly ever after.
        dead = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "http://127.0.0.1:9"}))
        monkeypatch.setattr(urllib.request, "_opener", dead)
        old, new = _run_id(), _run_id()
        Telemetry("baseline", old).finish(True, 1.0)
        foreign = urllib.request.Request(f"{gateway.url}/metrics/job/other/run_id/{old}", data=b"x 1\n", method="PUT")
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(foreign).close()
        # Older than the retention by the gateway's own clock: it stamps a push when it stores it,
        # which on a loaded machine can be well after the request was sent.
        [pushed] = [x.value for x in gateway.samples(run_id=old, job="mammo") if x.name == "push_time_seconds"]
        time.sleep(max(0.0, pushed + 1.5 - time.time()))
        epoch_only = Telemetry("unfreeze", new)
        assert epoch_only.epoch(1, **EPOCH)  # an epoch's push deletes nothing
        assert _values(gateway, old)["mammo_step_success"] == 1
        with caplog.at_level(logging.DEBUG, logger="mammo.telemetry"):
            assert Telemetry("baseline", new).finish(True, 2.0)
        assert _values(gateway, old) == {}, caplog.text
        assert {s.labels["component"] for s in gateway.samples(run_id=new) if s.name == "mammo_epoch" or s.name == "mammo_step_success"} == {"baseline", "unfreeze"}
        assert [s.value for s in gateway.samples(job="other") if s.name == "x"] == [1.0]

        monkeypatch.setenv("MAMMO_PUSHGATEWAY_RETENTION_SECONDS", "0")  # 0 keeps everything
        time.sleep(1.1)
        assert Telemetry("evaluate", _run_id()).finish(True, 1.0)
        assert _values(gateway, new)["mammo_step_success"] == 1
    finally:
        gateway.stop()


# --- a gateway that misbehaves, a URL that is wrong: telemetry never stops a run ----------------


class _NotHttp:
    """A real TCP server on a free port that answers every connection with bytes that are not
    HTTP (http.client raises BadStatusLine, which is not an OSError), or hangs up at once."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.recv(65536)
                conn.sendall(self.reply)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mammo.telemetry" and r.levelno >= logging.WARNING]


def _a_short_run(telemetry: Telemetry) -> None:
    with telemetry.step():
        for epoch in range(1, 4):
            assert not telemetry.epoch(epoch, **EPOCH)


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00\x01garbage\r\n\r\n", b"", b"HTTP/1.1 999\r\n\r\n"])
def test_a_gateway_answering_garbage_warns_once_and_the_run_goes_on(
    reply: bytes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = _NotHttp(reply)
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", f"http://127.0.0.1:{server.port}")
    try:
        with caplog.at_level(logging.DEBUG, logger="mammo.telemetry"):
            _a_short_run(Telemetry("baseline", _run_id()))
    finally:
        server.close()
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1", "MAMMO_PUSHGATEWAY_URL"),
        ("http://gateway:port", "the port is not a number"),
        ("ftp://gateway:9091", "use http:// or https://"),
        ("http://", "no host name"),
        ("http://user:hunter2@gateway:notaport", "the port is not a number"),
        ("http://gateway:99999", "the port is not a number from 0 to 65535"),
    ],
)
def test_a_malformed_url_warns_once_without_credentials_and_the_run_goes_on(
    url: str, why: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", url)
    with caplog.at_level(logging.DEBUG, logger="mammo.telemetry"):
        telemetry = Telemetry("baseline", _run_id())
        _a_short_run(telemetry)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and why in warnings[0], warnings
    assert "hunter2" not in caplog.text


def test_bad_telemetry_settings_warn_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MAMMO_PUSHGATEWAY_TIMEOUT_SECONDS", "soon")
    with caplog.at_level(logging.WARNING, logger="mammo.telemetry"):
        telemetry = Telemetry("baseline", _run_id())
        _a_short_run(telemetry)
    assert not telemetry.enabled
    assert len(_warnings(caplog)) == 1 and "MAMMO_PUSHGATEWAY_TIMEOUT_SECONDS" in _warnings(caplog)[0]


def test_credentials_in_the_url_are_used_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway behind basic auth (the Pushgateway's own web config): the right password
    pushes; the wrong one warns once; neither password appears in any message."""
    crypt = pytest.importorskip("crypt")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  mammo: '{crypt.crypt('r1ght-pw', crypt.mksalt(crypt.METHOD_BLOWFISH))}'\n")
    gateway = Pushgateway(tmp_path, web_config=web)
    try:
        run_id = _run_id()
        monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", f"http://mammo:r1ght-pw@127.0.0.1:{gateway.port}")
        with caplog.at_level(logging.DEBUG, logger="mammo.telemetry"):
            telemetry = Telemetry("baseline", run_id)
            assert telemetry.epoch(1, **EPOCH)
            assert telemetry.finish(True, 1.0)  # and the group expiry, authenticated too
            monkeypatch.setenv("MAMMO_PUSHGATEWAY_URL", f"http://mammo:wr%40ng-pw@127.0.0.1:{gateway.port}")
            _a_short_run(Telemetry("baseline", _run_id()))
        assert len(_warnings(caplog)) == 1 and "401" in _warnings(caplog)[0]
        assert "r1ght-pw" not in caplog.text and "wr@ng-pw" not in caplog.text and "wr%40ng-pw" not in caplog.text
        # What the right password pushed is there (read back with it).
        auth = "Basic " + base64.b64encode(b"mammo:r1ght-pw").decode()
        request = urllib.request.Request(f"http://127.0.0.1:{gateway.port}/metrics", headers={"Authorization": auth})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as answer:
            assert f'run_id="{run_id}"' in answer.read().decode()
    finally:
        gateway.stop()


def test_redact_hides_passwords_in_any_url() -> None:
    from mammo.telemetry import redact

    assert redact("failed for http://u:p4ss@h:1/x and https://tok@h2") == "failed for http://u:***@h:1/x and https://***@h2"
    assert redact("no url here") == "no url here"
