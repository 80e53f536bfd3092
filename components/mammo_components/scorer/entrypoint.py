"""Scorer: the production model (or any model) on a dataset of studies without labels, the way
``mammo predict`` scores them, with every input read from and every output written to storage.

The dataset is fetched table first, then the PNG of every row (verified against its manifest,
or the sha256 recorded at upload); the model through ``mammo.predict.resolve_model`` (verified
against the production manifest). Outputs: ``breasts.csv`` (probability and flag per breast),
``images.csv`` (per image), ``result.json`` and the manifest, written last. ``runtime`` runs the
network as ``mammo predict --runtime`` does (``mammo.runtimes``): eager, or ONNX Runtime on the
CPU with the ONNX file the production manifest lists, its sha256 checked before it is loaded.

A dataset of DICOM files (no table; an archive's export) is fetched whole and converted for
this run as ``mammo predict`` converts one (``mammo.predict.dicom_studies``): the outputs then
carry the archive's patient and image ids and study/SOP instance UIDs, and nothing else does.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from mammo import storage
from mammo.data.layout import match_image_keys
from mammo.errors import ArtifactNotFoundError
from mammo.storage.cache import Wanted, fetch_all
from mammo.storage.uri import relative_key
from mammo_components.inputs import cache_dir, normalize_uri, optional_manifest, parse_params, resolve_workdir
from mammo_components.publishing import publish_outputs
from mammo_components.telemetry import telemetry_step

log = logging.getLogger(__name__)
COMPONENT = "scorer"
BREASTS_NAME = "breasts.csv"
IMAGES_NAME = "images.csv"


def _objects(dataset_uri: str) -> dict[str, Wanted]:
    """The dataset's objects by relative key: from its manifest (sha256 known) or a listing."""
    manifest = optional_manifest(dataset_uri)
    if manifest is not None:
        return {key: Wanted(storage.join(dataset_uri, key), key, sha256=e.sha256) for key, e in manifest.objects.items()}
    store = storage.open_store(dataset_uri)
    listed = ((relative_key(dataset_uri, info.uri), info) for info in store.list_info(dataset_uri))
    return {key: Wanted(info.uri, key, etag=info.etag, sha256=info.sha256) for key, info in listed}


DICOM_SUFFIXES = (".dcm", ".dicom")


def fetch_dicoms(dataset_uri: str, work: Path) -> Path | None:
    """A dataset of DICOM files without a table, as a local folder (fetched and verified; a
    local dataset in place); None for any other dataset."""
    from mammo.data.layout import holds_dicoms
    from mammo.predict import TABLES

    if not storage.is_remote(dataset_uri):
        local = Path(storage.local_path(dataset_uri))
        tables = any((local / name).is_file() for name in TABLES)
        return local if local.is_dir() and not tables and holds_dicoms(local) else None
    objects = _objects(dataset_uri)
    keys = list(objects)
    if any(key in TABLES for key in keys) or any(key.lower().endswith(".png") for key in keys):
        return None
    dicoms = [key for key in keys if key.lower().endswith(DICOM_SUFFIXES)]
    if not dicoms:
        return None
    local = cache_dir(work, "datasets", dataset_uri)
    fetch_all(storage.open_store(dataset_uri), [objects[key] for key in dicoms], local)
    return local


def fetch_studies(dataset_uri: str, work: Path, table: str | None) -> Path:
    """The table to score, locally, with the PNG of every row beside it (a local dataset is
    used in place); returns the CSV's path."""
    from mammo.predict import TABLES, read_studies, table_file

    if not storage.is_remote(dataset_uri):
        return table_file(storage.local_path(dataset_uri), table)
    objects = _objects(dataset_uri)
    names = [table] if table else [name for name in TABLES if name in objects]
    if len(names) != 1 or names[0] not in objects:
        wanted = table or " or ".join(TABLES)
        raise ArtifactNotFoundError(
            f"artifact not found: {storage.join(dataset_uri, wanted)}"
            + (" (both tables present: choose one with --table)" if len(names) > 1 else "")
        )
    store = storage.open_store(dataset_uri)
    local = cache_dir(work, "datasets", dataset_uri)
    [csv] = fetch_all(store, [objects[names[0]]], local)
    studies = read_studies(csv)
    keys, missing = match_image_keys(objects, zip(studies["patient_id"], studies["image_id"], strict=True))
    if missing:
        raise ArtifactNotFoundError(
            f"artifact not found: {dataset_uri}: no PNG for image_id {missing[0]} ({len(missing)} of {len(studies)} missing)"
        )
    fetch_all(store, [objects[key] for key in keys], local)
    return csv


def run(
    *,
    dataset_uri: str,
    model_uri: str,
    out_uri: str,
    params: dict[str, Any],
    table: str | None = None,
    workdir: str | None = None,
    run_id: str | None = None,
    runtime: str = "eager",
) -> dict[str, Any]:
    """Score a dataset's studies with a model; publish breast- and image-level CSVs.

    The model is a production pointer, a checkpoint or a weights-only export, verified by sha256;
    flags use the threshold it records. Returns the result (README: Result).

    Args:
        dataset_uri: A folder with `test.csv` or `train.csv` (`patient_id`, `image_id`, `laterality`;
            `view`, `age`, ... kept; `cancer` optional) and the PNGs in any RSNA layout; or a folder of
            DICOM files without a table (an archive's export): converted for the run at the model's input
            size, the outputs then carry the archive's patient and image ids, study and SOP instance UIDs
            and accession numbers (as `mammo predict`, README: Using the production model).
        model_uri: The production pointer `<store>/models/<name>/production` (its manifest names the
            weights-only export, the checkpoint and the threshold), or any checkpoint or export.
            Verified by sha256 before it is loaded.
        out_uri: Output folder; the pipeline uses `<store>/scores/<name>/<UTC time>-<dataset>-<hash>`.
        params: `PipelineParams`: `device`, `batch_size`, `workers`.
        table: The CSV to score when the folder holds both `test.csv` and `train.csv` (default: the one
            it holds).
        workdir: Local scratch (default: `$MAMMO_CACHE_DIR` or the system's temp).
        run_id: Telemetry label.
        runtime: How the network runs, as `mammo predict --runtime`: `eager` (PyTorch, the computation
            the threshold was chosen on) or `onnx` (ONNX Runtime on the CPU with the `model-<sha12>.onnx`
            the production manifest lists, its sha256 checked before it is loaded; a model without one is
            exported for the run). Faster on CPU nodes, probabilities within 1e-4 of eager (README:
            Scoring on CPU nodes). `onnx` needs `device` `auto` or `cpu`.
    """
    from mammo.runtimes import check_runtime

    from mammo.data.layout import resolve_image_paths
    from mammo.predict import dicom_studies, read_studies, resolve_model, score_images, score_table, with_original_ids

    with telemetry_step(COMPONENT, run_id or out_uri.rstrip("/").rsplit("/", 1)[-1]):
        parsed = parse_params(params)
        check_runtime(runtime, parsed.device)
        work = resolve_workdir(workdir)
        out_uri = normalize_uri(out_uri)
        model = resolve_model(normalize_uri(model_uri), work)
        dicom_folder = None if table else fetch_dicoms(normalize_uri(dataset_uri), work)
        with contextlib.ExitStack() as stack:
            dicom = None if dicom_folder is None else stack.enter_context(
                dicom_studies(dicom_folder, model.export["image_size"], work, workers=parsed.workers))
            csv = dicom.csv if dicom is not None else fetch_studies(normalize_uri(dataset_uri), work, table)
            studies = read_studies(csv)
            studies["path"] = resolve_image_paths(csv, studies)
            probs = score_images(model, studies, device=parsed.device, batch_size=parsed.batch_size,
                                 workers=parsed.workers, runtime=runtime, workdir=work)
            images, breasts = score_table(model, studies, probs)
            if dicom is not None:
                images, breasts = with_original_ids(images, breasts, dicom.identifiers)
        out_dir = cache_dir(work, "runs", out_uri)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        breasts.to_csv(out_dir / BREASTS_NAME, index=False, float_format="%.6f")
        images.to_csv(out_dir / IMAGES_NAME, index=False, float_format="%.6f")
        flagged = None if model.threshold is None else int(breasts["flag"].sum())
        result = {
            "out_uri": out_uri, "dataset_uri": dataset_uri, "model": model.describe(), "runtime": runtime,
            "table": "DICOM files" if dicom is not None else csv.name,
            "images": int(len(images)), "scored_images": int(images["prob"].notna().sum()),
            "breasts": int(len(breasts)), "patients": int(breasts["patient_id"].nunique()),
            "flagged_breasts": flagged,
            "breasts_uri": storage.join(out_uri, BREASTS_NAME), "images_uri": storage.join(out_uri, IMAGES_NAME),
        }
        if dicom is not None:
            result["dicom"] = {"converted": dicom.converted, "skipped": dicom.skipped, "unreadable": dicom.unreadable}
        publish_outputs(out_dir, out_uri, result, {"component": COMPONENT, "model": result["model"]})
        log.info("scored %d breasts of %d patients with %s: %s flagged", result["breasts"], result["patients"],
                 model.uri, "n/a" if flagged is None else flagged)
    return result
