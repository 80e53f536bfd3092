"""The ensemble of fold models (``folds`` > 1, issue 24), evaluated as a candidate like any other.

Its image probability is the mean of its members' (each fold's best checkpoint on val by the
rank metric), and then the breast rule, threshold choice and figures are the evaluation's own
(``mammo.evaluate``), so the ensemble and the single models are scored the same way on the same
val and test patients. ``compare`` adds what k-fold training is for: every fold model's and the
ensemble's test figures with their intervals side by side (``mammo.stats.bootstrap``) and the
paired patient-level bootstrap of the ensemble against the best single fold model
(``mammo.stats.paired_difference``).

``ensemble.json`` (``ENSEMBLE_FILE``) names the members with their sha256 (for readers and
``mammo predict --model``); ``ensemble.pt`` (``ENSEMBLE_WEIGHTS``, ``mammo.export.write_ensemble``)
holds the members' weights in one file, and is the ensemble candidate's path: what the promoter
copies to production, verified by its sha256 like any checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mammo.errors import ConfigError

from mammo.stats import BootstrapSettings, bootstrap, paired_difference

#: The ensemble's candidate name (never a checkpoint file's name: those end in .pt).
ENSEMBLE = "ensemble"
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_WEIGHTS = "ensemble.pt"
FORMAT = "mammo-ensemble"
#: Test figures shown for each fold model and the ensemble.
FIGURES = ("auc", "pr_auc", "sensitivity", "specificity")


def mean_probabilities(images: pd.DataFrame, members: list[str]) -> pd.DataFrame:
    """The ensemble's image predictions: per split and image, the mean ``prob`` of the
    ``members`` (names in the ``checkpoint`` column), other columns from the first member."""
    chosen = images[images["checkpoint"].isin(members)]
    counts = chosen.groupby(["split", "image_id"], sort=False)["checkpoint"].nunique()
    if (counts != len(members)).any():
        raise ValueError(f"ensemble: members {', '.join(members)} did not all score the same images")
    mean = chosen.groupby(["split", "image_id"], sort=False)["prob"].mean()
    first = chosen[chosen["checkpoint"] == members[0]].drop(columns="prob")
    merged = first.merge(mean.rename("prob").reset_index(), on=["split", "image_id"], how="left")
    return merged[list(images.columns)].assign(checkpoint=ENSEMBLE)


def ensemble_file(members: list[dict[str, Any]], *, aggregation: str, threshold: float | None) -> dict[str, Any]:
    """The content of ``ensemble.json``: its members (name, checkpoint, sha256), how their image
    probabilities are combined and the breast rule, and the threshold chosen on val."""
    return {
        "format": FORMAT, "version": 1, "combine": "mean image probability",
        "breast_aggregation": aggregation, "threshold": threshold,
        "members": [{"name": m["name"], "checkpoint": str(m["checkpoint"]), "sha256": m["sha256"]} for m in members],
    }


def compare(
    breasts: pd.DataFrame, candidates: list[dict[str, Any]], members: list[str], settings: BootstrapSettings,
    *, metric: str, split: str = "test", others: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``split`` breast-level figures with intervals of the ``others`` (the full-data
    models), the fold models and the ensemble, each at its own threshold, and the paired
    bootstrap of ``metric`` (breast level), ensemble minus the best single fold model on val
    (the first member in candidate rank order)."""
    by_name = {c["name"]: c for c in candidates}
    ranked = [c["name"] for c in candidates if c["name"] in members]
    best_single = ranked[0]
    part = breasts[breasts["split"] == split]
    figures = {}
    for name in [*others, *members, ENSEMBLE]:
        rows = part[part["checkpoint"] == name]
        figures[name] = bootstrap(rows["label"], rows["prob"], rows["patient_id"], by_name[name]["threshold"],
                                  settings, which=FIGURES)
    a = part[part["checkpoint"] == ENSEMBLE].set_index("breast_id").sort_index()
    b = part[part["checkpoint"] == best_single].set_index("breast_id").reindex(a.index)
    paired = paired_difference(a["label"], a["prob"], b["prob"], a["patient_id"], metric, settings,
                               threshold_a=by_name[ENSEMBLE]["threshold"], threshold_b=by_name[best_single]["threshold"])
    return {"members": members, "full_data": list(others), "best_single": best_single, "split": split, "level": "breast",
            "figures": figures, "ensemble_vs_best_single": paired}


def read_ensemble_file(path: str | Path, where: str) -> dict[str, Any]:
    """An ``ensemble.json``'s content, checked: its format, and members each naming a
    checkpoint and its sha256; a bad file is a one-line ``ConfigError`` naming ``where``."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{where}: not a readable ensemble file ({err.__class__.__name__})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ConfigError(f"{where}: not an ensemble file (format {FORMAT!r} expected)")
    members = content.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{where}: an ensemble file lists no members")
    for i, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("checkpoint"), str) or not re.fullmatch(
            r"[0-9a-f]{64}", str(member.get("sha256", ""))
        ):
            raise ConfigError(f"{where}: member {i + 1} needs a checkpoint and its sha256 (64 hex digits)")
    return content


def member_ref(member: dict[str, Any], ensemble_ref: str) -> str:
    """Where a member's checkpoint is: its URI or absolute path, else a path relative to the
    ensemble file's folder."""
    checkpoint = member["checkpoint"]
    if "://" in checkpoint or Path(checkpoint).is_absolute():
        return checkpoint
    return f"{ensemble_ref.rpartition('/')[0]}/{checkpoint}"

