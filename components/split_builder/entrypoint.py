"""Split builder: the fixed patient-level split of a dataset, stored once and reused.

The split of a dataset lives at ``<store>/splits/<dataset-fingerprint>/``. If the dataset's
current table was split before, that split is reused as it is. Otherwise the newest split of the
same dataset URI (an earlier version of a growing dataset) is passed to ``mammo.split`` as
``previous``: every patient it knew keeps its split, only new patients are assigned. Manifest
metadata (``dataset_uri``, ``generation``) is what finds that newest split. Torch-free.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from mammo import storage
from mammo.config import PipelineParams
from mammo.split import DIGITS, SPLIT_CSV, SPLIT_JSON, dataset_fingerprint, run_split, split_warnings
from mammo.storage import MANIFEST_NAME, Manifest
from mammo.storage.integrity import sha256_file
from mammo_components.inputs import (
    fetch_dataset,
    fetch_split,
    normalize_uri,
    optional_manifest,
    parse_params,
    read_dataset_table,
    resolve_workdir,
)
from mammo_components.publishing import publish_outputs
from mammo_components.telemetry import telemetry_step

log = logging.getLogger(__name__)
COMPONENT = "split_builder"


def latest_split(store_uri: str, dataset_uri: str) -> tuple[str, Manifest] | None:
    """The newest published split of ``dataset_uri`` below ``store_uri`` (highest generation,
    then latest publication), as (prefix URI, manifest); None if it was never split."""
    root = storage.join(store_uri, "splits")
    found = []
    for uri in storage.list_objects(root):
        folder, _, name = uri[len(root) + 1 :].partition("/")
        if name != MANIFEST_NAME:
            continue
        prefix = storage.join(root, folder)
        manifest = storage.read_manifest(prefix)
        if manifest.metadata.get("dataset_uri") == dataset_uri:
            found.append((int(manifest.metadata.get("generation", 1)), manifest.created, prefix, manifest))
    if not found:
        return None
    _, _, prefix, manifest = max(found, key=lambda item: (item[0], item[1]))
    return prefix, manifest


def _warn_if_params_differ(split_uri: str, summary: dict[str, Any], params: PipelineParams) -> None:
    """A reused split keeps the settings it was built with; say so when the request differs."""
    requested = {
        "val_frac": round(params.val_frac, DIGITS),
        "test_frac": round(params.test_frac, DIGITS),
        "seed": params.seed,
        "warmup_ratio": params.warmup_ratio,
    }
    stored = {
        "val_frac": summary["fractions"]["val"],
        "test_frac": summary["fractions"]["test"],
        "seed": summary["seed"],
        "warmup_ratio": summary["warmup_ratio"],
    }
    differ = [f"{key}={stored[key]} (requested {requested[key]})" for key in requested if stored[key] != requested[key]]
    if differ:
        log.warning(
            "reusing the fixed split %s built with %s; delete it to split this dataset anew",
            split_uri, ", ".join(differ),
        )


def _result(split_uri: str, fingerprint: str, split_sha256: str, reused: bool, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "split_uri": split_uri,
        "dataset_fingerprint": fingerprint,
        "split_sha256": split_sha256,
        "reused": reused,
        "counts": summary["splits"],
        "previous": summary.get("previous"),
        # val or test without cancer (logged by the split when built, here when reused)
        "warnings": split_warnings(summary["splits"]),
    }


def _log_counts(split_uri: str, result: dict[str, Any]) -> None:
    for name in ("train", "val", "test"):
        c = result["counts"][name]
        log.info(
            "%s %s: %d patients, %d images, prevalence %s per image",
            split_uri, name, c["patients"], c["images"], c["prevalence_image"],
        )


def run(
    *,
    dataset_uri: str,
    store_uri: str,
    params: dict[str, Any],
    workdir: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the split of ``<dataset_uri>/train.csv`` under ``<store_uri>/splits/``."""
    with telemetry_step(COMPONENT, run_id):
        config = parse_params(params)
        work = resolve_workdir(workdir)
        dataset_uri, store_uri = normalize_uri(dataset_uri), normalize_uri(store_uri)
        data_dir = fetch_dataset(dataset_uri, work, images=False)
        fingerprint = dataset_fingerprint(read_dataset_table(data_dir, dataset_uri))
        target = storage.split_uri(store_uri, fingerprint)
        existing = optional_manifest(target)
        if existing is not None:
            summary = storage.get_json(storage.join(target, SPLIT_JSON), sha256=existing.objects[SPLIT_JSON].sha256)
            _warn_if_params_differ(target, summary, config)
            result = _result(target, fingerprint, existing.objects[SPLIT_CSV].sha256, True, summary)
            log.info("dataset %s was split before: reusing %s", fingerprint[:12], target)
            for warning in result["warnings"]:
                log.warning("%s", warning)
        else:
            result = _build(dataset_uri, store_uri, data_dir, target, fingerprint, config, work)
        _log_counts(target, result)
    return result


def _build(
    dataset_uri: str,
    store_uri: str,
    data_dir: Path,
    target: str,
    fingerprint: str,
    config: PipelineParams,
    work: Path,
) -> dict[str, Any]:
    """Split the table (keeping the patients of the dataset's newest split) and publish it."""
    latest = latest_split(store_uri, dataset_uri)
    previous_dir = None
    generation = 1
    if latest is not None:
        previous_dir = fetch_split(latest[0], work)
        generation = int(latest[1].metadata.get("generation", 1)) + 1
        log.info("dataset %s changed since %s: its patients keep their split", dataset_uri, latest[0])
    out = work / "splits" / f"build-{fingerprint[:16]}"
    shutil.rmtree(out, ignore_errors=True)
    summary = run_split(
        data=str(data_dir),
        out=str(out),
        val_frac=config.val_frac,
        test_frac=config.test_frac,
        seed=config.seed,
        warmup_ratio=config.warmup_ratio,
        previous=None if previous_dir is None else str(previous_dir),
    )
    result = _result(target, fingerprint, sha256_file(out / SPLIT_CSV), False, summary)
    metadata = {
        "component": COMPONENT,
        "dataset_uri": dataset_uri,
        "dataset_fingerprint": fingerprint,
        "generation": generation,
        "previous_split_uri": None if latest is None else latest[0],
    }
    publish_outputs(out, target, result, metadata)
    return result
