"""The promotion metrics that name something: what the evaluator's result really holds.

The evaluator reports ``{"val"|"test": headline(evaluate_predictions(...))}`` (see
``mammo_components.evaluator``). Rather than a hand-kept list that drifts from it, the names
are read off ``mammo.metrics`` itself: evaluate two different sets of predictions of the same
labels, keep the keys that have a value and that change with the predictions. That keeps the
measures of a model (AUC, PR-AUC, pF1, sensitivity, ...) and leaves out counts of the data
(``n``, ``prevalence``, equal for every candidate, so "better" could never happen) and what the
evaluation does not compute (``loss``, known only while training: always undefined here).
"""

from __future__ import annotations

from functools import lru_cache

#: The splits the evaluator reports (``mammo.evaluate.SPLITS``; that module imports torch).
SPLITS = ("val", "test")


@lru_cache(maxsize=1)
def promotable_metrics() -> tuple[str, ...]:
    """Every ``<split>.<level>.<metric>`` a promotion can be decided on, sorted."""
    import pandas as pd

    from mammo.metrics import evaluate_predictions, headline

    labels = [0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0]
    patients = [str(i // 2) for i in range(len(labels))]
    sides = ["L", "R"] * (len(labels) // 2)

    def figures(probs: list[float]) -> dict[str, dict[str, object]]:
        frame = pd.DataFrame({"patient_id": patients, "laterality": sides, "label": labels, "prob": probs})
        return headline(evaluate_predictions(frame))

    a = figures([0.1, 0.9, 0.2, 0.7, 0.6, 0.4, 0.3, 0.1, 0.8, 0.55, 0.35, 0.2])
    b = figures([0.6, 0.3, 0.7, 0.2, 0.1, 0.9, 0.8, 0.4, 0.3, 0.2, 0.6, 0.7])
    names = {
        f"{split}.{level}.{key}"
        for split in SPLITS
        for level, values in a.items()
        for key, value in values.items()
        if value is not None and value == value and value != b[level][key]
    }
    return tuple(sorted(names))
