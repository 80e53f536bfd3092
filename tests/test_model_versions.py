"""``mammo models``: the versions of a production model (list, show), rollback under the promotion
lock with the promoter's verified copy, freeze/unfreeze that the promoter obeys, retention, and
one-line errors - on the local store and through the S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ConfigError, IntegrityError
from mammo.model_versions import freeze, list_versions, main, rollback, set_retention, show_version, unfreeze
from mammo.production import model_key, read_records
from mammo_components.promoter.entrypoint import run

RULE = {"model_name": "mammo", "metric": "test.breast.auc", "margin": 0.01}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_env").uri


def _metrics(auc: float) -> dict:
    level = {"auc": auc, "sensitivity": 0.6, "specificity": 0.7,
             "ci": {"auc": {"low": round(auc - 0.05, 3), "high": round(auc + 0.05, 3)},
                    "sensitivity": {"low": 0.5, "high": 0.7}}}
    return {"val": {"breast": dict(level), "image": dict(level)}, "test": {"breast": dict(level), "image": dict(level)}}


def _promote(store: str, run_id: str, payload: bytes, auc: float) -> dict:
    info = storage.put_bytes(payload, storage.join(store, "runs", run_id, "unfreeze_trainer", "best_auc.pt"))
    return run(candidate_uri=info.uri, candidate_sha256=info.sha256, candidate_metrics=_metrics(auc), store_uri=store,
               provenance={"run_id": run_id, "threshold": 0.5}, **RULE)


def _production(store: str) -> storage.Manifest:
    return storage.read_manifest(storage.production_model_uri(store, "mammo"))


def _production_bytes(store: str) -> bytes:
    manifest = _production(store)
    return storage.get_bytes(storage.join(storage.production_model_uri(store, "mammo"), manifest.metadata["checkpoint"]),
                             sha256=manifest.metadata["sha256"])


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_two_promotions_then_a_rollback_restores_the_first_byte_for_byte(store: str) -> None:
    first = _promote(store, "run-a", b"model A " * 100, 0.70)
    second = _promote(store, "run-b", b"model B " * 100, 0.80)
    assert first["promoted"] and second["promoted"]
    # The promoter's result (the step's output metadata) names the version and the one before it.
    assert (first["version"], first["previous_version"]) == ("v1", None)
    assert (second["version"], second["previous_version"]) == ("v2", "v1")
    assert second["previous_sha256"] == first["sha256"]

    result = rollback(store, "mammo", reason="drift in the clinic")
    assert result["promoted"] and result["version"] == "v1" and result["previous_version"] == "v2"
    assert _production_bytes(store) == b"model A " * 100
    manifest = _production(store)
    assert manifest.metadata["sha256"] == first["sha256"] and manifest.metadata["kind"] == "rollback"
    assert manifest.metadata["run_id"] == "run-a" and manifest.metadata["metrics"]["test"]["breast"]["auc"] == 0.70
    assert manifest.metadata["previous"]["sha256"] == second["sha256"]
    assert manifest.metadata["fence"] > second["fence"]

    record = read_records(store, "mammo")[-1]
    assert record["kind"] == "rollback" and record["promoted"] is True
    assert record["sha256"] == first["sha256"] and record["previous_sha256"] == second["sha256"]
    assert "rollback from v2" in record["reason"] and "drift in the clinic" in record["reason"]

    listing = list_versions(store, "mammo")
    assert [v["version"] for v in listing["versions"]] == ["v1", "v2"]  # a rollback adds no version
    assert listing["current"] == "v1"
    assert [v["current"] for v in listing["versions"]] == [True, False]
    assert [e["kind"] for e in listing["versions"][0]["switched_in"]] == ["promotion", "rollback"]
    # Forward again, by sha256 prefix: v2 was kept below production/.
    assert listing["versions"][1]["restorable"] == "kept"
    rollback(store, "mammo", to=second["sha256"][:8])
    assert _production_bytes(store) == b"model B " * 100


def test_freeze_blocks_a_better_candidate_with_its_reason_until_unfreeze(store: str) -> None:
    _promote(store, "run-a", b"A" * 64, 0.70)
    first = _promote(store, "run-b", b"B" * 64, 0.80)
    state = freeze(store, "mammo", reason="clinical validation until March")
    assert state["frozen"] and state["production_sha256"] == first["sha256"]

    blocked = _promote(store, "run-c", b"C" * 64, 0.95)
    assert not blocked["promoted"]
    assert blocked["reason"].startswith("frozen (clinical validation until March)")
    assert blocked["version"] == blocked["previous_version"] == "v2"
    assert _production(store).metadata["sha256"] == first["sha256"]
    assert read_records(store, "mammo")[-1]["reason"] == blocked["reason"]
    # A rollback is refused too while frozen.
    with pytest.raises(ConfigError, match="frozen"):
        rollback(store, "mammo", to="v1")

    assert list_versions(store, "mammo")["frozen"]["reason"] == "clinical validation until March"
    unfreeze(store, "mammo")
    assert _promote(store, "run-c", b"C" * 64, 0.95)["promoted"]
    kinds = [r.get("kind") for r in read_records(store, "mammo")]
    assert kinds == ["promotion", "promotion", "freeze", "promotion", "unfreeze", "promotion"]


def test_freeze_prefixes_the_evaluators_no_too(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = _promote(store, "run-a", b"A" * 64, 0.70)
    freeze(store, "mammo", reason="audit")
    info = storage.put_bytes(b"B" * 64, storage.join(store, "runs", "run-b", "best.pt"))
    result = run(candidate_uri=info.uri, candidate_sha256=info.sha256, candidate_metrics=_metrics(0.6), store_uri=store,
                 verdict={"promote": False, "reason": "not better"}, **RULE)
    assert result["reason"].startswith("frozen (audit)") and "not better" in result["reason"]
    assert _production(store).metadata["sha256"] == first["sha256"]


def test_list_and_show_on_the_command_line(store: str, capsys: pytest.CaptureFixture) -> None:
    first = _promote(store, "run-a", b"A" * 64, 0.70)
    second = _promote(store, "run-b", b"B" * 64, 0.80)

    code, out, err = _cli(capsys, "list", "--store", store, "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["current"] == "v2" and listing["retention"] == 3 and listing["frozen"] is None
    v1, v2 = listing["versions"]
    assert (v1["short"], v2["short"]) == (first["sha256"][:12], second["sha256"][:12])
    assert (v1["run"], v2["run"]) == ("run-a", "run-b")
    assert v2["current"] and not v1["current"]
    assert v1["figures"]["test.breast.auc"] == {"value": 0.70, "low": 0.65, "high": 0.75}
    assert v2["figures"]["test.breast.sensitivity"] == {"value": 0.6, "low": 0.5, "high": 0.7}
    assert "beats production" in v2["verdict"] and v2["rule"].startswith("margin on test.breast.auc")

    code, out, err = _cli(capsys, "list", "--store", store)
    assert code == 0, err
    lines = out.splitlines()
    assert "current v2" in lines[0]
    row = next(line for line in lines if second["sha256"][:12] in line)
    assert row.startswith("*") and "run-b" in row and "0.800 [0.750, 0.850]" in row

    code, out, err = _cli(capsys, "show", "v1", "--store", store)
    assert code == 0, err
    assert first["sha256"] in out and "test.breast.auc: 0.700 [0.650, 0.750]" in out and "(current)" not in out
    code, out, err = _cli(capsys, "show", "--store", store, "--json")
    assert json.loads(out)["version"] == "v2" and json.loads(out)["record"]["provenance"]["run_id"] == "run-b"


@pytest.mark.parametrize("argv, message", [
    (["list", "--model-name", "nobody"], "model 'nobody' in "),
    (["show", "v9"], "version 'v9' of model 'mammo': no such version; versions: v1 ("),
    (["show", "zz-top"], "version 'zz-top': give current, previous, v<N> or a sha256 prefix"),
    (["rollback"], "model 'mammo': no version before the current one (v1)"),
    (["rollback", "--to", "v1"], "version v1 ("),
    (["unfreeze"], "model 'mammo' is not frozen"),
    (["retention", "--keep", "1"], "retention 1: keep a whole number of models, 2 or more, or all"),
    (["list", "--model-name", "../x"], "model name '../x'"),
])
def test_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    store = str(tmp_path / "store")
    _promote(store, "run-a", b"A" * 64, 0.70)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "lock" not in p.parts)
    code, out, err = _cli(capsys, *argv, "--store", store)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mammo: error: ") and message in err, err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "lock" not in p.parts) == before


def test_the_mammo_command_has_the_family(capsys: pytest.CaptureFixture) -> None:
    from mammo.cli import main as mammo_main

    assert mammo_main(["models", "list", "--help"]) == 0
    assert "--model-name NAME" in capsys.readouterr().out


def test_retention_keeps_what_a_rollback_needs_or_list_says_it_cannot(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    prefix = storage.production_model_uri(store, "mammo")
    shas = [_promote(store, "run-0", bytes([0]) * 64, 0.6)["sha256"]]
    set_retention(store, "mammo", 2)
    shas += [_promote(store, f"run-{i}", bytes([i]) * 64, 0.6 + 0.1 * i)["sha256"] for i in (1, 2)]
    kept = {Path(u).name for u in storage.list_objects(prefix)}
    assert model_key(shas[0]) not in kept and {model_key(shas[1]), model_key(shas[2])} <= kept
    listing = list_versions(store, "mammo")
    assert [v["restorable"] for v in listing["versions"]] == ["run checkpoint", "kept", "in production"]

    # Once the run's checkpoint is gone too, list says so and a rollback is refused in one line.
    checkpoint = storage.join(store, "runs", "run-0", "unfreeze_trainer", "best_auc.pt")
    storage.delete(checkpoint)
    assert list_versions(store, "mammo")["versions"][0]["restorable"].startswith("no: ")
    with pytest.raises(IntegrityError, match="v1 .* can no longer be restored"):
        rollback(store, "mammo", to="v1")
    assert _production(store).metadata["sha256"] == shas[2]
    assert read_records(store, "mammo")[-1]["reason"].startswith("refused: rollback from v3")

    # With the run's checkpoint back, v1 is restored from it, verified.
    storage.put_bytes(bytes([0]) * 64, checkpoint)
    assert rollback(store, "mammo", to="v1")["restored_from"] == checkpoint
    assert _production_bytes(store) == bytes([0]) * 64

    # keep all: nothing kept is collected any more (v2 went with the last switch under keep 2).
    set_retention(store, "mammo", None)
    shas.append(_promote(store, "run-9", b"9" * 64, 0.99)["sha256"])
    shas.append(_promote(store, "run-10", b"10" * 64, 1.0)["sha256"])
    kept = {Path(u).name for u in storage.list_objects(prefix)}
    assert {model_key(s) for s in (shas[0], shas[2], *shas[3:])} <= kept
    assert list_versions(store, "mammo")["retention"] is None


def test_a_damaged_kept_copy_is_restored_from_the_run_checkpoint(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = _promote(store, "run-a", b"A" * 64, 0.70)
    _promote(store, "run-b", b"B" * 64, 0.80)
    kept = storage.local_path(storage.join(storage.production_model_uri(store, "mammo"), model_key(first["sha256"])))
    kept.write_bytes(b"rot" * 20)
    result = rollback(store, "mammo")
    assert result["restored_from"].endswith("run-a/unfreeze_trainer/best_auc.pt")
    assert _production_bytes(store) == b"A" * 64
    assert show_version(store, "mammo")["version"] == "v1"


@pytest.mark.parametrize("command", ["list", "show", "rollback", "freeze", "unfreeze", "retention"])
def test_every_flag_has_help_with_its_default(command: str, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _cli(capsys, command, "--help")
    assert code == 0
    entries = [e for e in out.split("options:")[1].split("\n  -")[1:] if not e.startswith("h, --help")]
    assert entries
    for entry in entries:
        assert "default" in " ".join(entry.split()), f"models {command} -{entry.split()[0]}: no default shown"


def test_an_unreachable_server_is_one_line_and_production_is_untouched(
    s3_env, s3_proxy, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = s3_env.uri
    first = _promote(store, "run-a", b"A" * 64, 0.70)
    second = _promote(store, "run-b", b"B" * 64, 0.80)
    monkeypatch.setenv("MAMMO_STORAGE_RETRY_SECONDS", "0.3")
    s3_proxy.down()
    try:
        for argv in (["list"], ["rollback"], ["freeze", "--reason", "x"]):
            code, out, err = _cli(capsys, *argv, "--store", store)
            assert code != 0 and out == "", argv
            assert err.count("\n") == 1 and err.startswith("mammo: error: storage endpoint unreachable: "), err
    finally:
        s3_proxy.up()
    assert _production(store).metadata["sha256"] == second["sha256"] != first["sha256"]
    assert list_versions(store, "mammo")["frozen"] is None
