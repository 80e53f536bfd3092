"""Preprocessor: a dataset of DICOM files in storage to the PNG dataset the pipeline reads.

``run`` converts everything and merges (``shard`` None), converts one shard of several, or
(``merge_only``) writes the dataset's table, record and manifest from what the shards recorded;
``plan`` checks the input and names the shards. The conversion itself is
``mammo.dicom.preprocess`` (the same as ``mammo data dicom``); see its docstring for the
layout, the incremental reruns and the journal. Torch-free.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from mammo import storage
from mammo.dicom.identity import load_key
from mammo.dicom.options import PreprocessConfig
from mammo.dicom.preprocess import available_cpus, convert_shard, list_sources, merge, preprocess
from mammo.errors import ConfigError, DataError
from mammo.imagesize import size_text
from mammo_components.inputs import last_segment, normalize_uri
from mammo_components.telemetry import telemetry_step

log = logging.getLogger(__name__)
COMPONENT = "preprocessor"


def output_uri(store_uri: str, dataset_uri: str, options: PreprocessConfig) -> str:
    """Where the PNG dataset of ``dataset_uri`` with these pixel settings lives:
    ``<store>/datasets/<name>-<hash of the source URI>/png-<HxW>-<settings digest>``. Other
    settings, another folder (both stay usable); the same ones, the same folder (incremental)."""
    source = normalize_uri(dataset_uri)
    tag = hashlib.sha256(source.encode()).hexdigest()[:8]
    return storage.join(
        normalize_uri(store_uri), "datasets", f"{last_segment(source)}-{tag}",
        f"png-{size_text(options.image_size)}-{options.digest()[:12]}",
    )


def plan(*, dataset_uri: str, shards: int) -> list[int]:
    """The shard indices to run, after checking that the input holds DICOM files."""
    if shards < 1:
        raise ConfigError(f"preprocess_shards must be at least 1, got {shards}")
    source = normalize_uri(dataset_uri)
    found = list_sources(source)
    if not found:
        raise DataError(f"{source}: no DICOM files (*.dcm, *.dicom) found")
    log.info("%s: %d DICOM file(s), %d shard(s)", source, len(found), shards)
    return list(range(shards))


def run(
    *,
    dataset_uri: str,
    out_uri: str,
    options: dict[str, Any] | PreprocessConfig | None = None,
    csv_uri: str | None = None,
    shard: int | None = None,
    shards: int = 1,
    merge_only: bool = False,
    workers: int | None = None,
    workdir: str | None = None,
    run_id: str | None = None,
    pseudonym_key_file: str | None = None,
    identifier_map: str | None = None,
) -> dict[str, Any]:
    """Convert DICOMs in storage to the PNG dataset the pipeline reads (all, one shard, or merge).

    Converts (all, or shard `shard` of `shards`) and/or merges; returns the counts. Only new or
    changed files are converted.

    Args:
        dataset_uri: Folder or prefix of the DICOM files (`--dataset`).
        out_uri: Folder or prefix of the PNG dataset (`--out`; the pipeline: `output_uri(...)`, README).
        options: The conversion settings and skip policy (`PreprocessConfig`, the options of
            `mammo data dicom`: `--image-size`, `--bits`, `--no-crop`, `--margin`, `--align`, `--voi`,
            `--window-index`, `--bad-files`, `--png-compression`, `--max-pixels`, `--views`,
            `--view-modifiers`, `--implants`, `--for-processing`, `--keep-identifiers`; in the pipeline
            its preprocess_set, e.g. `keep_identifiers=true` for RSNA).
        csv_uri: Table of the images (`--csv`; default: `<dataset>/train.csv` when present).
        shard: Convert only this shard (0-based) of `shards` (`--shard`).
        shards: How many shards the files are divided into (`--shards`; default 1: everything).
        merge_only: Only write the table, the record and the manifest, after every shard (`--merge-only`).
        workers: Converting processes (`--workers`; default: the CPUs this pod may use).
        workdir: Scratch folder (`--workdir`; default: `$MAMMO_CACHE_DIR` or the system's temp).
        run_id: Telemetry label (`--run-id`).
        pseudonym_key_file: File holding the site key of the pseudonyms, e.g. a mounted Secret
            (`--pseudonym-key-file`); default: the environment variable `MAMMO_PSEUDONYM_KEY`. Without
            either, refused in one line unless `keep_identifiers`.
        identifier_map: Where to write the map from pseudonyms back to the original ids and UIDs, never
            inside `out_uri` (`--identifier-map`; whole runs only).
    """
    config = options if isinstance(options, PreprocessConfig) else PreprocessConfig.model_validate(options or {})
    source, out = normalize_uri(dataset_uri), normalize_uri(out_uri)
    count = available_cpus() if workers is None else workers
    scratch = workdir or os.environ.get("MAMMO_CACHE_DIR")
    key = None if config.keep_identifiers else load_key(pseudonym_key_file or None)
    if identifier_map and (merge_only or shard is not None):
        raise ConfigError("--identifier-map: only with a whole run (no --shard, no --merge-only)")
    with telemetry_step(COMPONENT, run_id):
        if merge_only:
            return merge(source, out, config, csv=csv_uri, key=key)
        if shard is None:
            return preprocess(source, out, config, csv=csv_uri, workers=count, workdir=scratch, key=key,
                              identifier_map=identifier_map or None)
        return convert_shard(source, out, config, csv=csv_uri, workers=count, shard=shard, shards=shards,
                             workdir=scratch, key=key)
