"""The scorer's KFP step (the ``mammo-scoring`` pipeline's only step calls ``run_step``)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from mammo.console import setup_logging
from mammo.storage import join, production_model_uri
from mammo_components.artifacts import write_artifact_json
from mammo_components.scorer.entrypoint import run


def scores_uri(store_uri: str, model_name: str, dataset_uri: str, now: float | None = None) -> str:
    """``<store>/scores/<model>/<UTC time>-<dataset>-<hash>``: a new folder for every scoring
    run, named so that a listing sorts by time and shows the dataset."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    name = dataset_uri.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    digest = hashlib.sha256(dataset_uri.encode()).hexdigest()[:8]
    return join(store_uri, "scores", model_name, f"{stamp}-{name}-{digest}")


def run_step(
    *, dataset_uri: str, store_uri: str, model_name: str, table: str, params: dict[str, Any], scores: Any,
    runtime: str = "eager",
) -> str:
    """Score ``dataset_uri`` with the production model of ``model_name`` by ``runtime``
    (``mammo.runtimes``); the ``scores`` Dataset artifact records where the CSVs are, the
    counts and the runtime; returns the output folder."""
    setup_logging()
    out_uri = scores_uri(store_uri, model_name, dataset_uri)
    result = run(
        dataset_uri=dataset_uri, model_uri=production_model_uri(store_uri, model_name), out_uri=out_uri,
        params=params, table=table or None, runtime=runtime,
    )
    scores.metadata.update({
        key: result[key]
        for key in ("out_uri", "breasts_uri", "images_uri", "breasts", "patients", "flagged_breasts", "runtime")
    })
    scores.metadata["model"] = result["model"]
    write_artifact_json(scores, result)
    return out_uri
