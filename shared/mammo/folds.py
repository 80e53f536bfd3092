"""Patient-level k-fold division of a split's training patients (``folds`` > 1).

Only training patients are divided; val and test patients never enter a fold, so every fold
model is early-stopped, thresholded and evaluated on the same val and test patients as the
full-data models. A patient's fold is a keyed hash of its id and the split seed, drawn
separately within each stratum (patients with and without cancer), so each fold's share of
cancer patients is the stratum's in expectation, and a patient keeps its fold however the
table grows: like the split itself (``mammo.split``: old patients keep theirs), adding
patients never moves earlier ones. An exact greedy balance would have to move old patients or
store the assignment; the hash needs neither. ``fold_summary`` counts each fold so that an
unlucky draw (a fold without a cancer patient) is visible and warned about.

Fold ``i``'s training rows are the training rows of every other fold; its held-out rows are
its out-of-fold patients. This module must not import torch (the pipeline layer imports it).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pandas as pd

from mammo.defaults import MAX_FOLDS
from mammo.errors import ConfigError

log = logging.getLogger(__name__)

#: sha256 -> integer: the first 8 bytes are plenty for up to MAX_FOLDS buckets.
_HASH_BYTES = 8


def _bucket(seed: int, stratum: int, patient_id: str, folds: int) -> int:
    """Fold of one patient: sha256 of seed, stratum and id, reduced modulo ``folds``."""
    digest = hashlib.sha256(f"mammo-fold:{seed}:{stratum}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:_HASH_BYTES], "big") % folds


def check_folds(folds: int) -> None:
    if not 1 <= folds <= MAX_FOLDS:
        raise ConfigError(f"folds must be between 1 and {MAX_FOLDS}, got {folds}")


def check_fold(fold: int, folds: int) -> None:
    check_folds(folds)
    if not 0 <= fold < folds:
        raise ConfigError(f"fold must be between 0 and {folds - 1} for folds={folds}, got {fold}")


def assign_folds(assignments: pd.DataFrame, *, folds: int, seed: int) -> pd.Series:
    """Fold (0..folds-1) of every training patient of a split's ``assignments`` (one row per
    image, ``mammo.split.COLUMNS``), indexed by patient id in sorted order."""
    check_folds(folds)
    train = assignments[assignments["split"] == "train"]
    positive = train.groupby("patient_id", sort=True)["cancer"].max() > 0
    return pd.Series(
        [_bucket(seed, int(has_cancer), str(pid), folds) for pid, has_cancer in positive.items()],
        index=positive.index, name="fold", dtype="int64",
    )


def fold_assignments(assignments: pd.DataFrame, *, fold: int, folds: int, seed: int) -> pd.DataFrame:
    """The split ``assignments`` fold ``fold`` trains on: its held-out training patients'
    rows removed, every other row (val, test, the other folds' training patients) as it is."""
    check_fold(fold, folds)
    of = assign_folds(assignments, folds=folds, seed=seed)
    held_out = set(of.index[of == fold])
    keep = ~assignments["patient_id"].isin(held_out)
    return assignments[keep].reset_index(drop=True)


def held_out_patients(assignments: pd.DataFrame, *, fold: int, folds: int, seed: int) -> list[str]:
    """The training patients fold ``fold`` holds out (its out-of-fold patients), sorted."""
    check_fold(fold, folds)
    of = assign_folds(assignments, folds=folds, seed=seed)
    return sorted(str(p) for p in of.index[of == fold])


def fold_summary(assignments: pd.DataFrame, *, folds: int, seed: int) -> dict[str, Any]:
    """Per fold: held-out patients, images and cancer patients; and one warning line per fold
    whose held-out part has no cancer patient (its out-of-fold AUC is undefined)."""
    of = assign_folds(assignments, folds=folds, seed=seed)
    train = assignments[assignments["split"] == "train"]
    per_patient = train.groupby("patient_id", sort=True).agg(images=("image_id", "size"), cancer=("cancer", "max"))
    per_patient["fold"] = of
    counts = []
    for fold in range(folds):
        part = per_patient[per_patient["fold"] == fold]
        counts.append({
            "fold": fold, "patients": int(len(part)), "images": int(part["images"].sum()),
            "cancer_patients": int((part["cancer"] > 0).sum()),
        })
    warnings = [
        f"fold {c['fold']} of {folds} holds out {c['patients']} training patients and no cancer patient"
        for c in counts if c["cancer_patients"] == 0
    ]
    for warning in warnings:
        log.warning("%s", warning)
    return {"folds": folds, "seed": seed, "method": "sha256(seed, cancer stratum, patient_id) mod folds",
            "counts": counts, "warnings": warnings}
