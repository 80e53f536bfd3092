"""The model card written beside every promoted version: its figures are metrics.json's, the HTML
page is self-contained, ``mammo models show`` summarises it, and a rollback brings the same card
back. A real evaluation of untrained networks on the tiny dataset (the point is the plumbing)."""

from __future__ import annotations

import json
from pathlib import Path

from mammo import metric_registry, storage
from mammo.model_versions import rollback, show_version
from mammo.production import card_keys, read_records
from mammo_components.evaluator import entrypoint as evaluator
from mammo_components.promoter.entrypoint import run as promote
from mammo_components.split_builder import entrypoint as split_builder
from model_support import fake_checkpoint

PARAMS = {"image_size": 32, "batch_size": 64, "workers": 0, "device": "cpu", "val_frac": 0.3, "test_frac": 0.3,
          "promotion_min_cancers": 0, "promotion_min": -1.0,
          "evaluate_set": ["stats.resamples=200", "stats.subgroup_resamples=50"]}
RULE = {"metric": "test.breast.auc", "margin": 0.005, "rule": "paired_bootstrap", "floor": -1.0, "min_cancers": 0}


def _shown(figure: dict) -> str:
    """How a figure with its interval must appear in the card, from metrics.json's numbers."""
    if figure.get("low") is None or figure.get("high") is None:
        return f"{figure['value']:.3f} (no interval"
    return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def test_the_card_of_a_promoted_version_has_the_figures_of_metrics_json(tiny_dataset: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    split = split_builder.run(dataset_uri=str(tiny_dataset), store_uri=store, params=PARAMS,
                              workdir=str(tmp_path / "split-pod"))
    run_uri = storage.join(store, "runs", "r1", "unfreeze_trainer")
    storage.publish({"best_auc.pt": fake_checkpoint(tmp_path / "c.pt", seed=1)}, run_uri)
    production = storage.production_model_uri(store, "mammo")
    evaluation = evaluator.run(
        dataset_uri=str(tiny_dataset), split_uri=split["split_uri"], checkpoint_uris=[storage.join(run_uri, "best_auc.pt")],
        params=PARAMS, out_uri=storage.join(store, "runs", "r1", "evaluator"), production_uri=production,
        workdir=str(tmp_path / "eval-pod"),
    )
    assert evaluation["decision"]["promote"], evaluation["decision"]["reason"]
    fingerprint = split["split_uri"].rstrip("/").rsplit("/", 1)[1]
    result = promote(
        candidate_uri=evaluation["best_uri"], candidate_sha256=evaluation["best_sha256"],
        candidate_metrics=evaluation["metrics"], store_uri=store, model_name="mammo", verdict=evaluation["decision"],
        provenance={"run_id": "r1", "report_uri": evaluation["report_uri"], "dataset_fingerprint": fingerprint,
                    "threshold": evaluation["threshold"]}, **RULE,
    )
    assert result["promoted"] and "card_error" not in result, result.get("card_error")
    sha = result["sha256"]
    md_key, html_key = card_keys(sha)
    manifest = storage.read_manifest(production)
    assert {md_key, html_key} <= set(manifest.objects)
    markdown = storage.get_bytes(storage.join(production, md_key), sha256=manifest.objects[md_key].sha256).decode()
    page = storage.get_bytes(storage.join(production, html_key), sha256=manifest.objects[html_key].sha256).decode()

    metrics = json.loads(Path(storage.local_path(storage.join(evaluation["out_uri"], "metrics.json"))).read_text())
    card = show_version(store, "mammo")
    facts = json.loads(Path(storage.local_path(card["card"]["facts_uri"])).read_text())
    for split_name in ("val", "test"):
        for level in ("breast", "image"):
            row = metrics[split_name][level]
            for metric in metric_registry.headline():
                figure = facts["performance"][f"{split_name}.{level}"][metric.name]
                interval = row["ci"].get(metric.name) or {}
                assert (figure["value"], figure["low"], figure["high"]) == (
                    row[metric.name], interval.get("low"), interval.get("high")), (split_name, level, metric.name)
                if row[metric.name] is not None:
                    expected = _shown({"value": row[metric.name], **interval})
                    assert expected in markdown and expected in page, (split_name, level, metric.name, expected)
    assert facts["operating_point"]["threshold"] == metrics["threshold"]
    assert facts["operating_point"]["chosen_by"] == metrics["threshold_metric"]
    assert facts["warnings"] == metrics["warnings"]
    assert [(g["column"], g["value"], g["n"], g["cancers"]) for g in facts["subgroups"]] == [
        (g["column"], g["value"], g["n"], g["cancers"]) for g in metrics["test"]["subgroups"]]
    split_counts = json.loads(Path(storage.local_path(storage.join(split["split_uri"], "result.json"))).read_text())["counts"]
    for name, counts in split_counts.items():
        assert {k: facts["data"]["splits"][name][k] for k in counts} == counts
    for name in ("val", "test"):
        assert facts["data"]["splits"][name]["cancer_breasts"] == metrics[name]["breast"]["n_pos"]
    assert facts["data"]["dataset_fingerprint"] == fingerprint
    assert facts["lineage"]["verdict"] == evaluation["decision"]["reason"] and facts["lineage"]["run_id"] == "r1"
    for section in ("Intended use", "Not for", "Training data", "Model and training", "Operating point",
                    "Calibration", "Subgroups (test split)", "Warnings of the evaluation", "Lineage"):
        assert f"## {section}" in markdown and f"<h2>{section}</h2>" in page
    # Self-contained: nothing to fetch, nothing to run.
    assert page.startswith("<!DOCTYPE html>")
    for outside in ("<script", "<link", "src=", "http://", "https://", "@import"):
        assert outside not in page
    # mammo models show summarises it.
    assert card["card"]["markdown_uri"] == storage.join(production, md_key)
    assert any(_shown({"value": metrics["test"]["breast"]["auc"], **metrics["test"]["breast"]["ci"]["auc"]}) in line
               for line in card["card"]["summary"])

    # A second model replaces it (by the plain margin rule); a rollback brings the same card back.
    other = storage.join(store, "runs", "r2", "unfreeze_trainer")
    storage.publish({"best_auc.pt": fake_checkpoint(tmp_path / "d.pt", seed=2)}, other)
    better = {s: {lv: {**evaluation["metrics"][s][lv], "auc": 1.0} for lv in ("image", "breast")} for s in ("val", "test")}
    second = promote(candidate_uri=storage.join(other, "best_auc.pt"), candidate_sha256=storage.stat(storage.join(other, "best_auc.pt")).sha256,
                     candidate_metrics=better, store_uri=store, model_name="mammo", metric="test.breast.auc", margin=0.0)
    assert second["promoted"]
    storage.delete(storage.join(production, md_key))  # as if collected with the model
    rollback(store, "mammo", to="v1")
    restored = storage.read_manifest(production)
    assert restored.metadata["sha256"] == sha and {md_key, html_key} <= set(restored.objects)
    assert storage.get_bytes(storage.join(production, md_key)).decode() == markdown
    assert storage.get_bytes(storage.join(production, html_key)).decode() == page
    assert read_records(store, "mammo")[-1]["kind"] == "rollback"
