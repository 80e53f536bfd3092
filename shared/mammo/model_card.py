"""A model card for every promoted version (Mitchell et al., Model Cards for Model Reporting,
2019; the FDA / Health Canada / MHRA transparency principles for ML-enabled medical devices,
2024), written beside it in ``production/`` as ``model-<sha12>.card.md`` and a self-contained
``model-<sha12>.card.html`` (no scripts, styles inline, nothing fetched).

``gather`` collects the card's facts from what the run left in the store - the evaluation's
``metrics.json`` and ``config.yaml`` (beside its report), the trainer's ``config.yaml`` beside
the checkpoint, the split's ``result.json`` (``splits/<dataset fingerprint>/``) - and from the
promotion decision; every figure is copied from ``metrics.json`` as it is, never recomputed.
What the run did not record is said to be not recorded. ``render_markdown`` / ``render_html``
turn the facts into the two pages; ``publish_card`` writes them and returns their manifest
entries; ``summary`` is what ``mammo models show`` prints.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
from datetime import datetime, timezone
from typing import Any

import yaml

from mammo import __version__, metric_registry
from mammo.errors import ArtifactNotFoundError, MammoError
from mammo.production import card_data_uri, card_keys
from mammo.storage import ManifestEntry, get_bytes, get_json, join, put_bytes, put_json
from mammo.storage.layout import split_uri

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
LEVELS = ("breast", "image")

INTENDED_USE = (
    "Research and engineering decision support: a probability of cancer per breast (and per image) "
    "for 2D full-field digital screening mammograms, with a flag at the operating threshold below, "
    "for triage studies, reader-assistance research and monitoring of the retraining pipeline."
)
NOT_FOR = (
    "A diagnosis, or a decision about a patient without a qualified radiologist's reading.",
    "Populations, sites, machines or protocols unlike the training data (see Training data): "
    "performance there is unknown.",
    "Diagnostic (symptomatic) mammography, tomosynthesis, ultrasound or MRI.",
    "Use as a cleared or approved medical device: this card documents a research model.",
)


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def _optional_json(uri: str | None) -> Any:
    if not uri:
        return None
    try:
        return get_json(uri)
    except ArtifactNotFoundError:
        return None


def _optional_yaml(uri: str | None) -> Any:
    if not uri:
        return None
    try:
        return yaml.safe_load(get_bytes(uri).decode())
    except (ArtifactNotFoundError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _figure(row: dict[str, Any], name: str) -> dict[str, Any]:
    ci = (row.get("ci") or {}).get(name) or {}
    return {"value": row.get(name), "low": ci.get("low"), "high": ci.get("high"), "reason": ci.get("reason")}


def performance(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"<split>.<level>": {metric: {value, low, high, reason}}}``: the headline figures of
    ``metrics.json`` with their intervals, copied."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in SPLITS:
        for level in LEVELS:
            row = (metrics.get(split) or {}).get(level)
            if isinstance(row, dict):
                out[f"{split}.{level}"] = {m.name: _figure(row, m.name) for m in metric_registry.headline()}
    return out


def _split_counts(counts: dict[str, Any], metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Patients, images, breasts and cancers per split: the split builder's counts, with the
    evaluated splits' cancer breasts (and, without the split's record, their sizes) from
    ``metrics.json``."""
    out = {name: dict(row) for name, row in counts.items() if isinstance(row, dict)}
    for split in SPLITS:
        breast, image = ((metrics.get(split) or {}).get(level) or {} for level in ("breast", "image"))
        if breast or image:
            row = out.setdefault(split, {})
            row.setdefault("breasts", breast.get("n"))
            row.setdefault("images", image.get("n"))
            row["cancer_breasts"] = breast.get("n_pos")
    return out


def gather(
    *, model_name: str, version: str | None, sha256: str, store_uri: str, candidate_uri: str,
    provenance: dict[str, Any], decision: dict[str, Any], replaced: dict[str, Any] | None,
    candidate_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card's facts (JSON-able). ``decision``: the promoter's (metric, rule, reason, ...);
    ``replaced``: what the new manifest records of the model it replaced; ``candidate_metrics``:
    the headline figures the promoter was given, used only when no ``metrics.json`` is found."""
    evaluation = provenance.get("evaluation_uri") or (_parent(provenance["report_uri"]) if provenance.get("report_uri") else None)
    metrics = _optional_json(join(evaluation, "metrics.json") if evaluation else None) or {}
    eval_config = _optional_yaml(join(evaluation, "config.yaml") if evaluation else None) or {}
    train_config = _optional_yaml(join(_parent(candidate_uri), "config.yaml")) or {}
    fingerprint = provenance.get("dataset_fingerprint")
    split = _optional_json(join(split_uri(store_uri, fingerprint), "result.json") if fingerprint else None) or {}
    best = next((c for c in metrics.get("candidates") or [] if c.get("name") == metrics.get("best")), {})
    data = train_config.get("data") or eval_config.get("data") or {}
    model = train_config.get("model") or {}
    test_breast = (metrics.get("test") or {}).get("breast") or {}
    subgroups = [
        {"column": g.get("column"), "value": g.get("value"), "level": g.get("level"), "n": g.get("n"),
         "patients": g.get("patients"), "cancers": g.get("cancers"),
         **{m: {k: (g.get(m) or {}).get(k) for k in ("value", "low", "high", "reason")}
            for m in ("auc", "sensitivity", "specificity") if isinstance(g.get(m), dict)}}
        for g in (metrics.get("test") or {}).get("subgroups") or []
    ]
    machines = sorted({str(g["value"]) for g in subgroups if g["column"] in ("machine_id", "manufacturer")})
    promotion = metrics.get("promotion") or {}
    return {
        "model_name": model_name, "version": version, "sha256": sha256,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE, "not_for": list(NOT_FOR),
        "data": {
            "dataset_fingerprint": fingerprint, "split_fingerprint": metrics.get("split_fingerprint"),
            "splits": _split_counts(split.get("counts") or {}, metrics),
            "input_size": best.get("image_size") or data.get("image_size"),
            "preprocessing": {k: data.get(k) for k in ("image_size", "breast_aggregation", "max_pixels", "bad_images")
                              if k in data},
            "machines_seen": machines,
        },
        "model": {
            "backbone": best.get("backbone") or model.get("backbone"), "weights": model.get("weights"),
            "in_channels": model.get("in_channels"), "stage": best.get("stage"), "epoch": best.get("epoch"),
            "checkpoint": best.get("name") or metrics.get("best"),
            "training": {k: train_config.get(k) for k in ("epochs", "warmup_epochs", "loss", "optimizer", "augment",
                                                          "amp_dtype", "seed") if k in train_config},
            "batch_size": data.get("batch_size"), "balanced_sampler": data.get("balanced_sampler"),
        },
        "performance": performance(metrics or candidate_metrics or {}),
        "operating_point": {
            "threshold": metrics.get("threshold"), "chosen_by": metrics.get("threshold_metric"),
            # The evaluation's own account (rules such as specificity:0.95 set a target, not a maximum).
            "how": (metrics.get("threshold_choice") or {}).get("how") or (
                f"chosen on the val split by {metrics.get('threshold_metric')}, applied unchanged to test"
                if metrics.get("threshold_metric") else None),
            "test_operating_points": test_breast.get("operating_points") or [],
        },
        "calibration": {f"{s}.breast": {k: ((metrics.get(s) or {}).get("breast", {}).get("calibration") or {}).get(k)
                                        for k in ("brier", "ece", "bins_used", "strategy", "n")}
                        for s in SPLITS if metrics.get(s)},
        "subgroups": subgroups,
        "warnings": list(metrics.get("warnings") or []),
        "intervals": metrics.get("bootstrap") or {},
        "lineage": {
            "run_id": provenance.get("run_id"), "evaluation_uri": evaluation, "candidate_uri": candidate_uri,
            "report_uri": provenance.get("report_uri"), "code_version": f"mammo {__version__}",
            "image_digests": provenance.get("image_digests") or "not recorded (the run passes none to the promoter)",
            "rule": {k: decision.get(k) for k in ("rule", "metric", "margin", "floor", "min_cancers")},
            "verdict": decision.get("reason"), "promotion_figures": {
                k: promotion.get(k) for k in ("candidate", "candidate_ci", "production", "production_ci", "difference",
                                              "difference_ci", "n_patients", "cancers") if k in promotion},
            "replaced": replaced,
        },
        "sources": {"metrics_json": join(evaluation, "metrics.json") if evaluation else None,
                    "metrics_found": bool(metrics),
                    "figures_from": "metrics.json" if metrics else "the promoter's candidate metrics (no metrics.json found)"},
    }


# Rendering ------------------------------------------------------------------------------------------


def fmt(figure: dict[str, Any] | None) -> str:
    """``0.812 [0.750, 0.866]``, ``0.812 (no interval: reason)`` or ``n/a``."""
    if not figure or figure.get("value") is None:
        return "n/a"
    text = f"{figure['value']:.3f}"
    if figure.get("low") is not None and figure.get("high") is not None:
        return f"{text} [{figure['low']:.3f}, {figure['high']:.3f}]"
    return f"{text} (no interval{': ' + str(figure['reason']) if figure.get('reason') else ''})"


def _value(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "not recorded"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in sorted(value.items()))  # as kept in cards/*.json
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    return str(value)


def _ordered(mapping: dict[str, Any], first: list[str]) -> list[str]:
    """The keys of ``mapping``: those of ``first`` in that order, then the rest sorted (a card
    reads the same after a JSON round trip that sorted its keys)."""
    return [k for k in first if k in mapping] + sorted(k for k in mapping if k not in first)


def _sections(card: dict[str, Any]) -> list[tuple[str, list[str] | list[list[str]], str]]:
    """(title, lines or table rows, kind ``text`` | ``list`` | ``table``) shared by both renderers."""
    data, model, op, lineage = card["data"], card["model"], card["operating_point"], card["lineage"]
    names = [m.name for m in metric_registry.headline()]
    perf = [["split.level", *names]] + [[key, *(fmt(card["performance"][key].get(n)) for n in names)]
                                        for key in _ordered(card["performance"], [f"{s}.{lv}" for s in SPLITS for lv in LEVELS])]
    splits = [["split", "patients", "images", "breasts", "cancer patients", "cancer images", "cancer breasts"]] + [
        [name, *(_value(c.get(k)) for k in ("patients", "images", "breasts", "cancer_patients", "cancer_images",
                                             "cancer_breasts"))]
        for name, c in ((n, data["splits"][n]) for n in _ordered(data["splits"], ["train", "val", "test", "all"]))]
    subgroups = [["subgroup", "n (breasts)", "patients", "cancers", "AUC", "sensitivity", "specificity"]] + [
        [f"{g['column']} = {g['value']}", _value(g.get("n")), _value(g.get("patients")), _value(g.get("cancers")),
         fmt(g.get("auc")), fmt(g.get("sensitivity")), fmt(g.get("specificity"))] for g in card["subgroups"]]
    points = [f"{p.get('name')}: {fmt(p)}" for p in op["test_operating_points"]]
    calibration = [f"{k}: Brier {_value(v.get('brier'))}, ECE {_value(v.get('ece'))} ({_value(v.get('bins_used'))} "
                   f"{_value(v.get('strategy'))} bins)"
                   for k, v in ((k, card["calibration"][k]) for k in _ordered(card["calibration"], [f"{s}.breast" for s in SPLITS]))]
    replaced = lineage.get("replaced") or {}
    intervals = card.get("intervals") or {}
    return [
        ("Intended use", [card["intended_use"]], "text"),
        ("Not for", card["not_for"], "list"),
        ("Training data", [
            f"Dataset fingerprint: {_value(data['dataset_fingerprint'])}",
            f"Split fingerprint: {_value(data['split_fingerprint'])}",
            f"Input size: {_value(data['input_size'])}; preprocessing: {_value(data['preprocessing'])}",
            f"Machines / manufacturers seen (test subgroups): {_value(data['machines_seen'])}",
        ], "list"),
        ("Patients, images and cancers per split", splits, "table"),
        ("Model and training", [
            f"Backbone: {_value(model['backbone'])}; pretrained weights: {_value(model['weights'])}; input channels: "
            f"{_value(model['in_channels'])}",
            f"Checkpoint: {_value(model['checkpoint'])}, stage {_value(model['stage'])}, epoch {_value(model['epoch'])}",
            f"Training settings: {_value(model['training'])}; batch size {_value(model['batch_size'])}",
        ], "list"),
        (f"Performance with {int(round(100 * float(intervals.get('level', 0.95))))}% intervals", perf, "table"),
        ("Operating point", [
            f"Threshold {_value(op['threshold'])}: {_value(op['how'])}",
            *(points or ["No fixed-sensitivity/specificity operating points recorded"]),
        ], "list"),
        ("Calibration", calibration or ["not recorded"], "list"),
        ("Subgroups (test split)", subgroups, "table"),
        ("Warnings of the evaluation", card["warnings"] or ["none"], "list"),  # small samples, splits, sampling
        ("Interval methods", [f"{k}: {v}" for k, v in (intervals.get("method") or {}).items()] or ["not recorded"], "list"),
        ("Lineage", [
            f"Version {_value(card['version'])}, sha256 {card['sha256']}",
            f"Run id: {_value(lineage['run_id'])}; evaluation {_value(lineage['evaluation_uri'])}",
            f"Checkpoint promoted from: {_value(lineage['candidate_uri'])}",
            f"Code version: {lineage['code_version']}; container image digests: {_value(lineage['image_digests'])}",
            f"Promotion rule: {_value(lineage['rule'])}",
            f"Verdict: {_value(lineage['verdict'])}",
            f"Replaced: {_value(replaced.get('sha256')) if replaced else 'nothing (first production model)'}"
            + (f" (value {_value(replaced.get('value'))}, promoted {_value(replaced.get('promoted_at'))})" if replaced else ""),
        ], "list"),
    ]


def _source_of(card: dict[str, Any]) -> str:
    sources = card.get("sources") or {}
    return str(sources.get("figures_from") or "metrics.json") + (
        f" ({sources['metrics_json']})" if sources.get("metrics_found") and sources.get("metrics_json") else "")


def render_markdown(card: dict[str, Any]) -> str:
    out = [f"# Model card: {card['model_name']} {card['version'] or ''} ({card['sha256'][:12]})", "",
           f"Generated {card['generated_at']} by the promoter; figures from {_source_of(card)}.", ""]
    for title, body, kind in _sections(card):
        out += [f"## {title}", ""]
        if kind == "table":
            rows = [[str(c).replace("|", "\\|") for c in row] for row in body]
            out += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            out += ["| " + " | ".join(row) + " |" for row in rows[1:]] or ["| none |"]
        elif kind == "list":
            out += [f"- {line}" for line in body]
        else:
            out += list(body)
        out.append("")
    return "\n".join(out)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}"
          "th{background:#eee}h2{border-bottom:1px solid #ddd;margin-top:1.5em}")


def render_html(card: dict[str, Any]) -> str:
    """One self-contained page: inline style, no script, no external resource."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Model card: {e(card['model_name'])} {e(str(card['version'] or ''))}</title>",
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>Model card: {e(card['model_name'])} {e(str(card['version'] or ''))} ({e(card['sha256'][:12])})</h1>",
           f"<p>Generated {e(card['generated_at'])} by the promoter; figures from {e(_source_of(card))}.</p>"]
    for title, body, kind in _sections(card):
        out.append(f"<h2>{e(title)}</h2>")
        if kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in body[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in body[1:]]
            out.append("</table>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(str(line))}</li>" for line in body) + "</ul>")
        else:
            out += [f"<p>{e(str(line))}</p>" for line in body]
    out.append("</body></html>")
    return "\n".join(out)


def summary(card: dict[str, Any]) -> list[str]:
    """A few lines for ``mammo models show``."""
    perf = card.get("performance") or {}
    data, model, op = card.get("data") or {}, card.get("model") or {}, card.get("operating_point") or {}
    test = (data.get("splits") or {}).get("test") or {}
    lines = [
        f"{model.get('backbone') or 'backbone not recorded'} at {data.get('input_size') or '?'} px, "
        f"{model.get('stage') or '?'} stage, epoch {model.get('epoch') if model.get('epoch') is not None else '?'}; "
        f"dataset {str(data.get('dataset_fingerprint') or 'not recorded')[:12]}",
        f"test: {_value(test.get('patients'))} patients, {_value(test.get('breasts'))} breasts; "
        + ", ".join(f"{name} {fmt((perf.get('test.breast') or {}).get(name))}" for name in ("auc", "sensitivity", "specificity")),
        f"threshold {_value(op.get('threshold'))} ({_value(op.get('how'))})",
    ]
    lines += [f"warning: {w}" for w in card.get("warnings") or []]
    return lines


def publish_card(prefix: str, sha256: str, card: dict[str, Any]) -> dict[str, ManifestEntry]:
    """Write the card's Markdown and HTML beside ``model-<sha12>.pt``; their manifest entries."""
    entries = {}
    for key, text in zip(card_keys(sha256), (render_markdown(card), render_html(card)), strict=True):
        data = text.encode()
        put_bytes(data, join(prefix, key))
        entries[key] = ManifestEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return entries


def make_card(store_uri: str, **facts: Any) -> dict[str, Any] | None:
    """``gather``, kept as ``models/<name>/cards/<sha12>.json``; None (logged) when it cannot be."""
    try:
        card = json.loads(json.dumps(gather(store_uri=store_uri, **facts), sort_keys=True))  # as read back later
        put_json(card, card_data_uri(store_uri, facts["model_name"], facts["sha256"]))
    except (MammoError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("no model card: %s", err)
        return None
    return card


def card_beside(prefix: str, sha256: str, card: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, ManifestEntry]:
    """``publish_card``, or {} with ``card_error`` in ``result``: a card that cannot be written never
    blocks a promotion or rollback (the model itself is complete)."""
    if not card:
        result["card_error"] = "no model card facts (see the log)"
        return {}
    try:
        entries = publish_card(prefix, sha256, card)
    except (MammoError, OSError, ValueError, TypeError, KeyError) as err:
        log.warning("no model card: %s", err)
        result["card_error"] = str(err)
        return {}
    md, page = card_keys(sha256)
    result.update(card_uri=join(prefix, md), card_html_uri=join(prefix, page))
    return entries
