"""What every component does around its own work, written once.

Components share nothing but object storage: each one resolves its params and local working
directory, fetches its inputs by URI into a local cache (verified by sha256, unchanged objects
not fetched again), writes its outputs locally, and publishes them under its output URI with
``result.json`` and a manifest written last. Trainers also mirror their run directory to
storage while they train, so that a restarted pod resumes from the last finished epoch. Telemetry
goes to the Pushgateway, labelled with the component and the run id.

Torch-free: the trainers and the evaluator import the engine themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from pydantic import ValidationError

from mammo import storage
from mammo.config import PipelineParams, RunConfig, format_validation_error, lookup_metric, stage_configs
from mammo.data.table import TABLE_NAME, read_table
from mammo.errors import ArtifactNotFoundError, ConfigError, DataError
from mammo.split import SPLIT_CSV, SPLIT_JSON
from mammo.storage import MANIFEST_NAME, Manifest
from mammo.storage.atomic import atomic_file
from mammo.storage.base import Store, local_files
from mammo.storage.cache import Wanted, fetch_all
from mammo.storage.integrity import sha256_file
from mammo.storage.uri import relative_key
from mammo.telemetry import Telemetry

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
HISTORY_NAME = "history.json"
#: The checkpoint a trainer names as its best (the pipeline's contract): best validation AUC.
BEST_NAME = "best_auc.pt"
#: The stages of ``mammo.config.stage_configs``, in its order.
STAGES = ("baseline", "unfreeze", "evaluate")
#: Files a publication produces; a resumed run regenerates them instead of keeping old copies.
PUBLICATION_FILES = (MANIFEST_NAME, RESULT_NAME)


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


def stage_config(params: PipelineParams, stage: str, *, data: Path, split: Path, out: Path) -> RunConfig:
    """One stage's config (``baseline``, ``unfreeze`` or ``evaluate``) on local copies."""
    local = params.model_copy(update={"data": str(data)})
    configs = stage_configs(local, split=str(split), runs={name: str(out) for name in STAGES})
    return dict(zip(STAGES, configs, strict=True))[stage]


def write_json(path: Path, payload: Any) -> None:
    with atomic_file(path) as out:
        out.write((json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


# --- inputs ---------------------------------------------------------------------------------


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
    """The PNG of every table row, in any of the RSNA layouts (``{patient}/{image}.png``,
    ``{image}.png``, ``{patient}_{image}.png``, in any subfolder)."""
    by_stem: dict[str, list[Wanted]] = {}
    for key, wanted in objects.items():
        if key.lower().endswith(".png"):
            by_stem.setdefault(PurePosixPath(key).stem, []).append(wanted)
    chosen: dict[str, Wanted] = {}
    missing: list[str] = []
    for patient, image in zip(table["patient_id"], table["image_id"], strict=True):
        found = by_stem.get(image) or by_stem.get(f"{patient}_{image}")
        if not found:
            missing.append(image)
        for wanted in found or []:
            chosen[wanted.rel] = wanted
    if missing:
        raise ArtifactNotFoundError(
            f"artifact not found: {dataset_uri}: no PNG for image_id {missing[0]} "
            f"({len(missing)} of {len(table)} images of {TABLE_NAME} missing)"
        )
    return list(chosen.values())


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


# --- outputs ----------------------------------------------------------------------------------


def publish_outputs(out_dir: Path, out_uri: str, result: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write ``result.json`` beside the outputs, then publish the folder: objects first, the
    manifest last, so readers see all of it or none."""
    write_json(out_dir / RESULT_NAME, result)
    storage.publish(out_dir, out_uri, metadata=metadata)
    log.info("published %s", out_uri)


def sync_down(run_uri: str, run_dir: Path) -> None:
    """Make ``run_dir`` hold what storage holds for this run: the state of an earlier attempt
    (to resume from), or nothing. Storage is the truth; local leftovers are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fetched = set(storage.download_prefix(run_uri, run_dir))
    for path in local_files(run_dir).values():
        if path not in fetched or path.name in PUBLICATION_FILES:
            path.unlink()
    if fetched:
        log.info("%s: %d files of an earlier attempt fetched to resume from", run_uri, len(fetched))


class RunMirror:
    """Mirrors a training run directory to ``run_uri`` while the engine writes it.

    Best and top-k checkpoints go up as they are saved. The epoch's resume point
    (``resume_name``, i.e. ``last.pt``) and the small files (history, config) go up at the end
    of the epoch, after them, and top-k files the engine evicted are deleted only after that:
    storage never holds a resume point whose best/top-k files are missing, and a killed pod
    loses at most the epoch it was in. A file with the content of one already uploaded
    (the best and top-k names of one epoch) is copied server-side instead of sent again.
    """

    def __init__(self, run_dir: Path, run_uri: str, resume_name: str) -> None:
        self.run_dir = run_dir
        self.run_uri = run_uri
        self.resume_name = resume_name
        self._pending: Path | None = None
        self._evicted: list[str] = []
        self._uploaded: dict[str, str] = {}  # name -> sha256 of what this mirror put there
        self._small: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) last sent

    def on_checkpoint(self, path: Path, name: str | None) -> None:
        """The engine's ``on_checkpoint`` callback: ``name`` None means ``path`` was deleted."""
        if name is None:
            self._evicted.append(path.name)
        elif name == self.resume_name:
            self._pending = path
        else:
            self._upload(path)

    def end_epoch(self) -> None:
        """Commit the epoch: small files, then the resume point, then evictions."""
        for rel, path in local_files(self.run_dir).items():
            stat = path.stat()
            if not rel.endswith(".pt") and self._small.get(rel) != (stat.st_size, stat.st_mtime_ns):
                storage.put_file(path, storage.join(self.run_uri, rel))
                self._small[rel] = (stat.st_size, stat.st_mtime_ns)
        if self._pending is not None:
            self._upload(self._pending)
            self._pending = None
        for name in self._evicted:
            storage.delete(storage.join(self.run_uri, name))
            self._uploaded.pop(name, None)
        self._evicted.clear()

    def _upload(self, path: Path) -> None:
        digest = sha256_file(path)
        uri = storage.join(self.run_uri, path.name)
        twin = next((n for n, d in self._uploaded.items() if d == digest and n != path.name), None)
        if twin is not None:
            storage.copy(storage.join(self.run_uri, twin), uri)
        else:
            storage.put_file(path, uri)
        self._uploaded[path.name] = digest


# --- telemetry ------------------------------------------------------------------------------


def run_id_from_uri(uri: str) -> str | None:
    """``<run-id>`` of ``.../runs/<run-id>/<component>``; None for URIs outside that layout."""
    parts = [p for p in str(uri).split("/") if p]
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "runs":
            return parts[i + 1]
    return None


@contextmanager
def telemetry_step(component: str, run_id: str | None) -> Iterator[Telemetry | None]:
    """The step's telemetry: success/failure and duration are pushed when the block ends.
    Without a run id there is nothing to label the series with, so nothing is pushed."""
    if run_id is None:
        log.info("%s: no run id (none given, none in the output URI): telemetry off", component)
        yield None
        return
    telemetry = Telemetry(component, run_id)
    with telemetry.step():
        yield telemetry


def push_epoch(telemetry: Telemetry | None, record: Mapping[str, Any]) -> None:
    """Push one epoch record of the engine (``on_epoch``); image-level val metrics, breast pF1."""
    if telemetry is None:
        return
    val = record["val"]
    telemetry.epoch(
        int(record["epoch"]),
        train_loss=record["train_loss"],
        val_loss=lookup_metric(val, "image.loss"),
        val_auc=lookup_metric(val, "image.auc"),
        val_pr_auc=lookup_metric(val, "image.pr_auc"),
        val_pf1=lookup_metric(val, "breast.pf1"),
        lr=float(record["lr"]),
        duration_s=float(record["epoch_seconds"]),
        images_per_s=float(record["images_per_second"]),
    )


# --- the trainers ---------------------------------------------------------------------------

#: ``train_baseline`` / ``train_unfreeze``: (config, resume, on_checkpoint, on_epoch) -> summary.
TrainFn = Callable[..., dict[str, Any]]


def _best_metrics(run_dir: Path, last: str) -> tuple[str, dict[str, float | None]]:
    """The checkpoint named as best (``best_auc.pt``: the first epoch with the highest
    validation AUC, as the engine keeps it; the last one when AUC was never defined) and the
    validation metrics of its epoch."""
    history = json.loads((run_dir / HISTORY_NAME).read_text())
    aucs = [lookup_metric(r["val"], "image.auc") for r in history]
    defined = [auc for auc in aucs if auc is not None]
    record, name = history[-1], last
    if defined and (run_dir / BEST_NAME).exists():
        record, name = history[aucs.index(max(defined))], BEST_NAME
    else:
        log.warning("validation AUC was never defined (one class in val?): naming %s as best", last)
    val = record["val"]
    return name, {
        "auc": lookup_metric(val, "image.auc"),
        "pr_auc": lookup_metric(val, "image.pr_auc"),
        "pf1": lookup_metric(val, "breast.pf1"),
        "loss": lookup_metric(val, "image.loss"),
    }


def run_trainer(
    *,
    component: str,
    stage: str,
    train: TrainFn,
    dataset_uri: str,
    split_uri: str,
    run_uri: str,
    params: Mapping[str, Any] | None,
    workdir: str | Path | None,
    run_id: str | None,
    init_uri: str | None = None,
) -> dict[str, Any]:
    """Fetch inputs, resume from storage, train while mirroring, publish; return the result."""
    from mammo.engine.checkpoint import LAST

    with telemetry_step(component, run_id or run_id_from_uri(run_uri)) as telemetry:
        config_params = parse_params(params)
        work = resolve_workdir(workdir)
        run_uri = normalize_uri(run_uri)
        split_dir = fetch_split(normalize_uri(split_uri), work)
        data_dir = fetch_dataset(normalize_uri(dataset_uri), work, images=True)
        run_dir = cache_dir(work, "runs", run_uri)
        sync_down(run_uri, run_dir)
        config = stage_config(config_params, stage, data=data_dir, split=split_dir, out=run_dir)
        init: dict[str, str] = {}
        if init_uri is not None:
            init_uri = normalize_uri(init_uri)
            init_path, init_sha = fetch_checkpoint(init_uri, work)
            config = config.model_copy(update={"init": str(init_path)})
            init = {"init_uri": init_uri, "init_sha256": init_sha}
        mirror = RunMirror(run_dir, run_uri, LAST)

        def on_epoch(record: dict[str, Any]) -> None:
            mirror.end_epoch()
            push_epoch(telemetry, record)

        summary = train(config, resume=True, on_checkpoint=mirror.on_checkpoint, on_epoch=on_epoch)
        best_name, metrics = _best_metrics(run_dir, LAST)
        checkpoints = {
            path.name: {"uri": storage.join(run_uri, path.name), "sha256": sha256_file(path)}
            for path in sorted(run_dir.glob("*.pt"))
        }
        result = {
            "run_uri": run_uri,
            "best_uri": checkpoints[best_name]["uri"],
            "best_sha256": checkpoints[best_name]["sha256"],
            "checkpoints": checkpoints,
            "epochs_run": summary["epochs_run"],
            "stopped_early": summary["stopped_early"],
            "metrics": metrics,
            **init,
        }
        publish_outputs(run_dir, run_uri, result, {"component": component, "metrics": metrics})
    return result


def record_trainer_artifacts(result: Mapping[str, Any], model: Any, metrics: Any) -> None:
    """Fill a pipeline step's KFP ``Model`` artifact (metadata: the best checkpoint's URI,
    sha256 and validation metrics; file: the whole result) and ``Metrics`` from a trainer's
    result. Duck-typed on the artifacts, so this package does not depend on kfp."""
    model.metadata.update(
        {
            "uri": result["best_uri"],
            "sha256": result["best_sha256"],
            "metrics": result["metrics"],
            "epochs_run": result["epochs_run"],
            "stopped_early": result["stopped_early"],
        }
    )
    Path(model.path).write_text(json.dumps(result, indent=2))
    for name, value in result["metrics"].items():
        if isinstance(value, (int, float)):
            metrics.log_metric(f"val.{name}", float(value))
