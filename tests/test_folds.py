"""k-fold training (issue 24): the patient-level folds of the training split (``mammo.folds``),
the pipeline's fan-out over them, and the evaluation of the fold models and their ensemble."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo.errors import ConfigError
from mammo.folds import assign_folds, fold_assignments, fold_summary, held_out_patients
from mammo.split import build_split


def _table(patients: int, *, start: int = 0, seed: int = 0) -> pd.DataFrame:
    """Two images per breast, both breasts; one patient in eight has a cancer in the left breast."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(start, start + patients):
        cancer = int(rng.random() < 0.125)
        for side in ("L", "R"):
            for view in range(2):
                rows.append({"patient_id": f"p{p:04d}", "image_id": f"{p:04d}{side}{view}", "laterality": side,
                             "cancer": cancer if side == "L" else 0})
    return pd.DataFrame(rows)


def _split(table: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    return build_split(table, val_frac=0.15, test_frac=0.15, seed=7, previous=previous).assignments


def test_folds_hold_training_patients_only_and_each_patient_in_exactly_one() -> None:
    assignments = _split(_table(400))
    of = assign_folds(assignments, folds=4, seed=7)
    train_patients = set(assignments.loc[assignments["split"] == "train", "patient_id"])
    assert set(of.index) == train_patients
    assert set(of.unique()) == {0, 1, 2, 3}
    held = [set(held_out_patients(assignments, fold=f, folds=4, seed=7)) for f in range(4)]
    assert set().union(*held) == train_patients and sum(map(len, held)) == len(train_patients)
    # Both strata reach every fold (about 35 cancer patients in 280 training patients).
    summary = fold_summary(assignments, folds=4, seed=7)
    assert all(c["cancer_patients"] > 0 and c["patients"] > 0 for c in summary["counts"])
    assert sum(c["patients"] for c in summary["counts"]) == len(train_patients)


def test_a_fold_trains_on_the_other_folds_and_keeps_val_and_test_whole() -> None:
    assignments = _split(_table(200))
    for fold in range(3):
        held = set(held_out_patients(assignments, fold=fold, folds=3, seed=7))
        trained = fold_assignments(assignments, fold=fold, folds=3, seed=7)
        assert not held & set(trained["patient_id"])
        for name in ("val", "test"):
            pd.testing.assert_frame_equal(
                trained[trained["split"] == name].reset_index(drop=True),
                assignments[assignments["split"] == name].reset_index(drop=True),
            )
        kept_train = set(trained.loc[trained["split"] == "train", "patient_id"])
        assert kept_train | held == set(assignments.loc[assignments["split"] == "train", "patient_id"])


def test_growing_data_never_moves_a_patient_to_another_fold() -> None:
    first = _split(_table(150))
    grown = _split(pd.concat([_table(150), _table(120, start=150, seed=1)], ignore_index=True), previous=first)
    before, after = assign_folds(first, folds=5, seed=7), assign_folds(grown, folds=5, seed=7)
    assert len(after) > len(before)
    pd.testing.assert_series_equal(after.loc[before.index], before)
    # Another seed draws other folds.
    assert not assign_folds(first, folds=5, seed=8).equals(before)


def test_fold_bounds_are_one_line_errors() -> None:
    assignments = _split(_table(40))
    with pytest.raises(ConfigError, match="folds must be between 1 and 10, got 11"):
        assign_folds(assignments, folds=11, seed=7)
    with pytest.raises(ConfigError, match="fold must be between 0 and 2 for folds=3, got 3"):
        fold_assignments(assignments, fold=3, folds=3, seed=7)
    from mammo.config import PipelineParams

    assert PipelineParams().folds == 1
    with pytest.raises(ValueError, match="folds"):
        PipelineParams(folds=0)


def test_a_fold_without_cancer_is_warned_about() -> None:
    table = _table(30)
    table["cancer"] = 0
    table.loc[table["patient_id"] == "p0000", "cancer"] = 1
    summary = fold_summary(_split(table), folds=3, seed=7)
    assert len(summary["warnings"]) >= 2 and "no cancer patient" in summary["warnings"][0]
