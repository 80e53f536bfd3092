"""The promoter component: the promotion rule (metric, margin, first model, same model) and the
atomic switch of models/<name>/production/ (new object, then the manifest, then cleanup), on the
local store and through the S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ConfigError, IntegrityError
from mammo_components.promoter.entrypoint import decide, run
from servers import FaultProxy, S3Env

RULE = {"model_name": "mammo", "metric": "test.breast.auc", "margin": 0.01}


def _metrics(auc: float | None, loss: float = 0.5) -> dict:
    return {"val": {"breast": {"auc": auc}}, "test": {"breast": {"auc": auc, "loss": loss}, "image": {"auc": auc}}}


def _candidate(store: str, run_id: str, payload: bytes) -> storage.ObjectInfo:
    return storage.put_bytes(payload, storage.join(store, "runs", run_id, "unfreeze_trainer", "best_auc.pt"))


def _promote(store: str, info: storage.ObjectInfo, auc: float | None, **rule) -> dict:
    return run(
        candidate_uri=info.uri, candidate_sha256=info.sha256, candidate_metrics=_metrics(auc),
        store_uri=store, **{**RULE, **rule},
    )


def _production(store: str) -> storage.Manifest:
    return storage.read_manifest(storage.production_model_uri(store, "mammo"))


def test_first_model_is_promoted_then_only_a_clearly_better_one(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = _candidate(store, "r1", b"model one")
    result = _promote(store, first, 0.70, provenance={"run_id": "r1"})
    assert result["promoted"] and result["reason"] == "no production model yet"
    manifest = _production(store)
    assert manifest.metadata["sha256"] == first.sha256 and manifest.metadata["run_id"] == "r1"
    assert list(manifest.objects) == [f"model-{first.sha256[:12]}.pt"]

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
    key = f"model-{better.sha256[:12]}.pt"
    assert list(manifest.objects) == [key]
    # The old model's object is gone; what the manifest lists verifies.
    prefix = storage.production_model_uri(store, "mammo")
    assert storage.list_objects(prefix) == sorted([storage.join(prefix, key), storage.join(prefix, "manifest.json")])
    fetched = storage.fetch_from_manifest(prefix, tmp_path / "fetched")
    assert fetched[key].read_bytes() == b"model three"
    # Every decision of run() is on record.
    records = storage.list_objects(storage.join(store, "models", "mammo", "promotions"))
    assert [storage.get_json(r)["promoted"] for r in records].count(True) == 2 and len(records) == 3


def test_same_model_undefined_metric_and_losses(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    model = _candidate(store, "r1", b"model")
    _promote(store, model, 0.7)
    same = decide(candidate_metrics=_metrics(0.99), candidate_sha256=model.sha256, store_uri=store, **RULE)
    assert not same["promote"] and same["reason"] == "this model is already in production"
    undefined = decide(candidate_metrics=_metrics(None), store_uri=store, **RULE)
    assert not undefined["promote"] and "undefined" in undefined["reason"]
    # Losses are minimised: lower by more than the margin wins.
    lower = decide(candidate_metrics=_metrics(0.7, loss=0.3), store_uri=store, **{**RULE, "metric": "test.breast.loss"})
    higher = decide(candidate_metrics=_metrics(0.7, loss=0.6), store_uri=store, **{**RULE, "metric": "test.breast.loss"})
    assert lower["promote"] and not higher["promote"]
    # Margin 0: an equal value is still not an improvement.
    equal = decide(candidate_metrics=_metrics(0.7), store_uri=store, **{**RULE, "margin": 0.0})
    assert not equal["promote"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [({"metric": "breast.auc"}, "expected <split>.<level>.<metric>"), ({"margin": -0.1}, "must be 0 or more")],
)
def test_bad_rule_is_a_config_error(tmp_path: Path, rule: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decide(candidate_metrics=_metrics(0.7), store_uri=str(tmp_path), **{**RULE, **rule})


def test_a_candidate_that_does_not_match_its_checksum_is_never_promoted(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    good = _candidate(store, "r1", b"good")
    _promote(store, good, 0.7)
    other = _candidate(store, "r2", b"other")
    with pytest.raises(IntegrityError, match="does not match"):
        run(
            candidate_uri=other.uri, candidate_sha256=good.sha256[::-1], candidate_metrics=_metrics(0.9),
            store_uri=store, **RULE,
        )
    assert _production(store).metadata["sha256"] == good.sha256


def test_switch_order_on_s3_new_object_then_manifest_then_cleanup(s3_env: S3Env, s3_proxy: FaultProxy) -> None:
    store = s3_env.uri
    first = _candidate(store, "r1", b"first model")
    _promote(store, first, 0.6)
    second = _candidate(store, "r2", b"second model")
    s3_proxy.requests.clear()
    assert _promote(store, second, 0.9)["promoted"]
    prefix = f"/{s3_env.bucket}/models/mammo/production/"
    writes = [r.split("?")[0] for r in s3_proxy.requests if r.startswith(("PUT", "DELETE")) and prefix in r]
    assert writes == [
        f"PUT {prefix}model-{second.sha256[:12]}.pt",
        f"PUT {prefix}manifest.json",
        f"DELETE {prefix}model-{first.sha256[:12]}.pt",
    ]
    manifest = _production(store)
    assert manifest.metadata["sha256"] == second.sha256
    assert storage.stat(storage.join(store, "models/mammo/production", f"model-{second.sha256[:12]}.pt")).sha256 == second.sha256


def test_promoter_command_promotes_an_evaluator_runs_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mammo_components.cli import main

    store = str(tmp_path / "store")
    best = _candidate(store, "r1", b"best model")
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "result.json").write_text(
        json.dumps({"best_uri": best.uri, "best_sha256": best.sha256, "metrics": _metrics(0.7), "report_uri": "r.html"})
    )
    out_uri = storage.join(store, "runs", "r1", "evaluator")
    storage.publish(evaluation, out_uri)
    args = ["promoter", "--evaluation", out_uri, "--store", store, "--margin", "0.01"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["promoted"] is True
    assert _production(store).metadata["evaluation_uri"] == out_uri
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "this model is already in production"
    assert main(["promoter", "--evaluation", storage.join(store, "runs", "nope"), "--store", store]) == 2
    assert "artifact not found" in capsys.readouterr().err
