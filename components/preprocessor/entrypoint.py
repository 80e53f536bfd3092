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
    """Convert (all, or shard ``shard`` of ``shards``) and/or merge; returns the counts. The
    pseudonyms' key: ``pseudonym_key_file`` (a mounted Secret), else ``$MAMMO_PSEUDONYM_KEY``;
    refused in one line without one unless ``keep_identifiers`` is set."""
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
