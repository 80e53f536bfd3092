"""The promoter component: the promotion rule (metric, margin, first model, same model), the
verified copy and compare-and-swap of models/<name>/production/, garbage collection that keeps
what is referenced, and the record of every decision - on the local store and through the S3
server. Many promoters at once: test_promotion_concurrency.py."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ConfigError, IntegrityError, StorageError
from mammo.production import card_keys
from mammo.storage.uri import parse_s3
from mammo_components.promoter.entrypoint import check_rule, decide, lock_uri, run
from mammo.promotion import promotable_metrics
from mammo_components.promoter.records import read_records, record_decision
from servers import FaultProxy, S3Env

RULE = {"model_name": "mammo", "metric": "test.breast.auc", "margin": 0.01}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_env").uri


def _metrics(auc: float | None, spec: float = 0.5) -> dict:
    level = {"auc": auc, "specificity": spec}
    return {"val": {"breast": dict(level)}, "test": {"breast": dict(level), "image": dict(level)}}


def _candidate(store: str, run_id: str, payload: bytes) -> storage.ObjectInfo:
    return storage.put_bytes(payload, storage.join(store, "runs", run_id, "unfreeze_trainer", "best_auc.pt"))


def _promote(store: str, info: storage.ObjectInfo, auc: float | None, **rule) -> dict:
    return run(
        candidate_uri=info.uri, candidate_sha256=info.sha256, candidate_metrics=_metrics(auc),
        store_uri=store, **{**RULE, **rule},
    )


def _production(store: str) -> storage.Manifest:
    return storage.read_manifest(storage.production_model_uri(store, "mammo"))


def _tickets(store: str) -> list[str]:
    """What the promotion lock holds: tickets of holders and waiters, and choosers."""
    lock = lock_uri(store, "mammo")
    return storage.list_objects(storage.join(lock, "tickets")) + storage.list_objects(storage.join(lock, "choosing"))


def _prefix(store: str) -> str:
    return storage.production_model_uri(store, "mammo")


def _tamper(uri: str, data: bytes, request: pytest.FixtureRequest) -> None:
    """Replace an object's bytes behind the store's back, keeping its recorded sha256 (bit rot,
    a bad disk, an overwrite by another tool)."""
    if storage.is_remote(uri):
        loc = parse_s3(uri)
        client = request.getfixturevalue("s3_env").server.client()
        sha = client.stat_object(loc.bucket, loc.key).metadata["x-amz-meta-sha256"]
        client.put_object(loc.bucket, loc.key, io.BytesIO(data), len(data), metadata={"sha256": sha})
    else:
        storage.local_path(uri).write_bytes(data)  # in place: the same inode


def test_first_model_is_promoted_then_only_a_clearly_better_one(store: str, tmp_path: Path) -> None:
    first = _candidate(store, "r1", b"model one")
    result = _promote(store, first, 0.70, provenance={"run_id": "r1"})
    assert result["promoted"] and result["reason"] == "no production model yet"
    manifest = _production(store)
    assert manifest.metadata["sha256"] == first.sha256 and manifest.metadata["run_id"] == "r1"
    assert list(manifest.objects) == [f"model-{first.sha256[:12]}.pt", *card_keys(first.sha256)]  # and its model card

    # Within the margin (and an equal model): production stays.
    close = _candidate(store, "r2", b"model two")
    result = _promote(store, close, 0.705)
    assert not result["promoted"] and "does not beat production 0.7000" in result["reason"]
    assert _production(store).metadata["sha256"] == first.sha256

    better = _candidate(store, "r3", b"model three")
    result = _promote(store, better, 0.80, provenance={"run_id": "r3"})
    assert result["promoted"] and "beats production 0.7000" in result["reason"]
    manifest = _production(store)
    assert manifest.metadata["previous"]["sha256"] == first.sha256
    assert manifest.metadata["fence"] > 0
    key = f"model-{better.sha256[:12]}.pt"
    assert list(manifest.objects) == [key, *card_keys(better.sha256)]
    # The previous model stays (history: the last promotions) but is no longer listed.
    assert [h["sha256"] for h in manifest.metadata["history"]] == [first.sha256]
    fetched = storage.fetch_from_manifest(_prefix(store), tmp_path / "fetched")
    assert fetched[key].read_bytes() == b"model three"
    # Every decision of run() is on record, oldest first.
    records = read_records(store, "mammo")
    assert [r["promoted"] for r in records] == [True, False, True]
    assert records[1]["candidate"] == 0.705 and records[1]["production"] == 0.7


def test_only_the_last_promoted_models_are_kept_and_litter_is_collected(store: str) -> None:
    infos = [_candidate(store, f"r{i}", f"model {i}".encode()) for i in range(5)]
    litter = storage.join(_prefix(store), "model-000000000000.pt")
    storage.put_bytes(b"left by a promoter killed before its switch", litter)
    for i, info in enumerate(infos):
        assert _promote(store, info, 0.5 + i / 10)["promoted"]
    manifest = _production(store)
    kept = {storage.join(_prefix(store), name) for i in infos[-3:] for name in (f"model-{i.sha256[:12]}.pt", *card_keys(i.sha256))}
    assert set(storage.list_objects(_prefix(store))) == kept | {storage.join(_prefix(store), "manifest.json")}
    assert [h["sha256"] for h in manifest.metadata["history"]] == [infos[3].sha256, infos[2].sha256]
    # The lock left nothing behind.
    assert _tickets(store) == []


def test_a_candidate_damaged_after_evaluation_is_never_promoted(store: str, request: pytest.FixtureRequest) -> None:
    """The issue's repro: the checkpoint changes in the store between evaluation and promotion
    while its recorded sha256 stays. The bytes stored at the destination are hashed before the
    pointer moves: one-line error, production untouched and readable, the refusal on record."""
    good = _candidate(store, "r1", b"good model")
    _promote(store, good, 0.7)
    evaluated = _candidate(store, "r2", b"better model")
    _tamper(evaluated.uri, b"better modeX", request)
    with pytest.raises(IntegrityError, match=r"bytes stored at .*model-.*\.pt hash to .*not the evaluated checkpoint's"):
        _promote(store, evaluated, 0.9)
    manifest = _production(store)
    assert manifest.metadata["sha256"] == good.sha256
    key = manifest.metadata["checkpoint"]
    assert storage.get_bytes(storage.join(_prefix(store), key), sha256=good.sha256) == b"good model"
    assert not storage.exists(storage.join(_prefix(store), f"model-{evaluated.sha256[:12]}.pt"))
    last = read_records(store, "mammo")[-1]
    assert not last["promoted"] and last["reason"].startswith("refused: integrity check failed")


def test_a_candidate_that_does_not_match_its_checksum_is_never_promoted(store: str) -> None:
    good = _candidate(store, "r1", b"good")
    _promote(store, good, 0.7)
    other = _candidate(store, "r2", b"other")
    with pytest.raises(IntegrityError, match="does not match"):
        run(
            candidate_uri=other.uri, candidate_sha256=good.sha256[::-1], candidate_metrics=_metrics(0.9),
            store_uri=store, **RULE,
        )
    assert _production(store).metadata["sha256"] == good.sha256


def test_same_model_undefined_metric_and_margin_zero(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    model = _candidate(store, "r1", b"model")
    _promote(store, model, 0.7)
    same = decide(candidate_metrics=_metrics(0.99), candidate_sha256=model.sha256, store_uri=store, **RULE)
    assert not same["promote"] and same["reason"] == "this model is already in production"
    undefined = decide(candidate_metrics=_metrics(None), store_uri=store, **RULE)
    assert not undefined["promote"] and "undefined" in undefined["reason"]
    # Margin 0: an equal value is still not an improvement.
    equal = decide(candidate_metrics=_metrics(0.7), store_uri=store, **{**RULE, "margin": 0.0})
    assert not equal["promote"]
    better = decide(candidate_metrics=_metrics(0.7, spec=0.9), store_uri=store, **{**RULE, "metric": "test.breast.specificity"})
    assert better["promote"]


def test_promotable_metrics_are_what_the_evaluator_reports() -> None:
    """From the metric registry: the model's measures, at both levels, on both splits; not
    the data's counts (n, prevalence) nor the loss the evaluation does not compute."""
    from mammo.metrics import headline_keys

    names = set(promotable_metrics())
    measures = {"auc", "pr_auc", "pf1", "sensitivity", "specificity", "precision"}
    assert names >= {f"{s}.{lv}.{m}" for s in ("val", "test") for lv in ("image", "breast") for m in measures}
    assert {name.split(".")[2] for name in names} <= set(headline_keys()) - {"n", "n_pos", "prevalence", "loss"}
    assert {name.rsplit(".", 1)[0] for name in names} == {"val.image", "val.breast", "test.image", "test.breast"}


@pytest.mark.parametrize(
    ("metric", "margin", "message"),
    [
        ("breast.auc", 0.0, "the evaluator reports no such metric"),
        ("test.breast.bogus", 0.0, "the evaluator reports no such metric"),
        ("test.breast.loss", 0.0, "the evaluator reports no such metric"),
        ("test.breast.n", 0.0, "the evaluator reports no such metric"),
        ("TEST.breast.auc", 0.0, "the evaluator reports no such metric"),
        ("test.breast.auc", -0.1, "must be a finite number, 0 or more"),
        ("test.breast.auc", float("nan"), "must be a finite number, 0 or more"),
        ("test.breast.auc", float("inf"), "must be a finite number, 0 or more"),
    ],
)
def test_bad_rule_is_a_config_error_before_anything_happens(tmp_path: Path, metric: str, margin: float, message: str) -> None:
    store = str(tmp_path / "store")
    info = _candidate(store, "r1", b"model")
    with pytest.raises(ConfigError, match=message):
        check_rule(metric, margin)
    with pytest.raises(ConfigError, match=message):
        _promote(store, info, 0.7, metric=metric, margin=margin)
    assert not storage.exists(storage.join(store, "models"))  # no record, no lock, nothing


def test_every_decision_is_recorded_also_not_promoted_and_never_overwritten(store: str) -> None:
    model = _candidate(store, "r1", b"model")
    verdict = {"promote": False, "reason": "paired bootstrap: difference not significant", "candidate": 0.8, "production": None}
    result = run(
        candidate_uri=model.uri, candidate_sha256=model.sha256, candidate_metrics=_metrics(0.8),
        store_uri=store, verdict=verdict, provenance={"run_id": "r1"}, **RULE,
    )
    assert not result["promoted"] and result["decided_by"] == "evaluator"
    assert not storage.exists(storage.join(_prefix(store), "manifest.json"))
    # Two decisions in the same microsecond for the same candidate: two records.
    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    same = {**result, "decided_at": when.isoformat()}
    uris = {record_decision(store, "mammo", same, when=when) for _ in range(2)}
    assert len(uris) == 2
    records = read_records(store, "mammo")
    assert len(records) == 3 and records[0]["reason"] == verdict["reason"]
    assert records[0]["provenance"] == {"run_id": "r1"} and records[0]["candidate_sha256"] == model.sha256


def test_switch_on_s3_new_object_verified_then_manifest(s3_env: S3Env, s3_proxy: FaultProxy) -> None:
    store = s3_env.uri
    first = _candidate(store, "r1", b"first model")
    _promote(store, first, 0.6)
    second = _candidate(store, "r2", b"second model")
    s3_proxy.requests.clear()
    assert _promote(store, second, 0.9)["promoted"]
    prefix = f"/{s3_env.bucket}/models/mammo/production/"
    model = f"{prefix}model-{second.sha256[:12]}.pt"
    seen = [r.split("?")[0] for r in s3_proxy.requests if prefix in r and not r.startswith("HEAD")]
    put_model, get_model, put_manifest = seen.index(f"PUT {model}"), seen.index(f"GET {model}"), seen.index(f"PUT {prefix}manifest.json")
    assert put_model < get_model < put_manifest  # the stored bytes are read back before the switch
    assert not [r for r in seen if r.startswith("DELETE")]  # the previous model is kept
    # The lock: a ticket went up before anything below production/ changed, and came down.
    lock = f"/{s3_env.bucket}/models/mammo/lock/tickets/"
    order = [r.split("?")[0] for r in s3_proxy.requests]
    first_ticket = next(i for i, r in enumerate(order) if r.startswith(f"PUT {lock}"))
    assert first_ticket < order.index(f"PUT {model}")
    assert _tickets(store) == []


def test_promoter_command_promotes_an_evaluator_runs_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mammo_components.cli import main

    store = str(tmp_path / "store")
    best = _candidate(store, "r1", b"best model")
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "result.json").write_text(
        json.dumps({"best_uri": best.uri, "best_sha256": best.sha256, "metrics": _metrics(0.7), "report_uri": "r.html",
                    "decision": _first_verdict(0.3)})
    )
    out_uri = storage.join(store, "runs", "r1", "evaluator")
    storage.publish(evaluation, out_uri)
    args = ["promoter", "--evaluation", out_uri, "--store", store, "--margin", "0.005"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["promoted"] is True
    assert _production(store).metadata["evaluation_uri"] == out_uri
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "this model is already in production"
    assert main(["promoter", "--evaluation", storage.join(store, "runs", "nope"), "--store", store]) == 2
    assert "artifact not found" in capsys.readouterr().err
    assert main([*args, "--metric", "test.breast.bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the evaluator reports no such metric" in err


def _first_verdict(separation: float) -> dict:
    """The evaluator's verdict for a first model (``mammo.promotion.decide``) on 100 patients,
    20 cancer breasts, scores ``separation`` apart."""
    import numpy as np
    import pandas as pd

    from mammo.promotion import PromotionRule, decide
    from mammo.stats import BootstrapSettings

    labels = np.zeros(200, dtype=int)
    labels[::10] = 1
    noise = np.random.default_rng(0).normal(size=200)
    frame = pd.DataFrame({"breast_id": np.arange(200), "patient_id": np.arange(200) // 2, "label": labels,
                          "prob": 1 / (1 + np.exp(-(separation * 10 * labels + noise)))})
    return decide(PromotionRule(), frame, 0.5, BootstrapSettings(200, 0))


def test_a_hand_run_promoter_follows_the_evaluators_verdict_not_its_own_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20: a candidate of test AUC 0.40 that the evaluator refused was promoted by hand."""
    from mammo_components.cli import main

    store = str(tmp_path / "store")
    best = _candidate(store, "r1", b"chance model")
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    refused = _first_verdict(-0.02)
    assert not refused["promote"]
    (evaluation / "result.json").write_text(json.dumps({"best_uri": best.uri, "best_sha256": best.sha256,
                                                        "metrics": _metrics(0.4), "decision": refused}))
    out_uri = storage.join(store, "runs", "r1", "evaluator")
    storage.publish(evaluation, out_uri)
    assert main(["promoter", "--evaluation", out_uri, "--store", store]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not result["promoted"] and "not above the floor" in result["reason"]
    # The evaluation's "yes" under the default rule is refused by a promoter with another rule.
    (evaluation / "result.json").write_text(json.dumps({"best_uri": best.uri, "best_sha256": best.sha256,
                                                        "metrics": _metrics(0.9), "decision": _first_verdict(0.3)}))
    storage.publish(evaluation, storage.join(store, "runs", "r2", "evaluator"))
    assert main(["promoter", "--evaluation", storage.join(store, "runs", "r2", "evaluator"), "--store", store,
                 "--min-cancers", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not result["promoted"] and "decided under another promotion rule: min_cancers 10" in result["reason"]
    assert not storage.exists(storage.join(_prefix(store), "manifest.json"))


# --- the lock: holders that die, holders elsewhere ---------------------------------------------


def _holder(store: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real process that takes the promotion lock and keeps it until killed."""
    code = (
        "import sys, time\n"
        "from mammo.storage.lock import acquire\n"
        f"lease = acquire({lock_uri(store, 'mammo')!r}, intent={{'staged': 'model-aaaaaaaaaaaa.pt'}})\n"
        "print('held', lease.token, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().startswith("held")
    return proc


def test_a_killed_holder_does_not_block_promotion(store: str) -> None:
    """kill -9 while holding the lock: on the same host its death is seen at once (pid gone);
    its staged object was kept while its ticket existed, and is collected afterwards."""
    staged = storage.join(_prefix(store), "model-aaaaaaaaaaaa.pt")
    storage.put_bytes(b"half-promoted", staged)
    holder = _holder(store, dict(os.environ))
    info = _candidate(store, "r1", b"model")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    assert _promote(store, info, 0.7)["promoted"]
    assert time.monotonic() - started < 10
    assert not storage.exists(staged)
    assert _tickets(store) == []


def _foreign_ticket(store: str, number: int, expires_in: float, staged: str) -> str:
    """A ticket of a promoter on another machine (its pid cannot be checked from here)."""
    now = time.time()
    uri = storage.join(lock_uri(store, "mammo"), "tickets", f"{number:012d}-{'f' * 32}.json")
    storage.put_bytes(json.dumps({
        "id": "f" * 32, "number": number, "host": "other-node/1", "pid": 4242, "created_at": now - 5,
        "expires_at": now + expires_in, "intent": {"staged": staged},
    }).encode(), uri)
    return uri


def test_a_live_holder_elsewhere_is_waited_for_then_named(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_LOCK_WAIT_SECONDS", "1")
    _foreign_ticket(store, 7, expires_in=60, staged="model-bbbbbbbbbbbb.pt")
    info = _candidate(store, "r1", b"model")
    with pytest.raises(StorageError, match=r"held by pid 4242 on other-node since .*gave up after 1 s"):
        _promote(store, info, 0.7)
    assert not storage.exists(storage.join(_prefix(store), "manifest.json"))


def test_an_expired_holder_elsewhere_is_passed_and_its_intent_kept_for_a_while(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_LOCK_CLOCK_SKEW_SECONDS", "0")
    staged = storage.join(_prefix(store), "model-cccccccccccc.pt")
    storage.put_bytes(b"staged by a pod that died", staged)
    ticket = _foreign_ticket(store, 7, expires_in=-1, staged="model-cccccccccccc.pt")
    result = _promote(store, _candidate(store, "r1", b"model"), 0.7)
    assert result["promoted"] and _production(store).metadata["fence"] == 8  # beyond the ticket seen
    # Expired but within a further ttl: its staged object is kept, the ticket too.
    assert storage.exists(staged) and storage.exists(ticket)
