"""Patient-level, prevalence-stratified train/val/test split (``mammo split``).

All images of a patient (both breasts) land in one split, so no patient leaks between training and
evaluation (the research code split by breast). Cancer and cancer-free patients are assigned
separately and greedily, each to the split furthest below its target share of patients, images and
cancer images, so every split's prevalence by patient and by image stays close to the table's.
A greedy pass (rather than scikit-learn's StratifiedGroupKFold) allows arbitrary fractions and
growth: with ``previous``, patients already assigned keep their split and only new patients are
placed, moving each split's totals toward its targets.

Outputs are byte-identical for the same inputs: no timestamps, sorted rows and keys, rounded floats.
This module must not import torch (the pipeline layer imports it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo import defaults
from mammo.data.table import breast_ids, read_table, validate_table
from mammo.errors import ConfigError, DataError
from mammo.storage.atomic import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CSV = "split.csv"
SPLIT_JSON = "split.json"
COLUMNS = ("patient_id", "image_id", "laterality", "cancer", "split")
#: Decimal places of every float written to split.json (keeps the file byte-stable).
DIGITS = 6


@dataclass(frozen=True)
class Split:
    """One row per image (``COLUMNS``, sorted) and the summary written to split.json."""

    assignments: pd.DataFrame
    summary: dict[str, Any]


def dataset_fingerprint(table: pd.DataFrame) -> str:
    """sha256 of the label-relevant columns sorted by image_id: row order and extra columns
    do not change it, any change to an id, side or label does."""
    canonical = (
        table[["patient_id", "image_id", "laterality", "cancer"]]
        .astype({"patient_id": str, "image_id": str, "laterality": str, "cancer": "int64"})
        .sort_values("image_id", kind="mergesort")
        .to_csv(index=False, lineterminator="\n")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_fractions(val_frac: float, test_frac: float, warmup_ratio: int) -> np.ndarray:
    for flag, value in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if not 0 <= value < 1:
            raise ConfigError(f"{flag} must be in [0, 1), got {value}")
    if val_frac + test_frac >= 1:
        raise ConfigError(
            f"--val-frac + --test-frac must be below 1 to leave a training split, "
            f"got {val_frac} + {test_frac}"
        )
    if warmup_ratio < 0:
        raise ConfigError(f"--warmup-ratio must be 0 or more, got {warmup_ratio}")
    return np.array([1.0 - val_frac - test_frac, val_frac, test_frac])


def _patients(table: pd.DataFrame) -> pd.DataFrame:
    """Per patient (sorted by id): image count, cancer image count, has-cancer flag."""
    grouped = table.groupby("patient_id", sort=True)["cancer"]
    patients = pd.DataFrame({"images": grouped.size(), "cancer_images": grouped.sum()})
    patients["positive"] = patients["cancer_images"] > 0
    return patients


def _assign_stratum(
    images: np.ndarray,
    cancer_images: np.ndarray,
    fixed: np.ndarray,
    targets: np.ndarray,
    order: np.ndarray,
) -> np.ndarray:
    """Greedy assignment of one stratum's unassigned patients (``fixed == -1``) in seeded ``order``.

    A split's deficit is the sum over patients, images and cancer images of (target fraction -
    its share of the stratum's total); each patient goes to the split with the largest deficit
    (ties: train, val, test). A patient adds the same amount to any split's shares, so one
    running sum per split suffices: O(n) after the shuffle.
    """
    quantities = np.stack([np.ones_like(images), images, cancer_images], axis=1).astype(float)
    totals = quantities.sum(axis=0)
    weights = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    shares = (quantities * weights).sum(axis=1)
    goals = (targets * int((totals > 0).sum())).tolist()
    current = [float(shares[fixed == k].sum()) for k in range(len(SPLITS))]
    active = [k for k in range(len(SPLITS)) if targets[k] > 0]
    result = fixed.copy()
    share_of = shares.tolist()
    for i in order[fixed[order] == -1].tolist():
        best = max(active, key=lambda k: goals[k] - current[k])
        result[i] = best
        current[best] += share_of[i]
    return result


def _counts(frame: pd.DataFrame) -> dict[str, Any]:
    """Image/patient/breast counts and prevalences of one split (None when undefined)."""
    images = len(frame)
    cancer_images = int(frame["cancer"].sum())
    per_patient = frame.groupby("patient_id")["cancer"].max()
    patients = len(per_patient)
    cancer_patients = int(per_patient.sum())
    return {
        "images": images,
        "patients": patients,
        "breasts": int(breast_ids(frame).nunique()),
        "cancer_images": cancer_images,
        "cancer_patients": cancer_patients,
        "prevalence_image": round(cancer_images / images, DIGITS) if images else None,
        "prevalence_patient": round(cancer_patients / patients, DIGITS) if patients else None,
    }


def _warmup(train: pd.DataFrame, ratio: int, seed: int) -> dict[str, Any]:
    """All positive training breasts plus ``ratio`` times as many negatives (seeded)."""
    labels = train.groupby(breast_ids(train))["cancer"].max().sort_index()
    positives = labels.index[labels == 1].to_numpy()
    negatives = labels.index[labels == 0].to_numpy()
    n_neg = min(ratio * len(positives), len(negatives))
    chosen = np.random.default_rng(seed).choice(negatives, size=n_neg, replace=False)
    breasts = sorted([*positives.tolist(), *chosen.tolist()])
    return {
        "ratio": ratio,
        "breasts": breasts,
        "positive_breasts": int(len(positives)),
        "negative_breasts": int(n_neg),
        "prevalence": round(len(positives) / len(breasts), DIGITS) if breasts else None,
    }


def build_split(
    table: pd.DataFrame,
    *,
    val_frac: float,
    test_frac: float,
    seed: int,
    warmup_ratio: int = defaults.WARMUP_RATIO,
    previous: pd.DataFrame | None = None,
) -> Split:
    """Assign every patient of ``table`` to train/val/test; see the module docstring.

    ``previous`` is an earlier split's assignments (``read_split``): its patients keep their split,
    patients absent from ``table`` are dropped and counted in the summary.
    """
    targets = _check_fractions(val_frac, test_frac, warmup_ratio)
    patients = _patients(table)
    ids = patients.index.to_numpy()
    fixed = np.full(len(ids), -1)
    if previous is not None:
        earlier = previous.groupby("patient_id")["split"].first()
        kept = earlier.reindex(ids)
        known = kept.notna().to_numpy()
        fixed[known] = [SPLITS.index(s) for s in kept[known]]

    order = np.random.default_rng(seed).permutation(len(ids))
    assigned = fixed.copy()
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    images = patients["images"].to_numpy()
    cancer_images = patients["cancer_images"].to_numpy()
    for positive in (True, False):
        members = np.flatnonzero(patients["positive"].to_numpy() == positive)
        local_order = np.argsort(rank[members], kind="stable")
        assigned[members] = _assign_stratum(
            images[members], cancer_images[members], fixed[members], targets, local_order
        )

    split_of = pd.Series(np.asarray(SPLITS)[assigned], index=ids)
    rows = table[["patient_id", "image_id", "laterality", "cancer"]].copy()
    rows["split"] = rows["patient_id"].map(split_of).astype(str)
    rows = rows.sort_values(["patient_id", "image_id"], kind="mergesort").reset_index(drop=True)

    per_split = {name: _counts(rows[rows["split"] == name]) for name in SPLITS}
    per_split["all"] = _counts(rows)
    summary: dict[str, Any] = {
        "seed": seed,
        "fractions": {name: round(float(f), DIGITS) for name, f in zip(SPLITS, targets)},
        "warmup_ratio": warmup_ratio,
        "dataset_fingerprint": dataset_fingerprint(table),
        "splits": per_split,
        "empty_splits": [s for s in SPLITS if per_split[s]["patients"] == 0],
        "single_class_splits": [
            s
            for s in SPLITS
            if per_split[s]["patients"] > 0
            and per_split[s]["cancer_patients"] in (0, per_split[s]["patients"])
        ],
        "warmup": _warmup(rows[rows["split"] == "train"], warmup_ratio, seed),
    }
    if previous is not None:
        previous_ids = pd.unique(previous["patient_id"])
        kept_count = int((fixed >= 0).sum())
        summary["previous"] = {
            "kept_patients": kept_count,
            "new_patients": int(len(ids) - kept_count),
            "dropped_patients": int(len(previous_ids) - kept_count),
        }
    summary["warnings"] = split_warnings(per_split)
    for name in summary["empty_splits"]:
        log.warning("split %s has no patients (table too small for the requested fractions)", name)
    for warning in summary["warnings"]:
        log.warning("%s", warning)
    return Split(assignments=rows, summary=summary)


#: What a split without cancer cannot give, per split.
_NO_CANCER = {
    "val": "no operating threshold can be chosen (evaluation reports thresholded figures as n/a), and validation "
    "AUC, PR-AUC and pF1 are undefined, so early stopping and the best_auc/best_pf1 checkpoints cannot use them",
    "test": "test AUC, sensitivity and every figure needing a cancer are undefined, and nothing can be promoted on it",
}


def split_warnings(per_split: dict[str, dict[str, Any]]) -> list[str]:
    """One line for each of val and test that has patients but no cancer patient."""
    return [
        f"split {name} has {per_split[name]['patients']} patients and no cancer: {_NO_CANCER[name]}"
        for name in ("val", "test")
        if per_split[name]["patients"] > 0 and per_split[name]["cancer_patients"] == 0
    ]


def write_split(split: Split, out: str | Path) -> None:
    """Write split.csv and split.json into ``out``; both appear only once both are written."""
    out_dir = Path(out)
    csv_text = split.assignments[list(COLUMNS)].to_csv(index=False, lineterminator="\n")
    json_text = json.dumps(split.summary, indent=2, sort_keys=True) + "\n"
    with atomic_path(out_dir / SPLIT_CSV) as csv_tmp, atomic_path(out_dir / SPLIT_JSON) as json_tmp:
        csv_tmp.write_bytes(csv_text.encode("utf-8"))
        json_tmp.write_bytes(json_text.encode("utf-8"))


def read_split(directory: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load and validate a split directory; ``DataError`` names the bad file and row."""
    csv_path = Path(directory) / SPLIT_CSV
    json_path = Path(directory) / SPLIT_JSON
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: split file not found")
    try:
        frame = pd.read_csv(csv_path, dtype={c: str for c in COLUMNS if c != "cancer"})
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if "split" not in frame.columns:
        raise DataError(f"{csv_path}: missing required column(s): split")
    validate_table(frame, str(csv_path))
    bad = ~frame["split"].isin(SPLITS)
    if bad.any():
        i = int(bad.idxmax())
        raise DataError(
            f"{csv_path}: row {i + 2}: split must be one of {', '.join(SPLITS)}, "
            f"got {frame['split'].iloc[i]!r}"
        )
    per_patient = frame.groupby("patient_id")["split"].nunique()
    if (per_patient > 1).any():
        raise DataError(
            f"{csv_path}: patient {per_patient.index[per_patient > 1][0]} appears in more than one split"
        )
    frame = frame[list(COLUMNS)].copy()
    frame["cancer"] = pd.to_numeric(frame["cancer"]).astype("int64")
    if not json_path.is_file():
        raise DataError(f"{json_path}: split summary not found")
    try:
        summary = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(summary, dict):
        raise DataError(f"{json_path}: expected a JSON object at the top level")
    return frame, summary


def split_frame(assignments: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of one split (``train``, ``val`` or ``test``), index reset."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return assignments[assignments["split"] == name].reset_index(drop=True)


def run_split(
    data: str,
    out: str,
    val_frac: float = defaults.VAL_FRAC,
    test_frac: float = defaults.TEST_FRAC,
    seed: int = defaults.SEED,
    warmup_ratio: int = defaults.WARMUP_RATIO,
    previous: str | pd.DataFrame | None = None,
) -> dict[str, Any]:
    """``mammo split``: read the table (and an earlier split), build, write, return the summary.
    ``previous``: an earlier split's folder, or assignments (patient_id, split) such as a split
    ledger's (``mammo.split_ledger``)."""
    _check_fractions(val_frac, test_frac, warmup_ratio)
    table = read_table(data)
    earlier = None
    earlier_summary: dict[str, Any] = {}
    if isinstance(previous, pd.DataFrame):
        earlier = previous
    elif previous is not None:
        earlier, earlier_summary = read_split(previous)
    split = build_split(
        table,
        val_frac=val_frac,
        test_frac=test_frac,
        seed=seed,
        warmup_ratio=warmup_ratio,
        previous=earlier,
    )
    if earlier is not None:
        split.summary["previous"]["dataset_fingerprint"] = earlier_summary.get(
            "dataset_fingerprint"
        )
    write_split(split, out)
    return split.summary
