"""The logic of the pipeline's KFP steps, as ordinary functions (``mammo_components.<name>.step``
and the helpers they share), tested without KFP: fake artifacts, the local store.

The steps themselves (each folder's ``component.py``) only import and call these; the whole chain
through kfp.local is in ``tests/test_pipeline_local.py``."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ConfigError, IntegrityError
from mammo_components.artifacts import log_numbers, write_artifact_json
from mammo_components.evaluator.step import log_classification, record_best
from mammo_components.promoter import step as promoter_step
from mammo_components.split_builder import step as split_step
from mammo_components.training_run import record_trainer_artifacts
from mammo_components.unfreeze_trainer.step import verify_init

from step_fakes import FakeArtifact

SPLIT_VALUES = {"val_frac": 0.25, "test_frac": 0.25, "seed": 3, "weights": "", "promotion_metric": "test.breast.auc",
                "promotion_margin": 0.005}


@pytest.fixture(autouse=True)
def _no_pushgateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MAMMO_PUSHGATEWAY_URL", raising=False)
    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))


# --- run id -----------------------------------------------------------------------------------


def _package(root: Path, files: dict[str, bytes]) -> types.ModuleType:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    module = types.ModuleType(root.name)
    module.__file__ = str(root / "__init__.py")
    return module


def test_code_digest_covers_code_templates_and_presets_only(tmp_path: Path) -> None:
    files = {"__init__.py": b"", "a.py": b"x = 1", "templates/r.html": b"<p>", "presets/d.yaml": b"a: 1"}
    package = _package(tmp_path / "pkg", files)
    digest = split_step.code_digest([package])
    assert digest == split_step.code_digest([package])
    (tmp_path / "pkg" / "a.cpython-311.pyc").write_bytes(b"compiled")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    assert split_step.code_digest([package]) == digest
    for rel in ("a.py", "templates/r.html", "presets/d.yaml"):
        other = _package(tmp_path / f"changed-{rel.replace('/', '-')}", {**files, rel: files[rel] + b" "})
        assert split_step.code_digest([other]) != digest, rel
    renamed = _package(tmp_path / "renamed", {**{k: v for k, v in files.items() if k != "a.py"}, "b.py": b"x = 1"})
    assert split_step.code_digest([renamed]) != digest


def test_run_id_changes_with_every_part_of_the_identity() -> None:
    identity = {"objects": [["s3://b/d/train.csv", 10, "e1"]], "split_sha256": "s" * 64,
                "params": {"seed": 1}, "code": ["mammo 0.1.0", "c" * 64]}
    run_id = split_step.derive_run_id(**identity)
    assert len(run_id) == split_step.RUN_ID_LENGTH and int(run_id, 16) >= 0
    assert split_step.derive_run_id(**identity) == run_id
    changed = {
        "objects": [["s3://b/d/train.csv", 10, "e2"]], "split_sha256": "t" * 64,
        "params": {"seed": 2}, "code": ["mammo 0.1.0", "d" * 64],
    }
    for key, value in changed.items():
        assert split_step.derive_run_id(**{**identity, key: value}) != run_id, key
    assert split_step.derive_run_id(**{**identity, "params": {"seed": 1}}) == run_id  # key order is irrelevant


def test_step_params_map_empty_strings_to_unset_and_refuse_unknown_keys() -> None:
    params = split_step.step_params({"weights": "", "device": "cpu", "seed": 5})
    assert params.weights is None and params.device == "cpu"
    # the dataset is each step's dataset_uri: never also a params value the later steps get
    assert params.data is None and "data" not in params.training_values()
    with pytest.raises(ConfigError, match="params: .*no_such_field"):
        split_step.step_params({"no_such_field": 1})


# --- split builder step ---------------------------------------------------------------------


def test_split_step_builds_the_split_and_names_the_run_after_its_inputs(tiny_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    store = str(tmp_path / "store")

    def step(**changes: object) -> tuple[split_step.SplitOutputs, FakeArtifact]:
        artifact = FakeArtifact(tmp_path / f"split-{len(list(tmp_path.glob('split-*')))}.json")
        values = {**SPLIT_VALUES, "code_version": "images v1", **changes}
        outputs = split_step.run_step(split=artifact, dataset_uri=str(data), store_uri=store, **values)
        return outputs, artifact

    first, artifact = step()
    assert first.split_uri.startswith(f"{store}/splits/") and storage.read_manifest(first.split_uri)
    assert "weights" not in first.params and "data" not in first.params  # the dataset travels as dataset_uri
    assert not {"model_name", "promotion_metric", "promotion_margin"} & set(first.params)
    assert artifact.metadata["run_id"] == first.run_id and artifact.metadata["uri"] == first.split_uri
    assert artifact.metadata["reused"] is False and {"train", "val", "test"} <= set(artifact.metadata["counts"])
    assert artifact.read_json()["split_uri"] == first.split_uri

    again, artifact = step()
    assert again == first and artifact.metadata["reused"] is True
    # Promotion settings steer promotion, not training: same run.
    assert step(promotion_margin=0.02)[0].run_id == first.run_id
    # A parameter, the images, or a changed data file: another run.
    assert step(seed=4)[0].run_id != first.run_id
    assert step(code_version="images v2")[0].run_id != first.run_id
    image = next(data.rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")
    assert step()[0].run_id != first.run_id


def test_split_step_refuses_a_bad_promotion_rule_before_splitting(tiny_dataset: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(ConfigError, match=r"promotion.metric"):
        split_step.run_step(
            split=FakeArtifact(tmp_path / "split.json"), dataset_uri=str(tiny_dataset), store_uri=str(store),
            code_version="v", **{**SPLIT_VALUES, "promotion_metric": "auc"},
        )
    assert not (store / "splits").exists()


# --- trainers, evaluator, promoter ------------------------------------------------------------


TRAINER_RESULT = {
    "run_uri": "s3://m/runs/r/baseline_trainer", "best_uri": "s3://m/runs/r/baseline_trainer/best_auc.pt",
    "best_sha256": "a" * 64, "checkpoints": {}, "epochs_run": 3, "stopped_early": True,
    "metrics": {"auc": 0.7, "pr_auc": 0.2, "pf1": None, "loss": 0.5},
}


def test_trainer_artifacts_carry_the_best_checkpoint_and_its_metrics(tmp_path: Path) -> None:
    model, metrics = FakeArtifact(tmp_path / "model"), FakeArtifact(tmp_path / "metrics")
    record_trainer_artifacts(TRAINER_RESULT, model, metrics)
    assert model.metadata == {
        "uri": TRAINER_RESULT["best_uri"], "sha256": "a" * 64, "metrics": TRAINER_RESULT["metrics"],
        "epochs_run": 3, "stopped_early": True,
    }
    assert model.read_json() == TRAINER_RESULT
    assert metrics.metrics == {"val.auc": 0.7, "val.pr_auc": 0.2, "val.loss": 0.5}  # undefined pF1 left out


def test_log_numbers_flattens_and_keeps_numbers_only(tmp_path: Path) -> None:
    metrics = FakeArtifact(tmp_path / "m")
    log_numbers(metrics, {"val": {"image": {"auc": 0.5, "n": 10, "loss": None, "flag": True, "name": "x"}}})
    assert metrics.metrics == {"val.image.auc": 0.5, "val.image.n": 10.0}


EVALUATION = {
    "out_uri": "s3://m/runs/r/evaluator", "best_uri": "s3://m/runs/r/unfreeze_trainer/best_auc.pt",
    "best_sha256": "b" * 64, "best_name": "unfreeze_trainer/best_auc.pt", "threshold": 0.3,
    "metrics": {"val": {"image": {"auc": 0.6}, "breast": {"auc": 0.65}}, "test": {"image": {}, "breast": {"auc": 0.7}}},
    "report_uri": "s3://m/runs/r/evaluator/report.html",
    "roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "thresholds": [1.0, 0.0]},
    "confusion_matrix": {"labels": ["no cancer", "cancer"], "matrix": [[5, 1], [0, 2]]},
}


def test_evaluator_fills_classification_metrics_and_the_best_model(tmp_path: Path) -> None:
    classification = FakeArtifact(tmp_path / "c")
    log_classification(classification, EVALUATION)
    assert classification.roc == ([0.0, 1.0], [0.0, 1.0], [1.0, 0.0])
    assert classification.confusion == (["no cancer", "cancer"], [[5, 1], [0, 2]])
    one_class = FakeArtifact(tmp_path / "c1")
    log_classification(one_class, {**EVALUATION, "roc": {"fpr": [], "tpr": [], "thresholds": []}})
    assert one_class.roc is None and one_class.confusion is not None

    best = FakeArtifact(tmp_path / "best")
    decision = {"promote": True, "reason": "no production model yet"}
    record_best(best, EVALUATION, decision, "run-1")
    assert best.metadata["uri"] == EVALUATION["best_uri"] and best.metadata["name"] == EVALUATION["best_name"]
    assert best.metadata["run_id"] == "run-1" and best.metadata["decision"] == decision
    assert best.metadata["evaluation_uri"] == EVALUATION["out_uri"]
    assert best.read_json() == {**EVALUATION, "decision": decision}


def test_unfreeze_step_refuses_a_replaced_baseline_checkpoint(tmp_path: Path) -> None:
    uri = str(tmp_path / "store" / "best_auc.pt")
    info = storage.put_bytes(b"weights", uri)
    assert verify_init({"uri": uri, "sha256": info.sha256}) == uri
    storage.put_bytes(b"other weights", uri)
    with pytest.raises(IntegrityError, match="is not the baseline's"):
        verify_init({"uri": uri, "sha256": info.sha256})


def _strong_first_verdict() -> dict:
    """The evaluator's verdict (``mammo.promotion.decide``) for a clearly good first model."""
    import numpy as np
    import pandas as pd

    from mammo.promotion import PromotionRule, decide
    from mammo.stats import BootstrapSettings

    labels = (np.arange(200) % 10 == 0).astype(int)
    scores = 3 * labels + np.random.default_rng(0).normal(size=200)
    frame = pd.DataFrame({"breast_id": np.arange(200), "patient_id": np.arange(200) // 2, "label": labels,
                          "prob": 1 / (1 + np.exp(-scores))})
    return decide(PromotionRule(), frame, 0.5, BootstrapSettings(200, 0))


def test_promoter_step_promotes_and_records_provenance(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    candidate_uri = storage.join(store, "runs", "r", "unfreeze_trainer", "best_auc.pt")
    info = storage.put_bytes(b"weights", candidate_uri)
    candidate = FakeArtifact(tmp_path / "best", {
        "uri": candidate_uri, "sha256": info.sha256, "metrics": EVALUATION["metrics"], "run_id": "r",
        "name": "unfreeze_trainer/best_auc.pt", "threshold": 0.3, "report_uri": EVALUATION["report_uri"],
        "decision": _strong_first_verdict(),
    })
    production = FakeArtifact(tmp_path / "production")
    result = promoter_step.run_step(
        store_uri=store, model_name="mammo", promotion_metric="test.breast.auc", promotion_margin=0.005,
        dataset_fingerprint="f" * 16, candidate=candidate, production=production,
    )
    assert result["promoted"] and production.metadata == result and production.read_json() == result
    manifest = storage.read_manifest(storage.production_model_uri(store, "mammo"))
    assert manifest.metadata["run_id"] == "r" and manifest.metadata["dataset_fingerprint"] == "f" * 16
    # A candidate without the evaluator's verdict is never promoted by the step.
    bare = FakeArtifact(tmp_path / "bare", {**candidate.metadata, "decision": None})
    refused = promoter_step.run_step(
        store_uri=store, model_name="mammo", promotion_metric="test.breast.auc", promotion_margin=0.005,
        dataset_fingerprint="f" * 16, candidate=bare, production=FakeArtifact(tmp_path / "production2"),
    )
    assert not refused["promoted"] and refused["reason"] == "the evaluator recorded no promotion verdict"
    # The step's output names production's version after the step and the one before it.
    assert (production.metadata["version"], production.metadata["previous_version"]) == ("v1", None)
    assert production.metadata["version_sha256"] == info.sha256
    assert (refused["version"], refused["previous_version"]) == ("v1", "v1")


def test_write_artifact_json(tmp_path: Path) -> None:
    artifact = FakeArtifact(tmp_path / "a.json")
    write_artifact_json(artifact, {"b": [1, 2]})
    assert artifact.read_json() == {"b": [1, 2]}


@pytest.mark.slow
def test_a_trainer_step_with_two_processes_runs_torchrun_and_records_what_rank_0_published(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer_gpus > 1 on one node: the step starts the component as torchrun processes (gloo
    on this CPU machine); the main process publishes, and the step's Model comes from that."""
    from mammo_components.baseline_trainer.step import run_step as baseline_step

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))
    store = str(tmp_path / "store")
    outputs = split_step.run_step(
        split=FakeArtifact(tmp_path / "split.json"), dataset_uri=str(tiny_dataset), store_uri=store,
        **{**SPLIT_VALUES, "code_version": "v1", "image_size": 32, "batch_size": 8, "workers": 0,
           "device": "cpu", "baseline_epochs": 1, "warmup_epochs": 0, "backbone": "tinynet"},
    )
    model, metrics = FakeArtifact(tmp_path / "model"), FakeArtifact(tmp_path / "metrics")
    result = baseline_step(
        dataset_uri=str(tiny_dataset), split_uri=outputs.split_uri, store_uri=store, run_id=outputs.run_id,
        params=outputs.params, model=model, metrics=metrics, processes=2,
    )
    assert result["world_size"] == 2 and result["epochs_run"] == 1
    assert model.metadata["uri"] == result["best_uri"] and storage.stat(result["best_uri"]).sha256 == result["best_sha256"]
    published = storage.read_manifest(storage.run_uri(store, outputs.run_id, "baseline_trainer"))
    assert "result.json" in published.objects
