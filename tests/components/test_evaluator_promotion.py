"""The evaluator decides promotion: the production model is re-evaluated on the same splits
beside the candidates and compared by the promotion rule; the KFP step fills the Metrics with
the intervals and the promotion figures and the best Model with the verdict. Untrained
networks on the tiny dataset (the point is the plumbing; the statistics have their own tests)."""

from __future__ import annotations

import json
from pathlib import Path

from mammo import storage
from mammo_components.evaluator import entrypoint as evaluator
from mammo_components.evaluator.step import run_step
from mammo_components.split_builder import entrypoint as split_builder
from model_support import fake_checkpoint, publish_production
from step_fakes import FakeArtifact

PARAMS = {"image_size": 32, "batch_size": 64, "workers": 0, "device": "cpu", "val_frac": 0.3, "test_frac": 0.3,
          "promotion_min_cancers": 0,  # the tiny dataset's test split has 4 cancers
          "evaluate_set": ["stats.resamples=200", "stats.subgroup_resamples=50"]}


def staged(tiny_dataset: Path, tmp_path: Path) -> tuple[str, str, list[str]]:
    """(store, split URI, two candidate checkpoint URIs published as trainers publish them)."""
    store = str(tmp_path / "store")
    split = split_builder.run(dataset_uri=str(tiny_dataset), store_uri=store, params=PARAMS,
                              workdir=str(tmp_path / "split-pod"))
    uris = []
    for i, trainer in enumerate(("baseline_trainer", "unfreeze_trainer")):
        run_uri = storage.join(store, "runs", "r1", trainer)
        storage.publish({"best_auc.pt": fake_checkpoint(tmp_path / f"{trainer}.pt", seed=i)}, run_uri)
        uris.append(storage.join(run_uri, "best_auc.pt"))
    return store, split["split_uri"], uris


def test_evaluator_re_evaluates_production_and_decides(tiny_dataset: Path, tmp_path: Path) -> None:
    store, split_uri, uris = staged(tiny_dataset, tmp_path)
    production = storage.production_model_uri(store, "m")
    digest = publish_production(production, fake_checkpoint(tmp_path / "prod.pt", seed=7), threshold=0.5, work=tmp_path)
    result = evaluator.run(
        dataset_uri=str(tiny_dataset), split_uri=split_uri, checkpoint_uris=uris, params=PARAMS,
        out_uri=storage.join(store, "runs", "r1", "evaluator"), production_uri=production,
        workdir=str(tmp_path / "eval-pod"),
    )
    decision = result["decision"]
    assert decision["rule"] == "paired_bootstrap" and decision["production_sha256"] == digest
    assert decision["production"] is not None and decision["difference_ci"]["low"] is not None
    assert isinstance(decision["promote"], bool) and decision["reason"].startswith("test.breast.auc: candidate")
    assert result["production"]["sha256"] == digest and result["bootstrap"]["resamples"] == 200
    assert result["metrics"]["test"]["breast"]["ci"]["auc"]["low"] is not None
    local = Path(storage.local_path(result["out_uri"]))
    metrics = json.loads((local / "metrics.json").read_text())
    assert metrics["production"]["name"] == "production" and metrics["promotion"] == decision
    assert {c["name"] for c in metrics["candidates"]} == {"baseline_trainer/best_auc.pt", "unfreeze_trainer/best_auc.pt"}
    breasts = (local / "predictions_breast.csv").read_text()
    assert ",production" in breasts and "site_id" in breasts.splitlines()[0]
    html = (local / "report.html").read_text()
    assert "Promotion decision" in html and "re-evaluated on this split" in html and "run id" in html


def test_evaluator_without_production_or_with_a_broken_one(tiny_dataset: Path, tmp_path: Path) -> None:
    store, split_uri, uris = staged(tiny_dataset, tmp_path)
    production = storage.production_model_uri(store, "m")
    common = {"dataset_uri": str(tiny_dataset), "split_uri": split_uri, "checkpoint_uris": uris[:1],
              "workdir": str(tmp_path / "eval-pod"), "production_uri": production}
    first = evaluator.run(**common, params={**PARAMS, "promotion_min": 0.99},
                          out_uri=storage.join(store, "runs", "r1", "evaluator"))
    assert not first["decision"]["promote"] and first["production"] is None
    assert first["decision"]["reason"].startswith("no production model yet") and "not above the floor" in first["decision"]["reason"]

    digest = publish_production(production, fake_checkpoint(tmp_path / "prod.pt", seed=7), threshold=0.5, work=tmp_path)
    Path(storage.local_path(storage.join(production, f"model-{digest[:12]}.pt"))).write_bytes(b"damaged")
    broken = evaluator.run(**common, params=PARAMS, out_uri=storage.join(store, "runs", "r2", "evaluator"))
    assert not broken["decision"]["promote"] and "could not be re-evaluated" in broken["decision"]["reason"]
    assert "error" in broken["production"]


def test_step_logs_intervals_and_promotion_figures(tiny_dataset: Path, tmp_path: Path) -> None:
    store, split_uri, uris = staged(tiny_dataset, tmp_path)
    arts = {name: FakeArtifact(tmp_path / name) for name in ("best", "metrics", "classification", "report")}
    promote = run_step(
        dataset_uri=str(tiny_dataset), split_uri=split_uri, store_uri=store, run_id="r1", params=PARAMS,
        model_name="m", promotion_metric="test.breast.auc", promotion_margin=0.005, promotion_rule="paired_bootstrap",
        promotion_min=-1.0, promotion_min_cancers=0, baseline=FakeArtifact(tmp_path / "b", {"uri": uris[0]}),
        unfreeze=FakeArtifact(tmp_path / "u", {"uri": uris[1]}), **arts,
    )
    assert promote is True  # nothing in production, no floor
    logged = arts["metrics"].metrics
    assert {"test.breast.auc", "test.breast.ci.auc.low", "test.breast.ci.auc.high", "promotion.promote",
            "promotion.candidate_low"} <= set(logged)
    assert logged["promotion.promote"] == 1.0
    best = arts["best"].metadata
    assert best["decision"]["promote"] and best["decision"]["rule"] == "paired_bootstrap"
    assert best["bootstrap"]["resamples"] == 200 and isinstance(best["warnings"], list)
