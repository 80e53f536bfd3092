"""Plots (ROC, PR, calibration) and the self-contained HTML report of an evaluation."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from mammo import __version__  # noqa: E402
from mammo.engine.checkpoint import library_versions  # noqa: E402
from mammo.metrics import format_metric  # noqa: E402
from mammo.storage.atomic import atomic_path, write_text_atomic  # noqa: E402

SPLIT_COLOURS = {"val": "tab:blue", "test": "tab:orange"}


def _curves(images: pd.DataFrame, breasts: pd.DataFrame):
    """(split, level, labels, probs) for every split/level with both classes present."""
    for level, frame, style in (("breast", breasts, "-"), ("image", images, "--")):
        for split in ("val", "test"):
            part = frame[frame["split"] == split]
            if part["label"].nunique() == 2:
                yield split, level, style, part["label"].to_numpy(), part["prob"].to_numpy()


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_plots(out: Path, images: pd.DataFrame, breasts: pd.DataFrame) -> dict[str, Path]:
    """ROC, precision-recall and calibration plots of the best candidate, val and test."""
    paths = {name: out / f"{name}.png" for name in ("roc", "pr", "calibration")}

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for split, level, style, y, p in _curves(images, breasts):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, style, color=SPLIT_COLOURS[split], label=f"{split} {level}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, paths["roc"])

    fig, ax = plt.subplots(figsize=(5, 5))
    for split, level, style, y, p in _curves(images, breasts):
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, style, color=SPLIT_COLOURS[split], label=f"{split} {level} (prev {y.mean():.3f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, paths["pr"])

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for split, level, style, y, p in _curves(images, breasts):
        if level != "breast":
            continue
        observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, "o-", color=SPLIT_COLOURS[split], label=f"{split} breast")
    ax.set(xlabel="mean predicted probability", ylabel="observed cancer rate", title="Calibration (breast level)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, paths["calibration"])
    return paths


def write_report(path: Path, metrics: dict[str, Any], split_summary: dict[str, Any], plots: dict[str, Path]) -> None:
    """A single HTML file (plots inlined) for an engineer reviewing a model with clinicians."""
    env = Environment(loader=PackageLoader("mammo", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["num"] = lambda value, digits=3: format_metric(value, digits)
    images = {name: base64.b64encode(p.read_bytes()).decode("ascii") for name, p in plots.items()}
    html = env.get_template("report.html").render(
        metrics=metrics,
        split=split_summary,
        plots=images,
        version=__version__,
        versions=library_versions(),
    )
    write_text_atomic(path, html)
