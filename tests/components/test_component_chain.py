"""The four components chained as the pipeline chains them, sharing nothing but the S3 server:
each step gets only URIs and its own empty working directory, as a separate pod would."""

from __future__ import annotations

import math
from pathlib import Path

from mammo import storage
from mammo_components.baseline_trainer import entrypoint as baseline_trainer
from mammo_components.evaluator import entrypoint as evaluator
from mammo_components.split_builder import entrypoint as split_builder
from mammo_components.unfreeze_trainer import entrypoint as unfreeze_trainer

from component_support import PARAMS, TRAINER_FILES, assert_published
from servers import Pushgateway, S3Env

RUN_ID = "chain-1"
EVALUATOR_FILES = {
    "metrics.json", "predictions_image.csv", "predictions_breast.csv", "roc.png", "pr.png",
    "calibration.png", "training.png", "report.html", "config.yaml", "result.json",
}


def pushed(gateway: Pushgateway, component: str) -> dict[str, float]:
    return {s.name: s.value for s in gateway.samples(job="mammo", component=component, run_id=RUN_ID)}


def assert_trainer_result(result: dict, run_uri: str, epochs: int) -> None:
    manifest = assert_published(run_uri, set(result["checkpoints"]) | TRAINER_FILES)
    assert result["run_uri"] == run_uri
    assert result["best_uri"] == f"{run_uri}/best_auc.pt"
    assert result["best_sha256"] == result["checkpoints"]["best_auc.pt"]["sha256"]
    assert {"best_auc.pt", "best_loss.pt", "best_pr_auc.pt", "best_pf1.pt", "last.pt"} <= set(result["checkpoints"])
    for name, entry in result["checkpoints"].items():
        assert entry["uri"] == f"{run_uri}/{name}"
        assert manifest.objects[name].sha256 == entry["sha256"] == storage.stat(entry["uri"]).sha256
    assert result["epochs_run"] == epochs
    assert set(result["metrics"]) == {"auc", "pr_auc", "pf1", "loss"}
    assert storage.get_json(f"{run_uri}/result.json") == result


def test_chain_of_components_through_s3_only(
    s3_env: S3Env, pushgateway: Pushgateway, synth_data: Path, tmp_path: Path
) -> None:
    dataset_uri = f"{s3_env.uri}/datasets/synth"
    storage.publish(synth_data, dataset_uri)  # with a manifest (the other tests upload without)
    run = f"{s3_env.uri}/runs/{RUN_ID}"

    def pod(name: str) -> str:
        return str(tmp_path / name)

    split = split_builder.run(
        dataset_uri=dataset_uri, store_uri=s3_env.uri, params=PARAMS, workdir=pod("split"), run_id=RUN_ID
    )
    assert split["split_uri"] == f"{s3_env.uri}/splits/{split['dataset_fingerprint']}"
    assert not split["reused"] and split["previous"] is None
    manifest = assert_published(split["split_uri"], {"split.csv", "split.json", "result.json"})
    assert manifest.objects["split.csv"].sha256 == split["split_sha256"]
    assert manifest.metadata["dataset_uri"] == dataset_uri
    assert sum(split["counts"][s]["patients"] for s in ("train", "val", "test")) == 36

    base = baseline_trainer.run(
        dataset_uri=dataset_uri, split_uri=split["split_uri"], out_uri=f"{run}/baseline_trainer",
        params=PARAMS, workdir=pod("baseline"),
    )
    assert_trainer_result(base, f"{run}/baseline_trainer", epochs=1)

    unfrozen = unfreeze_trainer.run(
        dataset_uri=dataset_uri, split_uri=split["split_uri"], init_uri=base["best_uri"],
        out_uri=f"{run}/unfreeze_trainer", params=PARAMS, workdir=pod("unfreeze"),
    )
    assert_trainer_result(unfrozen, f"{run}/unfreeze_trainer", epochs=1)
    assert (unfrozen["init_uri"], unfrozen["init_sha256"]) == (base["best_uri"], base["best_sha256"])

    candidates = [base["best_uri"], unfrozen["best_uri"]]
    evaluation = evaluator.run(
        dataset_uri=dataset_uri, split_uri=split["split_uri"], checkpoint_uris=candidates,
        out_uri=f"{run}/evaluator", params=PARAMS, workdir=pod("evaluator"),
    )
    assert_published(f"{run}/evaluator", EVALUATOR_FILES)
    storage.fetch_from_manifest(f"{run}/evaluator", tmp_path / "check")  # every sha256 verified
    by_uri = {base["best_uri"]: base, unfrozen["best_uri"]: unfrozen}
    assert evaluation["best_sha256"] == by_uri[evaluation["best_uri"]]["best_sha256"]
    assert evaluation["best_name"] in ("baseline_trainer/best_auc.pt", "unfreeze_trainer/best_auc.pt")
    assert [c["uri"] for c in evaluation["candidates"]][0] == evaluation["best_uri"]
    assert evaluation["report_uri"] == f"{run}/evaluator/report.html"
    test_breasts = evaluation["metrics"]["test"]["breast"]
    assert sum(map(sum, evaluation["confusion_matrix"]["matrix"])) == test_breasts["n"]
    roc = evaluation["roc"]
    assert 2 <= len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) <= 200
    assert (roc["fpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 1.0, 1.0)
    assert all(math.isfinite(t) and 0 <= t <= 1 for t in roc["thresholds"])
    assert storage.get_json(f"{run}/evaluator/result.json") == evaluation

    assert pushed(pushgateway, "split_builder")["mammo_step_success"] == 1
    for component in ("baseline_trainer", "unfreeze_trainer"):
        series = pushed(pushgateway, component)
        assert series["mammo_step_success"] == 1
        assert series["mammo_epoch"] == 1
        assert series["mammo_images_per_second"] > 0
        assert series["mammo_val_loss"] > 0 and 0 <= series["mammo_val_auc"] <= 1
    assert pushed(pushgateway, "evaluator")["mammo_step_success"] == 1
