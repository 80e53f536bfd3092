"""The evaluation report (``mammo.report`` and its template) rendered from a small real
evaluation: what it says where an interval cannot be estimated."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mammo.config import EvalConfig
from mammo.config_files import load_config
from mammo.evaluate import run_evaluation
from mammo.report import PLOT_NAMES, write_report
from mammo.split import run_split
from model_support import fake_checkpoint

EVAL = {"data.batch_size": 32, "data.workers": 0, "device": "cpu", "stats.resamples": 20, "stats.subgroup_resamples": 0}


@pytest.fixture(scope="module")
def evaluation(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluation folder of an untrained tinynet on the tiny dataset."""
    root = tmp_path_factory.mktemp("report")
    run_split(data=str(tiny_dataset), out=str(root / "split"), val_frac=0.3, test_frac=0.3, seed=1)
    checkpoint = fake_checkpoint(root / "model.pt")
    run_evaluation(load_config(EvalConfig, overrides={
        **EVAL, "data.root": str(tiny_dataset), "split": str(root / "split"), "out": str(root / "eval"),
        "checkpoints": [str(checkpoint)],
    }))
    return root


def _render(root: Path, metrics: dict, out: Path) -> str:
    split = json.loads((root / "split" / "split.json").read_text())
    write_report(out, metrics, split, {name: root / "eval" / f"{name}.png" for name in PLOT_NAMES})
    return out.read_text()


def test_a_delong_interval_that_cannot_be_estimated_says_why(evaluation: Path, tmp_path: Path) -> None:
    metrics = json.loads((evaluation / "eval" / "metrics.json").read_text())
    delong = metrics["test"]["breast"]["delong"]
    assert delong["low"] is not None and delong["reason"] is None  # the tiny split has several cancers
    html = _render(evaluation, metrics, tmp_path / "a.html")
    assert "DeLong's interval for the AUC (clustered by patient):\n[" in html

    one = copy.deepcopy(metrics)
    one["test"]["breast"]["delong"] = {
        "auc": 0.8, "se": None, "low": None, "high": None, "method": "delong-clustered",
        "reason": "one patient with a cancer: DeLong's variance needs at least two of each",
    }
    html = _render(evaluation, one, tmp_path / "b.html")
    assert ("DeLong's interval for the AUC (clustered by patient):\n"
            "n/a (one patient with a cancer: DeLong&#39;s variance needs at least two of each).") in html
    assert "n/a<br><small>(one patient with a cancer: DeLong&#39;s variance needs at least two of each)</small>" in html


# --- the figures ---------------------------------------------------------------------------


def _texts(fig) -> list[str]:
    """Every piece of text of a figure: titles, axis labels, legend entries, annotations."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _figures(evaluation: Path) -> dict:
    import pandas as pd

    from mammo.report import calibration_figure, pr_figure, roc_figure

    metrics = json.loads((evaluation / "eval" / "metrics.json").read_text())
    images = pd.read_csv(evaluation / "eval" / "predictions_image.csv")
    breasts = pd.read_csv(evaluation / "eval" / "predictions_breast.csv")
    assert {"val", "test"} <= set(breasts["split"]) and breasts.groupby("split")["label"].nunique().min() == 2
    return {"roc": roc_figure(images, breasts, metrics), "pr": pr_figure(images, breasts, metrics),
            "calibration": calibration_figure(breasts, metrics)}


def test_legends_sit_outside_the_curves_and_chance_level_is_drawn_once(evaluation: Path) -> None:
    import matplotlib.pyplot as plt

    figures = _figures(evaluation)
    try:
        for name in ("roc", "pr"):
            fig = figures[name]
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            (ax,) = fig.axes
            legend = ax.get_legend()
            labels = [t.get_text() for t in legend.get_texts()]
            assert len(labels) >= 4, labels  # val and test, breast and image, chance, operating point
            # Outside the axes (where the curves are), and not over the axis label either.
            box = legend.get_window_extent(renderer)
            assert not box.overlaps(ax.get_window_extent(renderer)), name
            assert not box.overlaps(ax.xaxis.label.get_window_extent(renderer)), name
            assert sum(label.startswith("Chance level") for label in labels) == 1, labels
            assert sum("Chance level" in text for text in _texts(fig)) == 1
        calibration = figures["calibration"]
        assert not [t for t in _texts(calibration) if "Positive class" in t]
        assert calibration.axes[-1].get_xlabel() == "predicted probability"
    finally:
        for fig in figures.values():
            plt.close(fig)
