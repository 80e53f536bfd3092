"""A component's inputs: its params, URIs, local working folders, and the fetching of splits,
datasets and checkpoints from storage into a local cache.

Every input is read from storage by URI and verified by sha256 (a manifest's, or the one
``mammo.storage`` recorded at upload); objects already cached and unchanged are not fetched
again, and nothing in the cache is trusted over storage. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from mammo import storage
from mammo.config import PipelineParams, RunConfig, stage_config
from mammo.config_files import format_validation_error
from mammo.data.layout import match_image_keys
from mammo.data.table import TABLE_NAME, read_table
from mammo.errors import ArtifactNotFoundError, ConfigError, DataError
from mammo.split import SPLIT_CSV, SPLIT_JSON
from mammo.storage import MANIFEST_NAME, Manifest
from mammo.storage.base import Store
from mammo.storage.cache import Wanted, fetch_all
from mammo.storage.integrity import sha256_file
from mammo.storage.uri import relative_key


# --- params, URIs, local folders ------------------------------------------------------------


def parse_params(params: Mapping[str, Any] | None) -> PipelineParams:
    """``PipelineParams`` from a plain dict; a bad key or value is a one-line ``ConfigError``."""
    try:
        return PipelineParams.model_validate(dict(params or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "params")) from None


def normalize_uri(uri: str | Path) -> str:
    """``s3://`` URIs without a trailing slash, local paths and ``file://`` URIs as absolute
    paths, so that the same location always reads the same (cache folders, split lookup)."""
    text = str(uri).strip()
    if not text:
        raise ConfigError("empty URI: expected s3://bucket/key or a local path")
    if storage.is_remote(text):
        return text.rstrip("/")
    return str(storage.local_path(text).expanduser().resolve())


def resolve_workdir(workdir: str | Path | None) -> Path:
    """The local scratch and cache directory: ``workdir``, else ``$MAMMO_CACHE_DIR``, else
    ``~/.cache/mammo``."""
    chosen = workdir or os.environ.get("MAMMO_CACHE_DIR") or Path.home() / ".cache" / "mammo"
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def last_segment(uri: str) -> str:
    """The last path segment of ``uri`` as a safe local file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:64] or "root"


def cache_dir(workdir: Path, kind: str, uri: str) -> Path:
    """The local folder of ``uri`` under ``workdir/kind``: its last segment (readable) and a
    hash of the whole URI (unique)."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return workdir / kind / f"{last_segment(uri)}-{digest}"


# --- fetching -------------------------------------------------------------------------------


def optional_manifest(prefix_uri: str) -> Manifest | None:
    """The manifest published at ``prefix_uri``, or None when nothing was published there."""
    try:
        return storage.read_manifest(prefix_uri)
    except ArtifactNotFoundError:
        return None


def fetch_split(split_uri: str, workdir: Path) -> Path:
    """A local copy of a published split (split.csv and split.json, verified by the manifest)."""
    local = cache_dir(workdir, "splits", split_uri)
    storage.fetch_from_manifest(split_uri, local, keys=[SPLIT_CSV, SPLIT_JSON])
    return local


def _dataset_objects(store: Store, dataset_uri: str, *, listing: bool) -> dict[str, Wanted]:
    """The dataset's objects by relative key: from its manifest when it has one (sha256 known),
    else from a listing (or, for the table alone, a stat), identified by ETag."""
    manifest = optional_manifest(dataset_uri)
    if manifest is not None:
        return {
            key: Wanted(storage.join(dataset_uri, key), key, sha256=entry.sha256)
            for key, entry in manifest.objects.items()
        }
    if listing:
        listed = [(relative_key(dataset_uri, info.uri), info) for info in store.list_info(dataset_uri)]
        return {key: Wanted(info.uri, key, etag=info.etag) for key, info in listed}
    info = store.stat(storage.join(dataset_uri, TABLE_NAME))
    return {TABLE_NAME: Wanted(info.uri, TABLE_NAME, etag=info.etag, sha256=info.sha256)}


def _image_objects(dataset_uri: str, table: pd.DataFrame, objects: dict[str, Wanted]) -> list[Wanted]:
    """The PNG of every table row, in any of the RSNA layouts (``mammo.data.layout``)."""
    ids = zip(table["patient_id"].astype(str), table["image_id"].astype(str), strict=True)
    keys, missing = match_image_keys(objects, ids)
    if missing:
        raise ArtifactNotFoundError(
            f"artifact not found: {dataset_uri}: no PNG for image_id {missing[0]} "
            f"({len(missing)} of {len(table)} images of {TABLE_NAME} missing)"
        )
    return [objects[key] for key in keys]


def read_dataset_table(data_dir: Path, dataset_uri: str) -> pd.DataFrame:
    """The validated table of a fetched dataset; errors name its URI, not the local cache."""
    try:
        return read_table(data_dir)
    except DataError as err:
        local = str(data_dir / TABLE_NAME)
        raise DataError(str(err).replace(local, storage.join(dataset_uri, TABLE_NAME))) from None


def fetch_dataset(dataset_uri: str, workdir: Path, *, images: bool) -> Path:
    """A local directory with the dataset's train.csv and, with ``images``, the PNG of every
    row (the engine checks that every row has its image).

    A local dataset is used in place. A remote one is cached under ``workdir/datasets``: when
    the dataset was published with a manifest, that lists the objects and their sha256;
    otherwise a listing does and each object is verified against the sha256 recorded when
    ``mammo.storage`` uploaded it (objects uploaded by other tools carry none and are taken as
    they are). Objects already in the cache and unchanged are not fetched again."""
    table_uri = storage.join(dataset_uri, TABLE_NAME)
    if not storage.is_remote(dataset_uri):
        if not storage.exists(table_uri):
            raise ArtifactNotFoundError(f"artifact not found: {table_uri}")
        return storage.local_path(dataset_uri)
    store = storage.open_store(dataset_uri)
    local = cache_dir(workdir, "datasets", dataset_uri)
    objects = _dataset_objects(store, dataset_uri, listing=images)
    if TABLE_NAME not in objects:
        raise ArtifactNotFoundError(f"artifact not found: {table_uri}")
    fetch_all(store, [objects[TABLE_NAME]], local)
    if images:
        table = read_dataset_table(local, dataset_uri)
        fetch_all(store, _image_objects(dataset_uri, table, objects), local)
    return local


def fetch_checkpoint(uri: str, workdir: Path) -> tuple[Path, str]:
    """Download a checkpoint; return its local path and sha256.

    Verified against the sha256 recorded at upload and, when its folder was published, against
    the manifest, which must list it. The local copy is
    ``workdir/checkpoints/<hash>/<folder name>/<file name>``, so the evaluator names candidates
    like ``baseline_trainer/best_auc.pt``."""
    folder, _, name = uri.rpartition("/")
    manifest = optional_manifest(folder)
    expected = None
    if manifest is not None:
        if name not in manifest.objects:
            raise ArtifactNotFoundError(
                f"artifact not found: {uri} (not listed in {storage.join(folder, MANIFEST_NAME)})"
            )
        expected = manifest.objects[name].sha256
    store = storage.open_store(uri)
    info = store.stat(uri)
    sha256 = expected or info.sha256
    local_dir = cache_dir(workdir, "checkpoints", folder) / last_segment(folder)
    [path] = fetch_all(store, [Wanted(uri, name, etag=info.etag, sha256=sha256)], local_dir)
    return path, sha256 or sha256_file(path)


# --- what a trainer or the evaluator starts from ----------------------------------------------


@dataclass(frozen=True)
class StageInputs:
    """Validated params, the local work folder, and local copies of the split and of the
    dataset with every image: what a trainer or the evaluator starts from."""

    params: PipelineParams
    work: Path
    data_dir: Path
    split_dir: Path

    def config(self, stage: str, out: Path) -> RunConfig:
        """The stage's config on these local copies, writing to ``out``."""
        return self.localize(stage_config(self.params, stage, split="", out=""), out)

    def localize(self, config: RunConfig, out: Path) -> RunConfig:
        """``config`` (built from these params) reading these local copies and writing to ``out``."""
        data = config.data.model_copy(update={"root": str(self.data_dir)})
        return config.model_copy(update={"data": data, "split": str(self.split_dir), "out": str(out)})

    def out_dir(self, out_uri: str) -> Path:
        """The local folder of an output URI (under ``runs/``)."""
        return cache_dir(self.work, "runs", out_uri)


def fetch_stage_inputs(
    *, params: PipelineParams, workdir: str | Path | None, dataset_uri: str, split_uri: str
) -> StageInputs:
    """Make the work folder, fetch the split and the dataset with its images (``params``:
    validated once, by the caller)."""
    work = resolve_workdir(workdir)
    split_dir = fetch_split(normalize_uri(split_uri), work)
    data_dir = fetch_dataset(normalize_uri(dataset_uri), work, images=True)
    return StageInputs(params, work, data_dir, split_dir)
