"""Short human-readable tables that commands end with (``--json`` prints the full result).

A split's ``split.json`` lists every warm-up breast id (thousands on RSNA); the table shows the
counts and where the files are.
"""

from __future__ import annotations

from typing import Any

from mammo import metric_registry

SPLIT_ROWS = ("train", "val", "test", "all")


def metric_columns() -> list[tuple[str, str]]:
    """(column title, metric name) of the tables commands print: the registry's ``column``s."""
    return [(m.column or m.name, m.name) for m in metric_registry.columns()]


def cell(value: Any) -> str:
    """A metric as six characters; ``n/a`` for undefined values (None)."""
    return "   n/a" if value is None else f"{value:6.3f}"


def metrics_table(rows: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Lines of a split/level x headline-metric table; ``rows`` are (split, level, metrics)."""
    columns = metric_columns()
    header = f"{'split':<6}{'level':<8}" + "".join(f"{title:>8}" for title, _ in columns)
    lines = [header]
    for split, level, values in rows:
        lines.append(f"{split:<6}{level:<8}" + "".join(f"{cell(values.get(key)):>8}" for _, key in columns))
    return lines


def headline_rows(by_split: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(split, level, metrics) for every split present in ``{"val": {"image": ..., "breast": ...}}``."""
    return [
        (split, level, by_split[split][level])
        for split in ("val", "test")
        if by_split.get(split)
        for level in ("image", "breast")
    ]


def split_table(summary: dict[str, Any], out: str) -> str:
    """Patients, images and cancers per split, the warm-up subset and the files written."""
    lines = [f"{'split':<7}{'patients':>9}{'images':>9}{'cancers':>9}{'prevalence':>12}"]
    for name in SPLIT_ROWS:
        c = summary["splits"][name]
        prevalence = "n/a" if c["prevalence_patient"] is None else f"{c['prevalence_patient']:.4f}"
        lines.append(f"{name:<7}{c['patients']:>9}{c['images']:>9}{c['cancer_patients']:>9}{prevalence:>12}")
    warmup = summary["warmup"]
    lines.append(
        f"warm-up subset: {warmup['positive_breasts']} positive + {warmup['negative_breasts']} negative "
        f"training breasts (ratio {warmup['ratio']})"
    )
    if "previous" in summary:
        p = summary["previous"]
        lines.append(f"previous split: {p['kept_patients']} patients kept, {p['new_patients']} new, {p['dropped_patients']} dropped")
    for name in summary.get("empty_splits", []):
        lines.append(f"warning: split {name} is empty")
    for warning in summary.get("warnings", []):
        lines.append(f"warning: {warning}")
    lines.append(f"dataset fingerprint {summary['dataset_fingerprint']}")
    lines.append(f"written: {out}/split.csv, {out}/split.json")
    return "\n".join(lines)


def training_table(summary: dict[str, Any]) -> str:
    """Epochs run, the best checkpoints and the last validation figures of a training stage."""
    stopped = ", stopped early" if summary["stopped_early"] else ""
    lines = [f"{summary['stage']}: {summary['epochs_run']} epoch(s){stopped}"]
    if summary.get("last_val"):
        lines += metrics_table(headline_rows({"val": summary["last_val"]}))
    best = summary.get("best") or {}
    if best:
        lines.append("best on val: " + ", ".join(f"{key} {cell(value).strip()}" for key, value in sorted(best.items())))
    lines.append(f"checkpoints in {summary['out']}: {', '.join(summary['checkpoints'])}")
    return "\n".join(lines)


def evaluation_table(summary: dict[str, Any]) -> str:
    """The best candidate, its threshold and its val/test figures, and the files written."""
    lines = [f"best candidate: {summary['best']} (threshold {cell(summary['threshold']).strip()})"]
    lines += metrics_table(headline_rows(summary))
    boot = summary.get("bootstrap") or {}
    for split in ("val", "test"):
        interval = ((summary.get(split) or {}).get("breast", {}).get("ci") or {}).get("auc") or {}
        if interval.get("low") is not None:
            lines.append(
                f"{split} breast AUC 95% interval [{interval['low']:.3f}, {interval['high']:.3f}] "
                f"({boot.get('resamples')} bootstrap resamples of patients, seed {boot.get('seed')})"
            )
    lines += [f"warning: {w}" for w in summary.get("warnings") or []]
    if summary.get("promotion"):
        lines.append(f"promotion: {'promote' if summary['promotion']['promote'] else 'do not promote'} "
                     f"({summary['promotion']['reason']})")
    if len(summary.get("ranking", [])) > 1:
        lines.append("ranking on val: " + ", ".join(item["name"] for item in summary["ranking"]))
    lines.append(f"report: {summary['out']}/report.html (metrics.json, predictions_*.csv beside it)")
    return "\n".join(lines)
