"""Splits that never move: the split builder's ledger (``mammo.split_ledger``) keeps every
patient ever assigned in its split for the life of the model name - across dropped and re-added
patients and a moved dataset URI - refuses a table whose ids mostly changed, naming the likely
cause, and the evaluator refuses to score a model on test patients it trained on. On a local
store and on the S3 test server."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from mammo import split_ledger, storage
from mammo.errors import DataError
from mammo_components.evaluator import entrypoint as evaluator
from mammo_components.split_builder import entrypoint as split_builder
from model_support import fake_checkpoint

PARAMS = {"val_frac": 0.25, "test_frac": 0.25, "seed": 3}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return request.getfixturevalue("s3_env").uri
    return str(tmp_path / "store")


def table(patients: list[str]) -> pd.DataFrame:
    """Two breasts, two views per patient; every fourth patient has a cancer on the left."""
    rows = []
    for n, pid in enumerate(patients):
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                rows.append({"patient_id": pid, "image_id": f"{pid}{side}{view}", "laterality": side,
                             "cancer": int(side == "L" and n % 4 == 0)})
    return pd.DataFrame(rows)


def ids(n: int, start: int = 1) -> list[str]:
    return [f"{i:05d}" for i in range(start, start + n)]


def put_table(frame: pd.DataFrame, dataset_uri: str) -> None:
    storage.put_bytes(frame.to_csv(index=False).encode(), storage.join(dataset_uri, "train.csv"))


def build(store: str, dataset_uri: str, frame: pd.DataFrame, work: Path, **params: object) -> dict:
    put_table(frame, dataset_uri)
    return split_builder.run(dataset_uri=dataset_uri, store_uri=store, params={**PARAMS, **params}, workdir=str(work))


def split_of(split_uri: str) -> dict[str, str]:
    manifest = storage.read_manifest(split_uri)
    data = storage.get_bytes(storage.join(split_uri, "split.csv"), sha256=manifest.objects["split.csv"].sha256)
    frame = pd.read_csv(io.BytesIO(data), dtype=str)
    return frame.groupby("patient_id")["split"].first().to_dict()


def test_dropped_and_re_added_patients_keep_their_split(store: str, tmp_path: Path) -> None:
    everyone = ids(40)
    first = build(store, f"{store}/datasets/d", table(everyone), tmp_path / "1")
    before = split_of(first["split_uri"])
    dropped = everyone[::3]  # 14 patients leave the table ...
    build(store, f"{store}/datasets/d", table([p for p in everyone if p not in dropped]), tmp_path / "2")
    # ... and come back with 6 newcomers; the split in between did not know them
    again = build(store, f"{store}/datasets/d", table(everyone + ids(6, start=100)), tmp_path / "3")
    after = split_of(again["split_uri"])
    assert {p: after[p] for p in everyone} == before
    assert again["previous"]["kept_patients"] == 40 and again["previous"]["new_patients"] == 6
    ledger = split_ledger.read_ledger(store, "mammo")
    assert set(ledger["patients"]) == set(everyone) | set(ids(6, start=100))
    assert [h["patients"] for h in ledger["history"]] == [40, 26, 46]


def test_a_moved_dataset_uri_keeps_the_split(store: str, tmp_path: Path) -> None:
    everyone = ids(40)
    first = build(store, f"{store}/datasets/old", table(everyone), tmp_path / "1")
    moved = build(store, f"{store}/datasets/new-place", table(everyone + ids(4, start=200)), tmp_path / "2")
    assert not moved["reused"]
    after = split_of(moved["split_uri"])
    assert {p: after[p] for p in everyone} == split_of(first["split_uri"])


def test_the_ledger_is_per_model_name(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    build(store, f"{store}/datasets/d", table(ids(40)), tmp_path / "1", model_name="a")
    assert split_ledger.read_ledger(store, "b") is None
    assert set(split_ledger.read_ledger(store, "a")["patients"]) == set(ids(40))
    # model b adopts the dataset's stored split, and so its ledger starts from it
    reused = build(store, f"{store}/datasets/d", table(ids(40)), tmp_path / "2", model_name="b")
    assert reused["reused"]
    assert split_ledger.read_ledger(store, "b")["patients"] == split_ledger.read_ledger(store, "a")["patients"]


def test_ids_re_exported_without_leading_zeros_are_refused_with_the_cause(store: str, tmp_path: Path) -> None:
    everyone = ids(40)
    build(store, f"{store}/datasets/d", table(everyone), tmp_path / "1")
    ledger = split_ledger.read_ledger(store, "mammo")
    stripped = table([p.lstrip("0") for p in everyone])
    with pytest.raises(DataError, match=r"^[^\n]*/datasets/d/train.csv: 40 of the 40 patients in the split ledger of "
                       r"model 'mammo' are missing and 40 of its 40 patients are new: the ids were re-exported "
                       r"without their leading zeros \(ledger '00001' is now '1'.*accept_fresh_split=true"):
        build(store, f"{store}/datasets/d", stripped, tmp_path / "2")
    assert split_ledger.read_ledger(store, "mammo") == ledger  # nothing written
    assert len([u for u in storage.list_objects(f"{store}/splits") if u.endswith("/manifest.json")]) == 1

    fresh = build(store, f"{store}/datasets/d", stripped, tmp_path / "3", accept_fresh_split=True)
    assert fresh["ledger"]["fresh"] and fresh["previous"] is None
    assert set(split_ledger.read_ledger(store, "mammo")["patients"]) == set(everyone) | {p.lstrip("0") for p in everyone}
    # the next run on the same table is no longer a change of ids
    again = build(store, f"{store}/datasets/d", stripped, tmp_path / "4")
    assert again["reused"] and not again["ledger"]["fresh"]


def test_a_grown_or_shrunk_table_is_not_mistaken_for_new_ids() -> None:
    ledger = {"patients": dict.fromkeys(ids(40), "train")}
    kwargs = {"where": "t.csv", "model_name": "m", "accept_fresh": False}
    assert split_ledger.check_ids(ids(10), ledger, **kwargs) is False  # 30 missing, nothing new
    assert split_ledger.check_ids(ids(200), ledger, **kwargs) is False  # nothing missing, 160 new
    assert split_ledger.check_ids(ids(40, start=15), ledger, **kwargs) is False  # 14 missing, 14 new
    with pytest.raises(DataError, match="21 of the 40 patients .* missing and 21 of its 40 patients are new"):
        split_ledger.check_ids(ids(40, start=22), ledger, **kwargs)


@pytest.mark.parametrize(("old", "new", "cause"), [
    ([f"{i:04d}" for i in range(1, 30)], [str(i) for i in range(1, 30)], "without their leading zeros"),
    ([str(i) for i in range(1, 30)], [f"{i}.0" for i in range(1, 30)], "how numbers are written"),
    ([hashlib.sha256(b"a%d" % i).hexdigest()[:20] for i in range(30)],
     [hashlib.sha256(b"b%d" % i).hexdigest()[:20] for i in range(30)], "pseudonym key changed"),
    (["p%d" % i for i in range(30)], ["q%d" % i for i in range(30)], "other patients or ids mapped anew"),
])
def test_the_likely_cause_is_named(old: list[str], new: list[str], cause: str) -> None:
    assert cause in split_ledger.likely_cause(set(old), set(new))


def test_a_stored_split_that_moves_ledger_patients_is_refused(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = build(store, f"{store}/datasets/d", table(ids(40)), tmp_path / "1", model_name="a")
    # model b splits the same patients with another seed first (its own ledger) ...
    build(store, f"{store}/datasets/e", table(ids(40) + ids(1, start=900)), tmp_path / "2", model_name="b", seed=11)
    assert split_of(first["split_uri"]) != {
        p: s for p, s in split_ledger.read_ledger(store, "b")["patients"].items() if p in split_of(first["split_uri"])}
    # ... then meets the stored split of model a's dataset, which would move its patients
    with pytest.raises(DataError, match=r"puts \d+ patients in another split than the split ledger of model 'b'"):
        build(store, f"{store}/datasets/d", table(ids(40)), tmp_path / "3", model_name="b")


def test_the_ledger_stores_only_ids_and_splits(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    build(store, f"{store}/datasets/d", table(ids(8)), tmp_path / "1")
    ledger = split_ledger.read_ledger(store, "mammo")
    assert set(ledger) == {"format", "model_name", "token", "patients", "history"}
    assert set(ledger["patients"].values()) <= {"train", "val", "test"}
    damaged = split_ledger.ledger_uri(store, "mammo")
    storage.put_bytes(b'{"patients": {"00001": "holdout"}}', damaged)
    with pytest.raises(DataError, match=r"ledger/mammo.json: patient '00001' has split 'holdout'"):
        build(store, f"{store}/datasets/d", table(ids(8)), tmp_path / "2")


# The evaluator ------------------------------------------------------------------------------


def _checkpoint_trained_on(path: Path, split_csv: bytes, seed: int) -> Path:
    fake_checkpoint(path, seed=seed)
    payload = torch.load(path, weights_only=False)
    payload["split_fingerprint"] = hashlib.sha256(split_csv).hexdigest()
    torch.save(payload, path)
    return path


def test_the_evaluator_refuses_a_model_trained_on_its_test_patients(tiny_dataset: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    params = {"image_size": 32, "batch_size": 64, "workers": 0, "device": "cpu", "val_frac": 0.3, "test_frac": 0.3,
              "promotion_min_cancers": 0, "evaluate_set": ["stats.resamples=50", "stats.subgroup_resamples=0"]}
    split = split_builder.run(dataset_uri=str(tiny_dataset), store_uri=store, params=params,
                              workdir=str(tmp_path / "split-pod"))
    current = pd.read_csv(Path(storage.local_path(split["split_uri"])) / "split.csv", dtype=str)
    # an older split (say, accepted fresh) in which this split's test patients were in train
    older = current.assign(split=current["split"].replace({"test": "train", "train": "test"}))
    older_csv = older.to_csv(index=False, lineterminator="\n").encode()
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "split.csv").write_bytes(older_csv)
    (tmp_path / "older" / "split.json").write_text("{}")
    storage.publish({name: tmp_path / "older" / name for name in ("split.csv", "split.json")},
                    storage.split_uri(store, "0" * 64))
    leaked = _checkpoint_trained_on(tmp_path / "leaked" / "best_auc.pt", older_csv, seed=1)
    run_uri = storage.join(store, "runs", "r1", "baseline_trainer")
    storage.publish({"best_auc.pt": leaked}, run_uri)
    n_test = current.loc[current["split"] == "test", "patient_id"].nunique()
    with pytest.raises(DataError, match=rf"^best_auc.pt was trained on split [0-9a-f]{{12}}, which has {n_test} of "
                       rf"this split's {n_test} test patients in train or val"):
        evaluator.run(dataset_uri=str(tiny_dataset), split_uri=split["split_uri"],
                      checkpoint_uris=[storage.join(run_uri, "best_auc.pt")], params=params,
                      out_uri=storage.join(store, "runs", "r1", "evaluator"), workdir=str(tmp_path / "eval-pod"))
    assert not storage.exists(storage.join(store, "runs", "r1", "evaluator", "manifest.json"))

    # trained on this very split: scored
    honest = _checkpoint_trained_on(tmp_path / "honest" / "best_auc.pt",
                                    (Path(storage.local_path(split["split_uri"])) / "split.csv").read_bytes(), seed=2)
    run_uri = storage.join(store, "runs", "r2", "baseline_trainer")
    storage.publish({"best_auc.pt": honest}, run_uri)
    result = evaluator.run(dataset_uri=str(tiny_dataset), split_uri=split["split_uri"],
                           checkpoint_uris=[storage.join(run_uri, "best_auc.pt")], params=params,
                           out_uri=storage.join(store, "runs", "r2", "evaluator"), workdir=str(tmp_path / "eval-pod2"))
    assert result["best_name"] == "best_auc.pt"
