"""Many promoters at once on one model name, as real processes (``python -m
mammo_components.promoter``), on the local store and on the S3 server.

The issue's trial: two promoters at once left a manifest naming a checkpoint the other had
deleted (4 of 8 trials) or the worse model in production (2 of 8). Here eight evaluations, each
with its verdict "promote" decided against no production model (``mammo.promotion.decide``),
go to eight promoters started together while a reader keeps fetching the production model:
every read verifies, exactly one promotes (the others' verdicts were decided against a
production that has changed since, and each says so on record), and the lock leaves nothing
behind. Then some promoters are killed (SIGKILL) at random moments: production still verifies
and the next promotion, decided against the production model then in place, is not blocked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mammo import storage
from mammo.errors import ArtifactNotFoundError, StorageError
from mammo.promotion import PromotionRule, decide
from mammo_components.promoter.entrypoint import lock_uri
from mammo_components.promoter.records import read_records
from test_promotion_rule import SETTINGS, breasts

pytestmark = pytest.mark.slow  # real processes and whole runs: `make check` leaves them out

PROMOTERS = 8
MODEL = "mammo"


#: Local, S3 with the listing-based lock, S3 with conditional writes (both on moto's server:
#: s3rver crashes under many processes' PUT/DELETE races, a bug of its own).
STORES = {"local": None, "s3-listing": "moto_env_listing", "s3-conditional": "moto_env"}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if STORES[request.param] is None:
        return str(tmp_path / "store")
    return request.getfixturevalue(STORES[request.param]).uri


#: The promoters' rule: the defaults but the margin (the command line below says the same).
RULE = PromotionRule(margin=0.0)


def _evaluation(store: str, tmp_path: Path, run_id: str, seed: int, production_sha256: str | None = None) -> str:
    """A published evaluator result: its best candidate (bytes of its own) and the verdict
    ``decide`` gives a strong model (test breast AUC well above the floor) against no
    production model, or - with ``production_sha256`` - against a weak production model."""
    info = storage.put_bytes(f"weights of {run_id}".encode() * 1000, storage.join(store, "runs", run_id, "unfreeze_trainer", "best_auc.pt"))
    candidate = breasts(np.random.default_rng(seed), 3.0)
    production = None if production_sha256 is None else candidate.assign(prob=np.random.default_rng(seed + 1).random(len(candidate)))
    verdict = decide(RULE, candidate, 0.5, SETTINGS, production=production, production_threshold=0.5,
                     production_info=None if production_sha256 is None else {"sha256": production_sha256})
    assert verdict["promote"], verdict["reason"]
    folder = tmp_path / "evaluations" / run_id
    folder.mkdir(parents=True)
    metrics = {split: {level: {"auc": verdict["candidate"]} for level in ("image", "breast")} for split in ("val", "test")}
    (folder / "result.json").write_text(json.dumps({
        "best_uri": info.uri, "best_sha256": info.sha256, "metrics": metrics, "report_uri": "report.html",
        "decision": verdict,
    }))
    out_uri = storage.join(store, "runs", run_id, "evaluator")
    storage.publish(folder, out_uri)
    return out_uri


def _start(store: str, evaluation: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "mammo_components.promoter", "--evaluation", evaluation, "--store", store,
            "--model-name", MODEL, "--metric", "test.breast.auc", "--margin", "0"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


class Reader(threading.Thread):
    """Fetches the production model over and over, the way a serving system would: read the
    manifest, fetch what it names (verified). A fetch may only fail if the manifest moved on
    meanwhile (the model then named is fetched next time); a failure while the manifest still
    names the object is a broken production model.

    s3rver writes an object's body in place and then its metadata (``putObject`` in its
    lib/stores/filesystem.js), so a read racing a promotion's write can see a torn pair that S3
    itself never serves (a PUT replaces an object atomically). Such a manifest read fails its
    integrity check; it is retried and counted in ``torn``, and one that keeps failing is an error.
    The local store replaces files by rename, so there ``torn`` must stay 0."""

    ATTEMPTS = 50

    def __init__(self, store: str, work: Path) -> None:
        super().__init__(daemon=True)
        self.prefix = storage.production_model_uri(store, MODEL)
        self.work = work
        self.stop = threading.Event()
        self.reads = 0
        self.torn = 0
        self.errors: list[str] = []

    def manifest(self) -> storage.Manifest | None:
        """The production manifest; None before the first promotion."""
        for _ in range(self.ATTEMPTS - 1):
            try:
                return storage.read_manifest(self.prefix)
            except ArtifactNotFoundError:
                return None
            except StorageError:
                self.torn += 1
                time.sleep(0.02)
        return storage.read_manifest(self.prefix)

    def run(self) -> None:
        try:
            self.read_until_stopped()
        except Exception as exc:  # noqa: BLE001 - a dead reader fails the test instead of a warning
            self.errors.append(f"reader stopped: {type(exc).__name__}: {exc}")

    def read_until_stopped(self) -> None:
        while not self.stop.is_set():
            manifest = self.manifest()
            if manifest is None:
                continue  # nothing promoted yet
            key = manifest.metadata["checkpoint"]
            try:
                storage.fetch_from_manifest(self.prefix, self.work, keys=[key], manifest=manifest, cache=False)
                self.reads += 1
            except Exception as exc:  # noqa: BLE001 - judged below
                now = self.manifest()
                if now is not None and now.metadata["checkpoint"] == key:
                    self.errors.append(f"{key}: {exc}")


def test_many_promoters_at_once_leave_one_verified_model(store: str, tmp_path: Path) -> None:
    evaluations = [_evaluation(store, tmp_path, f"run{i}", seed=i) for i in range(PROMOTERS)]
    random.Random(11).shuffle(evaluations)
    reader = Reader(store, tmp_path / "reader")
    reader.start()
    started = time.monotonic()
    procs = [_start(store, uri) for uri in evaluations]
    outs = [p.communicate(timeout=300) for p in procs]
    elapsed = time.monotonic() - started
    reader.stop.set()
    reader.join(timeout=30)

    assert [p.returncode for p in procs] == [0] * PROMOTERS, [err for _, err in outs if err.strip()][:2]
    results = [json.loads(out) for out, _ in outs]
    prefix = storage.production_model_uri(store, MODEL)
    manifest = storage.read_manifest(prefix)
    fetched = storage.fetch_from_manifest(prefix, tmp_path / "final")  # verified against the manifest
    assert manifest.metadata["checkpoint"] in fetched and set(fetched) == set(manifest.objects)
    # One promotion: the first to hold the lock; every other verdict was decided against "no
    # production model", which is no longer so, and the record says why it did not promote.
    [promoted] = [r for r in results if r["promoted"]]
    assert manifest.metadata["sha256"] == promoted["candidate_sha256"]
    for result in results:
        if not result["promoted"]:
            assert result["reason"].startswith("production changed since the evaluation"), result["reason"]
    records = read_records(store, MODEL)
    assert len(records) == PROMOTERS and sum(r["promoted"] for r in records) == 1
    # Nothing unreferenced below production/, the lock empty, the reader never broken.
    keep = {"manifest.json", manifest.metadata["checkpoint"], *(h["checkpoint"] for h in manifest.metadata["history"])}
    assert {u.rsplit("/", 1)[-1] for u in storage.list_objects(prefix)} <= keep | set(manifest.objects)
    assert set(manifest.objects) <= {u.rsplit("/", 1)[-1] for u in storage.list_objects(prefix)}
    assert storage.list_objects(storage.join(lock_uri(store, MODEL), "tickets")) == []
    assert reader.errors == [] and reader.reads > 0
    assert reader.torn == 0 or store.startswith("s3://"), "the local store served a torn manifest"
    print(f"{PROMOTERS} promoters in {elapsed:.1f} s; {reader.reads} verified reads;"
          f" {reader.torn} torn manifest reads retried")


def test_promoters_killed_at_random_moments_leave_production_sound(store: str, tmp_path: Path) -> None:
    evaluations = [_evaluation(store, tmp_path, f"run{i}", seed=i) for i in range(8)]
    procs = [_start(store, uri) for uri in evaluations]
    rng = random.Random(3)
    victims = rng.sample(range(len(procs)), 3)
    for i in victims:
        time.sleep(rng.uniform(0.2, 1.5))
        procs[i].send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=300)
    assert all(procs[i].returncode == 0 for i in range(len(procs)) if i not in victims)

    prefix = storage.production_model_uri(store, MODEL)
    try:
        current = storage.read_manifest(prefix)
    except ArtifactNotFoundError:
        current = None  # every promoter that got the lock first was killed before the switch
    if current is not None:
        storage.fetch_from_manifest(prefix, tmp_path / "final")  # verifies
    # Nobody is left holding the lock: one more promotion, decided against the production model
    # now in place, goes through at once.
    started = time.monotonic()
    after = _evaluation(store, tmp_path, "after", seed=99,
                        production_sha256=None if current is None else current.metadata["sha256"])
    final = _start(store, after)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert json.loads(out)["promoted"], out
    assert time.monotonic() - started < 30
    assert storage.read_manifest(prefix).metadata["sha256"] == json.loads(out)["candidate_sha256"]
    storage.fetch_from_manifest(prefix, tmp_path / "after")  # verifies
