"""The preprocessor's KFP steps (``preprocessor.component``): with ``dataset_format: dicom`` the
pipeline runs ``run_plan_step`` (check the input, name the shards), one ``run_step`` per shard
in a ``dsl.ParallelFor``, then ``run_merge_step``, whose output - the PNG dataset's URI - is what
the split builder and the trainers read; with ``png``, ``run_png_step`` hands the dataset URI on.

The PNG dataset's URI is a function of the source URI and the pixel settings
(``entrypoint.output_uri``), so every step computes it alike and a rerun on the same DICOMs
converts only what changed. None of these steps is cached: the files behind the URI can change.

Identifiers: ``run_step`` and ``run_merge_step`` pseudonymise patient and image ids with the
site key from the environment variable ``MAMMO_PSEUDONYM_KEY`` or the file named by their
``pseudonym_key_file`` input (a mounted Kubernetes Secret), and refuse in one line without one
unless ``preprocess_set`` holds ``keep_identifiers=true`` (input de-identified already, RSNA).
Both steps of one run must see the same key.
"""

from __future__ import annotations

import logging
from mammo import storage
from mammo.config import preprocess_config
from mammo.console import setup_logging
from mammo.dicom.identity import load_key, pseudonyms_for
from mammo.dicom.options import PreprocessConfig
from mammo.errors import ArtifactNotFoundError
from mammo_components.inputs import normalize_uri, parse_params
from mammo_components.preprocessor.entrypoint import output_uri, plan, run

log = logging.getLogger(__name__)


def step_options(image_size: str, preprocess_set: list) -> PreprocessConfig:
    """The conversion settings of a run: its image size, then ``preprocess_set``; a bad key or
    value is a one-line error."""
    return preprocess_config(parse_params({"image_size": image_size, "preprocess_set": list(preprocess_set)}))


def run_plan_step(*, dataset_uri: str, store_uri: str, image_size: str, preprocess_shards: int, preprocess_set: list,
                  pseudonym_key_file: str = "") -> list:
    """Check settings, key and input (a typo or a missing key fails in seconds, before any
    shard pod starts); the shard indices for the ParallelFor."""
    setup_logging()
    options = step_options(image_size, preprocess_set)
    if not options.keep_identifiers:
        pseudonyms_for(False, load_key(pseudonym_key_file or None))
    shards = plan(dataset_uri=dataset_uri, shards=preprocess_shards)
    log.info("PNG dataset: %s", output_uri(store_uri, dataset_uri, options))
    return shards


def run_step(*, dataset_uri: str, store_uri: str, image_size: str, preprocess_set: list, shard: int, shards: int, pseudonym_key_file: str = "") -> dict:
    """Convert shard ``shard`` of ``shards`` (what is new or changed); its counts."""
    setup_logging()
    options = step_options(image_size, preprocess_set)
    return run(
        dataset_uri=dataset_uri, out_uri=output_uri(store_uri, dataset_uri, options), options=options,
        shard=shard, shards=shards, pseudonym_key_file=pseudonym_key_file or None,
    )


def run_merge_step(*, dataset_uri: str, store_uri: str, image_size: str, preprocess_set: list, parts: list, pseudonym_key_file: str = "") -> str:
    """Write the PNG dataset's table, record and manifest; its URI (the split builder's input)."""
    setup_logging()
    options = step_options(image_size, preprocess_set)
    out = output_uri(store_uri, dataset_uri, options)
    result = run(dataset_uri=dataset_uri, out_uri=out, options=options, merge_only=True,
                 pseudonym_key_file=pseudonym_key_file or None)
    converted = sum(int(part.get("converted", 0)) for part in parts if isinstance(part, dict))
    log.info(
        "%s: %d rows (%d converted now, %d bad file(s), %d skipped by the policy %s, %d tag mismatch(es))",
        out, result["rows"], converted, result["bad_files"], result["skipped_files"], result["skipped"],
        result["tag_mismatches"],
    )
    return out


def run_png_step(*, dataset_uri: str) -> str:
    """``dataset_format: png``: the dataset as given, once its table is found."""
    setup_logging()
    uri = normalize_uri(dataset_uri)
    table = storage.join(uri, "train.csv")
    if not storage.exists(table):
        raise ArtifactNotFoundError(
            f"artifact not found: {table} (for DICOM input set dataset_format=dicom)"
        )
    return dataset_uri
