"""Plots and the self-contained HTML report of an evaluation.

Curves are drawn with scikit-learn's displays: ROC (``RocCurveDisplay``, chance diagonal, the
operating point marked), precision-recall (``PrecisionRecallDisplay``, step-wise as average
precision integrates it, one chance level: the test breasts' prevalence, operating point
marked) and calibration (``CalibrationDisplay`` with the bins of ``mammo.stats.calibration``,
each bin's count and the observed rate's interval, and a histogram of the predictions below;
scikit-learn's "(Positive class: 1)" axis labels replaced). The ROC and PR legends sit below
the axes, never over the curves. Training curves come from
the candidates' histories (train and validation loss, validation AUC, learning rate per epoch;
warm-up epochs shaded, the start of gradual unfreezing marked).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from mammo import __version__, metric_registry  # noqa: E402
from mammo.engine.checkpoint import library_versions  # noqa: E402
from mammo.metrics import format_metric  # noqa: E402
from mammo.storage.atomic import atomic_path, write_text_atomic  # noqa: E402

SPLIT_COLOURS = {"val": "tab:blue", "test": "tab:orange"}
LEVEL_STYLES = {"breast": "-", "image": "--"}
#: Inches; at DPI these are about 770 x 660 pixels, legible at half the report's width.
FIGSIZE = (7.0, 6.0)
DPI = 110
PLOT_NAMES = ("roc", "pr", "calibration", "training")


def _curves(images: pd.DataFrame, breasts: pd.DataFrame):
    """(split, level, style, labels, probs) for every split/level with both classes present;
    test first (the figures that count), breast before image."""
    for split in ("test", "val"):
        for level, frame in (("breast", breasts), ("image", images)):
            part = frame[frame["split"] == split]
            if part["label"].nunique() == 2:
                yield split, level, LEVEL_STYLES[level], part["label"].to_numpy(), part["prob"].to_numpy()


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _no_data(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}: a split lacks one of the classes", ha="center", va="center", transform=ax.transAxes)


def _operating_point(metrics: dict[str, Any]) -> tuple[float, float, float] | None:
    """(1 - specificity, sensitivity, precision) of the test split at breast level, at the threshold."""
    m = (metrics.get("test") or {}).get("breast") or {}
    if m.get("sensitivity") is None or m.get("specificity") is None:
        return None
    return 1 - m["specificity"], m["sensitivity"], m.get("precision")


def _legend_below(ax: plt.Axes) -> None:
    """The legend under the axes (outside them: it cannot cover a curve)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=9, ncols=2, frameon=False)


def roc_figure(images: pd.DataFrame, breasts: pd.DataFrame, metrics: dict[str, Any]) -> plt.Figure:
    """The ROC plot (``write_plots`` saves it as roc.png)."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    drawn = False
    for split, level, style, y, p in _curves(images, breasts):
        RocCurveDisplay.from_predictions(
            y, p, name=f"{split} {level}", ax=ax, plot_chance_level=not drawn,
            curve_kwargs={"color": SPLIT_COLOURS[split], "linestyle": style},
        )
        drawn = True
    point = _operating_point(metrics)
    if drawn and point is not None:
        ax.plot(point[0], point[1], "o", color="black", ms=8, zorder=5,
                label=f"operating point, test breast (threshold {format_metric(metrics.get('threshold'), 3)})")
    if not drawn:
        _no_data(ax, "ROC curve")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title="ROC (solid: breast level, dashed: image level)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    if ax.get_legend_handles_labels()[0]:
        _legend_below(ax)
    ax.grid(alpha=0.3)
    return fig


def pr_figure(images: pd.DataFrame, breasts: pd.DataFrame, metrics: dict[str, Any]) -> plt.Figure:
    """The precision-recall plot (pr.png): one chance level, the test breasts' prevalence (the
    first curve drawn; the val breasts' when test lacks a class)."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    drawn = False
    for split, level, style, y, p in _curves(images, breasts):
        PrecisionRecallDisplay.from_predictions(
            y, p, name=f"{split} {level}", ax=ax, plot_chance_level=not drawn,
            curve_kwargs={"color": SPLIT_COLOURS[split], "linestyle": style},
            chance_level_kw={"color": SPLIT_COLOURS[split], "linestyle": ":", "lw": 1},
        )
        drawn = True
    point = _operating_point(metrics)
    if drawn and point is not None and point[2] is not None:
        ax.plot(point[1], point[2], "o", color="black", ms=8, zorder=5, label="operating point, test breast")
    if not drawn:
        _no_data(ax, "precision-recall curve")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title="Precision-recall, step-wise (dotted: chance = prevalence)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    if ax.get_legend_handles_labels()[0]:
        _legend_below(ax)
    ax.grid(alpha=0.3)
    return fig


def calibration_figure(breasts: pd.DataFrame, metrics: dict[str, Any]) -> plt.Figure:
    """The reliability diagram of the test breasts over a histogram of their predictions
    (calibration.png)."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(FIGSIZE[0], FIGSIZE[1] * 1.25), height_ratios=(3, 1), sharex=True)
    test = breasts[breasts["split"] == "test"]
    cal = ((metrics.get("test") or {}).get("breast") or {}).get("calibration") or {}
    bins = cal.get("bins") or []
    if len(test) and bins:
        CalibrationDisplay.from_predictions(
            test["label"].to_numpy(), np.clip(test["prob"].to_numpy(), 0, 1), n_bins=cal.get("bins_used") or len(bins),
            strategy=cal.get("strategy", "quantile"), ax=ax, name="test breast", color=SPLIT_COLOURS["test"],
        )
        x = np.array([b["predicted"] for b in bins])
        y = np.array([b["observed"] for b in bins])
        low = np.array([b["observed_low"] for b in bins])
        high = np.array([b["observed_high"] for b in bins])
        ax.errorbar(x, y, yerr=[np.maximum(y - low, 0), np.maximum(high - y, 0)], fmt="none", ecolor=SPLIT_COLOURS["test"], alpha=0.5, capsize=3)
        top = float(min(1.0, 1.15 * max(np.clip(test["prob"], 0, 1).max(), max(b["observed"] for b in bins))))
        limit = max(top, 0.05)
        last = -1.0
        for b in bins:  # counts where they do not overprint each other (all are in the report's table)
            if b["predicted"] - last >= 0.06 * limit:
                ax.annotate(f"n={b['count']}", (b["predicted"], b["observed"]), textcoords="offset points",
                            xytext=(4, 6), fontsize=8)
                last = b["predicted"]
        # Readable where the predictions are (with few cancers they crowd near 0): the axes end
        # a little beyond the largest prediction or observed rate instead of at 1.
        hist.hist(np.clip(test["prob"], 0, 1), bins=np.linspace(0, limit, 41), color=SPLIT_COLOURS["test"], alpha=0.7)
        brier, ece = cal.get("brier"), cal.get("ece")
        ax.set_title(f"Calibration, test breast level (Brier {format_metric(brier, 3)}, ECE {format_metric(ece, 3)}; "
                     f"{cal.get('strategy', 'quantile')} bins, 95% intervals)", fontsize=10)
    else:
        _no_data(ax, "calibration")
        limit = 1.0
    pad = 0.01 * limit
    # The shared x axis is labelled under the histogram; scikit-learn's "(Positive class: 1)" labels go.
    ax.set(xlabel="", ylabel="observed cancer rate", xlim=(-pad, limit + pad), ylim=(-pad, limit + pad))
    ax.grid(alpha=0.3)
    hist.set(xlabel="predicted probability", ylabel="breasts")
    return fig


def _training(path: Path, metrics: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> None:
    """Loss, validation AUC and learning rate per epoch; the stages one after another
    (baseline, then unfreezing from the baseline), warm-up shaded, unfreezing steps marked."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for candidate in metrics.get("candidates", []):
        history = histories.get(candidate["name"]) or []
        if len(history) > len(stages.get(candidate["stage"], [])):
            stages[candidate["stage"]] = history
    fig, (loss_ax, auc_ax, lr_ax) = plt.subplots(3, 1, figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1] * 1.3), sharex=True)
    offset, drawn = 0, False
    for stage in sorted(stages, key=lambda s: (s != "baseline", s)):
        history = stages[stage]
        epochs = np.array([offset + int(r["epoch"]) for r in history])
        val = [r.get("val") or {} for r in history]
        loss_ax.plot(epochs, [r.get("train_loss") for r in history], "o-", ms=3, label=f"{stage}: train loss")
        loss_ax.plot(epochs, [(v.get("image") or {}).get("loss") for v in val], "s--", ms=3, label=f"{stage}: val loss")
        auc_ax.plot(epochs, [(v.get("image") or {}).get("auc") for v in val], "o-", ms=3, label=f"{stage}: val image AUC")
        auc_ax.plot(epochs, [(v.get("breast") or {}).get("auc") for v in val], "s--", ms=3, label=f"{stage}: val breast AUC")
        lr_ax.plot(epochs, [r.get("lr") for r in history], "o-", ms=3, label=f"{stage}: learning rate (head)")
        for record, epoch in zip(history, epochs):
            if record.get("phase") == "warmup":
                for axis in (loss_ax, auc_ax, lr_ax):
                    axis.axvspan(epoch - 0.5, epoch + 0.5, color="gold", alpha=0.25, lw=0)
            for block in record.get("unfrozen", []) or []:
                auc_ax.annotate(f"+{block}", (epoch, 0.02), xycoords=("data", "axes fraction"), fontsize=8, rotation=90)
        if stage != "baseline" and len(epochs):
            for axis in (loss_ax, auc_ax, lr_ax):
                axis.axvline(epochs[0] - 0.5, color="grey", ls=":", lw=1)
            auc_ax.annotate("gradual unfreezing starts", (epochs[0] - 0.4, 0.95), xycoords=("data", "axes fraction"), fontsize=8)
        offset = int(epochs.max()) if len(epochs) else offset
        drawn = drawn or bool(len(epochs))
    if not drawn:
        _no_data(auc_ax, "training history")
    loss_ax.set(ylabel="loss", title="Training (shaded: warm-up epochs on the balanced subset)")
    auc_ax.set(ylabel="validation AUC")
    lr_ax.set(ylabel="learning rate", xlabel="epoch (stages one after another)")
    if any(r.get("lr") for h in stages.values() for r in h):
        lr_ax.set_yscale("log")
    for axis in (loss_ax, auc_ax, lr_ax):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8, loc="best")
    _save(fig, path)


def write_plots(
    out: Path, images: pd.DataFrame, breasts: pd.DataFrame, metrics: dict[str, Any] | None = None,
    histories: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Path]:
    """ROC, precision-recall, calibration and training plots of the best candidate (PNG in ``out``)."""
    metrics = metrics or {}
    paths = {name: out / f"{name}.png" for name in PLOT_NAMES}
    _save(roc_figure(images, breasts, metrics), paths["roc"])
    _save(pr_figure(images, breasts, metrics), paths["pr"])
    _save(calibration_figure(breasts, metrics), paths["calibration"])
    _training(paths["training"], metrics, histories or {})
    return paths


def _interval(figure: Any, digits: int = 3) -> str:
    """``[low, high]`` of an interval dict; "n/a (reason)" when it has none and says why;
    else empty text."""
    if not isinstance(figure, dict):
        return ""
    if figure.get("low") is None or figure.get("high") is None:
        return f"n/a ({figure['reason']})" if figure.get("reason") and figure.get("value") is not None else ""
    return f"[{format_metric(figure['low'], digits)}, {format_metric(figure['high'], digits)}]"


def write_report(
    path: Path, metrics: dict[str, Any], split_summary: dict[str, Any], plots: dict[str, Path],
    context: dict[str, Any] | None = None,
) -> None:
    """A single HTML file (plots inlined) for an engineer reviewing a model with clinicians."""
    env = Environment(loader=PackageLoader("mammo", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["num"] = lambda value, digits=3: format_metric(value, digits)
    env.filters["ci"] = _interval
    env.filters["pct"] = lambda value: "n/a" if value is None else f"{100 * value:.0f}%"
    images = {name: base64.b64encode(p.read_bytes()).decode("ascii") for name, p in plots.items()}
    html = env.get_template("report.html").render(
        metrics=metrics,
        split=split_summary,
        plots=images,
        context=context or {},
        registry={  # which metrics go where (mammo.metric_registry)
            "headline": metric_registry.headline(),
            "table": [m for m in metric_registry.metrics() if m.report],
            "subgroups": [m for m in metric_registry.metrics() if m.subgroups],
        },
        version=__version__,
        versions=library_versions(),
    )
    write_text_atomic(path, html)
