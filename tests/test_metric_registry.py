"""Each metric is declared once (``mammo.metric_registry``): a toy metric registered for one test
appears in every place that lists metrics - the figures and their intervals of a real
evaluation, its report, the headline figures, the promotion rule's choices, the command
tables, the local run's summary and the Pushgateway series - with no other line changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mammo import metric_registry
from mammo.metric_registry import Metric, ratio


def _youden(t: metric_registry.AtThreshold) -> np.ndarray:
    """Youden's J = sensitivity + specificity - 1, at the operating threshold."""
    return ratio(t.tp, t.pos) + ratio(t.neg - t.fp, t.neg) - 1


TOY = Metric("youden", "Youden index", "threshold", _youden, headline=True, column="J", subgroups=True,
             pushed="breast")


def test_the_figures_equal_scikit_learn_s_and_their_own_intervals_point_values() -> None:
    """One implementation: binary_metrics' values are the bootstrap's point values, and the
    ranking figures are scikit-learn's."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from mammo.metrics import binary_metrics
    from mammo.stats import BootstrapSettings, bootstrap

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    probs = np.round(rng.random(60), 2)  # ties included
    patients = [str(i // 3) for i in range(60)]
    figures = binary_metrics(labels, probs, threshold=0.4)
    intervals = bootstrap(labels, probs, patients, 0.4, BootstrapSettings(resamples=20))
    assert set(intervals) == set(metric_registry.names())
    for name in metric_registry.names():
        assert figures[name] == pytest.approx(intervals[name]["value"], abs=1e-12), name
    assert figures["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert figures["pr_auc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-12)
    flagged = probs >= 0.4
    assert figures["sensitivity"] == (flagged & (labels == 1)).sum() / (labels == 1).sum()


def test_a_registered_metric_appears_everywhere(tiny_dataset: Path, tmp_path: Path, pushgateway, capsys) -> None:
    from mammo.config import EvalConfig
    from mammo.config_files import load_config
    from mammo.evaluate import run_evaluation
    from mammo.metrics import binary_metrics, headline_keys
    from mammo.promotion import PromotionRule, promotable_metrics
    from mammo.split import run_split
    from mammo.summaries import evaluation_table
    from mammo.telemetry import Telemetry, metric_descriptions
    from mammo_components.promoter.entrypoint import check_rule
    from mammo_components.training_run import pushed_values
    from mammo_pipelines.local_run import print_summary
    from model_support import fake_checkpoint

    assert "youden" not in metric_registry.names()
    with metric_registry.registered(TOY):
        # The figures, with the same code for the value and its interval.
        values = binary_metrics([0, 1, 1, 0, 1], [0.1, 0.8, 0.3, 0.6, 0.9], threshold=0.5)
        assert values["youden"] == pytest.approx(values["sensitivity"] + values["specificity"] - 1)

        # A real evaluation: metrics.json with intervals, subgroups, and the report.
        run_split(data=str(tiny_dataset), out=str(tmp_path / "split"), val_frac=0.25, test_frac=0.25, seed=42)
        config = load_config(EvalConfig, overrides={
            "data.root": str(tiny_dataset), "split": str(tmp_path / "split"), "out": str(tmp_path / "eval"),
            "checkpoints": [str(fake_checkpoint(tmp_path / "model.pt"))], "data.batch_size": 16,
            "data.workers": 0, "device": "cpu", "stats.resamples": 30, "stats.subgroup_resamples": 10,
        })
        evaluation = run_evaluation(config)
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        breast = metrics["test"]["breast"]
        assert breast["youden"] == pytest.approx(breast["sensitivity"] + breast["specificity"] - 1)
        assert set(breast["ci"]["youden"]) >= {"low", "high"}
        assert all("youden" in row for row in metrics["test"]["subgroups"])
        html = (tmp_path / "eval" / "report.html").read_text()
        assert html.count("Youden index") >= 3  # headline card, table of all figures, subgroups

        # Headline figures, the promotion rule's choices, the command's table.
        assert "youden" in headline_keys()
        assert "test.breast.youden" in promotable_metrics()
        PromotionRule(metric="test.breast.youden").check()
        check_rule("test.breast.youden", 0.0)
        summary = evaluation.summary()
        assert "youden" in summary["test"]["breast"]
        assert "J" in evaluation_table(summary).splitlines()[1].split()

        # The local run's summary.
        print_summary({"best": "m", "threshold": 0.5, "metrics": {"val": metrics["val"], "test": metrics["test"]},
                       "promoted": False, "production_uri": "p", "reason": "r", "report_uri": "u",
                       "checkpoints": ["c1", "c2"], "run_id": "r1"}, 1.0)
        assert "J" in capsys.readouterr().out.splitlines()[2].split()

        # The Pushgateway series, at the metric's level.
        assert "mammo_val_youden" in metric_descriptions()
        val = {"image": {"auc": 0.7}, "breast": {"youden": 0.25}}
        assert pushed_values(val)["youden"] == 0.25
        telemetry = Telemetry("baseline", "registry-test")
        assert telemetry.epoch(1, train_loss=0.5, val_loss=0.5, val=pushed_values(val), lr=1e-3,
                               duration_s=1.0, images_per_s=1.0)
        pushed = {s.name: s.value for s in pushgateway.samples(run_id="registry-test")}
        assert pushed["mammo_val_youden"] == 0.25
    assert "youden" not in metric_registry.names() and "test.breast.youden" not in promotable_metrics()
