"""Datasets the tests share (the fixtures that write them once per session are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

#: The strong-signal dataset: lesions at the synthesiser's largest contrast, so any classifier
#: that trains at all separates them (tinynet reaches a test AUC of 1.0 in a few epochs; the
#: margin over the tests' thresholds across seeds, thread counts and CPU instruction sets is in
#: the README's Development section, measured by ``scripts/learning-margin.py``).
LEARNABLE = {"patients": 100, "image_size": 48, "prevalence": 0.3, "seed": 3, "lesion_contrast": 4.0}
#: Its split: 55/20/25 by patient.
LEARNABLE_SPLIT = {"val_frac": 0.2, "test_frac": 0.25, "seed": 42}


def write_learnable(root: Path) -> tuple[Path, Path]:
    """Write the strong-signal dataset and its split under ``root``: (dataset, split)."""
    from mammo.data.synth import write_synthetic_dataset
    from mammo.split import run_split

    write_synthetic_dataset(root / "data", **LEARNABLE)
    run_split(data=str(root / "data"), out=str(root / "split"), **LEARNABLE_SPLIT)
    return root / "data", root / "split"
