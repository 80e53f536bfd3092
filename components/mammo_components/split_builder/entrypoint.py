"""Split builder: the fixed patient-level split of a dataset, stored once and reused.

The split of a dataset lives at ``<store>/splits/<dataset-fingerprint>/``. If the dataset's
current table was split before, that split is reused as it is. Otherwise the model name's split
ledger (``mammo.split_ledger``: every patient ever assigned, whichever URI or table version it
came from) is passed to ``mammo.split`` as ``previous``: every patient it knows keeps its split,
only new patients are assigned. A store from before ledgers seeds it from the newest split of
the same dataset URI (manifest metadata ``dataset_uri``, ``generation``). A table whose ids
mostly changed is refused unless ``accept_fresh_split``. Torch-free.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from mammo import split_ledger, storage
from mammo.config import PipelineParams
from mammo.errors import DataError
from mammo.split import DIGITS, SPLIT_CSV, SPLIT_JSON, dataset_fingerprint, read_split, run_split, split_warnings
from mammo.storage import MANIFEST_NAME, Manifest
from mammo.storage.lock import hold
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
    """Build (or reuse) the fixed patient-level split of a dataset.

    Reads `<dataset_uri>/train.csv`, validates it and writes split.csv/split.json to
    `<store_uri>/splits/<dataset-fingerprint>/`; a dataset split before is reused, a grown one keeps
    every earlier patient in its split (the split ledger of `params.model_name`, whose lock is held
    throughout). Returns the result (README: Result).

    Args:
        dataset_uri: Dataset folder holding `train.csv` (`s3://mammo/datasets/rsna` or a local path).
            Images are not needed.
        store_uri: Storage root (`s3://mammo`); the split goes to `<store>/splits/<fingerprint>/`.
        params: `PipelineParams`; used: `val_frac`, `test_frac`, `seed`, `warmup_ratio`, `model_name`
            (whose ledger), `accept_fresh_split` (default false).
        workdir: Local cache (default: `$MAMMO_CACHE_DIR` or `~/.cache/mammo`).
        run_id: Telemetry label (no run id: no telemetry).
    """
    with telemetry_step(COMPONENT, run_id):
        config = parse_params(params)
        work = resolve_workdir(workdir)
        dataset_uri, store_uri = normalize_uri(dataset_uri), normalize_uri(store_uri)
        data_dir = fetch_dataset(dataset_uri, work, images=False)
        table = read_dataset_table(data_dir, dataset_uri)
        fingerprint = dataset_fingerprint(table)
        target = storage.split_uri(store_uri, fingerprint)
        name = config.model_name
        ledger_before = split_ledger.read_ledger(store_uri, name)
        with hold(split_ledger.lock_uri(store_uri, name), floor=int((ledger_before or {}).get("token", 0))) as lease:
            ledger = split_ledger.read_ledger(store_uri, name)
            where = storage.join(dataset_uri, "train.csv")
            fresh = split_ledger.check_ids(table["patient_id"], ledger, where=where, model_name=name,
                                           accept_fresh=config.accept_fresh_split)
            existing = optional_manifest(target)
            if existing is not None:
                result, assignments = _reuse(target, existing, fingerprint, config, work, ledger, fresh)
            else:
                result, assignments = _build(dataset_uri, store_uri, data_dir, target, fingerprint, config, work,
                                             ledger, fresh, table["patient_id"])
            entry = {"dataset_uri": dataset_uri, "dataset_fingerprint": fingerprint, "split_uri": target,
                     "split_sha256": result["split_sha256"], "reused": result["reused"], "fresh": fresh,
                     "patients": int(assignments["patient_id"].nunique())}
            updated = split_ledger.update(ledger, assignments, model_name=name, entry=entry, lease=lease)
            last = ((ledger or {}).get("history") or [{}])[-1]
            if (ledger is None or updated["patients"] != ledger["patients"]
                    or (last.get("dataset_uri"), last.get("split_sha256")) != (dataset_uri, entry["split_sha256"])):
                split_ledger.write_ledger(store_uri, name, updated, lease)
            result["ledger"] = {"uri": split_ledger.ledger_uri(store_uri, name), "fresh": fresh,
                                "patients_before": len((ledger or {}).get("patients", {}))}
        _log_counts(target, result)
    return result


def _reuse(target: str, existing: Manifest, fingerprint: str, config: PipelineParams, work: Path,
           ledger: dict[str, Any] | None, fresh: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    """The dataset was split before: reuse that split, unless it moves a patient the ledger
    knows (a split built for another model name), which is refused unless a fresh split is accepted."""
    summary = storage.get_json(storage.join(target, SPLIT_JSON), sha256=existing.objects[SPLIT_JSON].sha256)
    _warn_if_params_differ(target, summary, config)
    assignments, _ = read_split(fetch_split(target, work))
    moved = split_ledger.conflicts(assignments, ledger)
    if moved and not fresh:
        raise DataError(
            f"{target}: this split of the dataset puts {len(moved)} patients in another split than the split ledger "
            f"of model {config.model_name!r} (built for another model name?); train under the model name it was "
            "built for, or set accept_fresh_split=true once the ids changed"
        )
    result = _result(target, fingerprint, existing.objects[SPLIT_CSV].sha256, True, summary)
    log.info("dataset %s was split before: reusing %s", fingerprint[:12], target)
    for warning in result["warnings"]:
        log.warning("%s", warning)
    return result, assignments


def _build(
    dataset_uri: str,
    store_uri: str,
    data_dir: Path,
    target: str,
    fingerprint: str,
    config: PipelineParams,
    work: Path,
    ledger: dict[str, Any] | None,
    fresh: bool,
    table_ids: pd.Series,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Split the table and publish it: every patient of the ledger keeps its split; without a
    ledger (a store from before ledgers), those of the dataset URI's newest split do."""
    latest = latest_split(store_uri, dataset_uri)
    generation = 1 if latest is None else int(latest[1].metadata.get("generation", 1)) + 1
    previous: str | pd.DataFrame | None = None
    if fresh:
        log.warning("dataset %s: split afresh (accept_fresh_split)", dataset_uri)
    elif ledger is not None:
        previous = split_ledger.known_assignments(ledger)
        log.info("model %s: the %d patients of its split ledger keep their split", config.model_name,
                 len(ledger["patients"]))
    elif latest is not None:
        previous = str(fetch_split(latest[0], work))
        old_ids = read_split(previous)[0]["patient_id"]
        if split_ledger.check_ids(table_ids, {"patients": dict.fromkeys(old_ids, "train")},
                                  where=storage.join(dataset_uri, "train.csv"), model_name=config.model_name,
                                  accept_fresh=config.accept_fresh_split):
            previous = None
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
        previous=previous,
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
    return result, read_split(out)[0]
