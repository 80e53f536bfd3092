"""``mammo predict``: score studies that have no labels with a trained model.

The model is a production pointer (``s3://bucket/models/NAME/production`` or its local twin:
the manifest names the checkpoint, its weights-only export and the threshold chosen when it was
evaluated), a training checkpoint or a weights-only export (``mammo.export``), local or in
object storage, verified by sha256 before it is loaded (the manifest's, the one recorded at
upload, or a published folder's manifest beside a local file).

The data is a table with ``patient_id``, ``image_id``, ``laterality`` (``view`` and any other
column are kept; ``cancer`` is optional, kept as ``label`` when present) and its PNGs in any
RSNA layout (``mammo.data.layout``): a directory holding ``test.csv`` or ``train.csv``, or the
CSV file itself. Images are decoded, resized and normalised exactly as in evaluation and scored
in batches on the chosen device, with a progress bar.

A folder of DICOM files (a hospital's export, no PNGs) is scored too: the preprocessor
converts it at the model's input size into a scratch folder of this run (``dicom_studies``),
and the outputs carry the original patient and image ids with the study and SOP instance UIDs
and accession numbers a worklist needs. Those identifiers go only into predict's own outputs.

``runtime`` chooses how the network runs (``mammo.runtimes``): eager PyTorch (the default, the
computation evaluation chose the threshold on) or ONNX Runtime on the CPU, with the ONNX file
the production manifest lists (or one exported for the run), its sha256 checked before it is
loaded.

Output: one CSV per breast (probability = mean of its images, or max as the model records,
``flag`` = probability >= the model's threshold) at ``out``, and one per image beside it
(``<stem>_images.csv``), locally or in object storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo import storage
from mammo.config import EvalConfig
from mammo.config_files import load_config
from mammo.data.layout import holds_dicoms, resolve_image_paths
from mammo.data.table import load_csv, validate_table
from mammo.ensemble import ENSEMBLE_FILE
from mammo.errors import ConfigError, DataError
from mammo.imagesize import size_text
from mammo.metrics import aggregate_breasts
from mammo.outputs import check_output, csv_header
from mammo.storage import MANIFEST_NAME

log = logging.getLogger(__name__)

TABLES = ("test.csv", "train.csv")
IMAGE_COLUMNS = ("patient_id", "image_id", "laterality", "view")


@dataclass(frozen=True)
class ScoringModel:
    """A model ready to score: its export-shaped payload (``mammo.export``) and where it came from."""

    export: dict[str, Any]
    uri: str
    sha256: str | None
    kind: str  # production, checkpoint or export
    threshold: float | None
    onnx: tuple[str, str] | None = None  # (uri, sha256) of the ONNX file a production manifest lists

    @property
    def breast_aggregation(self) -> str:
        return str(self.export.get("breast_aggregation") or "mean")

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri, "sha256": self.sha256, "kind": self.kind, "threshold": self.threshold,
            "backbone": self.export["model_config"]["backbone"], "image_size": size_text(self.export["image_size"]),
            "breast_aggregation": self.breast_aggregation, "onnx": None if self.onnx is None else self.onnx[0],
        }


@dataclass(frozen=True)
class EnsembleModel(ScoringModel):
    """An ensemble (``mammo.ensemble``: an ``ensemble.json`` whose members are each verified, or
    the one file of their weights, ``ensemble.pt``, verified as a whole, as production holds
    it): its members, scored alone and averaged per image; ``export`` is the first member's (its input size and
    channels describe the ensemble), the breast rule and threshold are the ensemble file's."""

    members: tuple[ScoringModel, ...] = ()
    aggregation: str = "mean"

    @property
    def breast_aggregation(self) -> str:
        return self.aggregation


def _cache_path(work: Path, uri: str) -> Path:
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return work / "models" / digest / uri.rstrip("/").rsplit("/", 1)[-1]


def _fetch(uri: str, work: Path, sha256: str | None) -> Path:
    """A local, verified copy of ``uri`` (a local file is used in place, after verification)."""
    if not storage.is_remote(uri):
        path = storage.local_path(uri)
        if not path.is_file():
            raise ConfigError(f"--model {uri}: no such file or production folder")
        if sha256 is not None:
            from mammo.storage.integrity import sha256_file, verify

            verify(uri, sha256_file(path), sha256)
        return path
    local = _cache_path(work, uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    storage.get_file(uri, local, sha256=sha256)
    return local


def _manifest_sha(uri: str) -> str | None:
    """The sha256 a published folder's manifest records for ``uri``, if it has one."""
    folder, _, name = uri.rstrip("/").rpartition("/")
    if not folder or not storage.exists(storage.join(folder, MANIFEST_NAME)):
        return None
    manifest = storage.read_manifest(folder)
    entry = manifest.objects.get(name)
    if entry is None:
        raise ConfigError(f"--model {uri}: not listed in {storage.join(folder, MANIFEST_NAME)}")
    return entry.sha256


def resolve_model(ref: str, workdir: str | Path | None = None, threshold: float | None = None) -> ScoringModel:
    """Load the model ``ref`` names (production pointer, checkpoint or export; local or remote),
    verified by sha256. ``threshold`` overrides the recorded one."""
    from mammo.export import load_model_file, onnx_name

    work = Path(workdir or Path(tempfile.gettempdir()) / "mammo-predict")
    ref = str(ref).rstrip("/") if storage.is_remote(str(ref)) else str(storage.local_path(str(ref)).resolve())
    if ref.endswith(f"/{ENSEMBLE_FILE}"):
        return resolve_ensemble(ref, work, threshold)
    if storage.exists(storage.join(ref, MANIFEST_NAME)):
        manifest = storage.read_manifest(ref)
        meta = manifest.metadata
        key = meta.get("export") if meta.get("export") in manifest.objects else meta.get("checkpoint")
        if not key or key not in manifest.objects:
            raise ConfigError(f"--model {ref}: its manifest names no model file (is it a production folder?)")
        uri = storage.join(ref, key)
        sha = manifest.objects[key].sha256
        path = _fetch(uri, work, sha)
        export, held = load_model_file(path)
        recorded = meta.get("threshold", export.get("threshold"))
        kind = "production"
        onnx_key = onnx_name(str(meta.get("sha256") or ""))
        onnx = (storage.join(ref, onnx_key), manifest.objects[onnx_key].sha256) if onnx_key in manifest.objects else None
    else:
        sha = _manifest_sha(ref)
        path = _fetch(ref, work, sha)
        uri = ref
        export, kind = load_model_file(path)
        held = kind
        recorded = export.get("threshold")
        onnx = None
        if sha is None:
            from mammo.storage.integrity import sha256_file

            sha = sha256_file(path)
    if threshold is not None:
        chosen = _probability(threshold, "--threshold")
    else:
        chosen = None if recorded is None else _probability(recorded, f"{uri}: its recorded threshold")
    if chosen is None:
        log.warning("%s records no operating threshold: flags left empty (give --threshold)", ref)
    if held == "ensemble":  # one file of members' exports (mammo.export.write_ensemble), verified above as a whole
        members = tuple(ScoringModel(member, f"{uri}#member-{i}", member["source"].get("sha256"), "ensemble member", None)
                        for i, member in enumerate(export["members"], start=1))
        return EnsembleModel(members[0].export, uri, sha, kind, chosen, members=members,
                             aggregation=str(export.get("breast_aggregation") or "mean"))
    return ScoringModel(export, uri, sha, kind, chosen, onnx)


def resolve_ensemble(ref: str, work: Path, threshold: float | None = None) -> EnsembleModel:
    """An ``ensemble.json`` (the file checked against its folder's manifest when published):
    every member's bytes are verified against the sha256 the file lists before it is loaded
    (``IntegrityError`` naming the member otherwise). ``threshold`` overrides the file's."""
    from mammo.ensemble import member_ref, read_ensemble_file
    from mammo.export import load_model_file

    path = _fetch(ref, work, _manifest_sha(ref))
    content = read_ensemble_file(path, f"--model {ref}")
    members = []
    for member in content["members"]:
        uri = member_ref(member, ref)
        export, kind = load_model_file(_fetch(uri, work, member["sha256"]))  # verified, then loaded
        members.append(ScoringModel(export, uri, member["sha256"], kind, None))
    recorded = content.get("threshold") if threshold is None else threshold
    chosen = None if recorded is None else _probability(recorded, f"--model {ref}: its threshold")
    if chosen is None:
        log.warning("%s records no operating threshold: flags left empty (give --threshold)", ref)
    from mammo.storage.integrity import sha256_file

    return EnsembleModel(members[0].export, ref, sha256_file(path), "ensemble", chosen, members=tuple(members),
                         aggregation=str(content.get("breast_aggregation") or "mean"))


def _probability(value: Any, what: str) -> float:
    """A threshold: a finite number in [0, 1] (a probability), or ``ConfigError`` naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ConfigError(f"{what} {value!r}: must be a probability between 0 and 1")
    return number


# --- data -----------------------------------------------------------------------------------


def table_file(data: str | Path, table: str | None = None) -> Path:
    """The CSV to score: ``data`` itself when it is a file, else ``table`` in it, else the one
    of test.csv and train.csv it holds."""
    path = Path(data)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"--data {data}: no such directory or file")
    if table is not None:
        chosen = path / table
        if not chosen.is_file():
            raise DataError(f"--data {data}: no {table} in it")
        return chosen
    present = [path / name for name in TABLES if (path / name).is_file()]
    if not present:
        raise DataError(f"--data {data}: holds neither {' nor '.join(TABLES)}; give the CSV with --table")
    if len(present) > 1:
        raise DataError(f"--data {data}: holds both {' and '.join(TABLES)}; choose one with --table")
    return present[0]


#: Columns predict adds to its outputs; an input table must not bring its own.
OUTPUT_COLUMNS = ("breast_id", "split", "prob", "flag", "threshold", "label", "n_images")


def read_studies(csv: str | Path) -> pd.DataFrame:
    """The table to score, validated like a training table except that ``cancer`` is optional."""
    path = Path(csv)
    table = load_csv(path)
    written = [c for c in table.columns if c in OUTPUT_COLUMNS]
    if written:
        raise DataError(f"{path}: column {written[0]!r} is one predict writes (its outputs join on them); rename it")
    labelled = "cancer" in table.columns
    validate_table(table if labelled else table.assign(cancer="0"), str(path))
    for column in ("patient_id", "image_id", "laterality"):
        table[column] = table[column].str.strip()
    if labelled:
        table["cancer"] = pd.to_numeric(table["cancer"].str.strip()).astype("int64")
    return table.reset_index(drop=True)


def fetch_dataset(data: str, workdir: Path) -> Path:
    """A local copy of a dataset in object storage (every object verified on download); a
    local dataset is used in place."""
    if not storage.is_remote(data):
        return Path(data)
    local = workdir / "datasets" / hashlib.sha256(data.encode()).hexdigest()[:12]
    storage.download_prefix(data, local)
    return local


#: What the outputs of a DICOM folder carry back, from the identifier map of the conversion.
WORKLIST_COLUMNS = ("study_instance_uid", "sop_instance_uid", "accession_number", "source")


@dataclass(frozen=True)
class DicomStudies:
    """A DICOM folder converted for scoring: the table to score and the way back from the
    conversion's pseudonyms to the archive's identifiers."""

    csv: Path
    identifiers: pd.DataFrame
    converted: int
    skipped: dict[str, int]
    unreadable: int


@contextlib.contextmanager
def dicom_studies(folder: Path, image_size: Any, work: Path, *, workers: int = 0) -> Iterator[DicomStudies]:
    """The DICOMs of ``folder`` as a PNG dataset at ``image_size``, converted by the
    preprocessor with its default settings (unreadable and out-of-policy files skipped and
    counted) into a scratch folder of this run, removed at the end. The ids are pseudonymised
    with a key of this run only and mapped back from the run's own identifier map, so no
    original identifier is written anywhere but predict's outputs."""
    from mammo.dicom.options import PreprocessConfig
    from mammo.dicom.preprocess import preprocess

    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mammo-predict-dicom-", dir=work))
    try:
        map_file = scratch / "identifiers.csv"
        result = preprocess(
            str(folder), str(scratch / "png"), PreprocessConfig(image_size=image_size, bad_files="skip"),
            workers=workers, workdir=scratch / "tmp", key=secrets.token_bytes(32), identifier_map=str(map_file),
        )
        identifiers = pd.read_csv(map_file, dtype=str, keep_default_na=False)
        skipped = {str(reason): int(n) for reason, n in dict(result.get("skipped") or {}).items()}
        yield DicomStudies(scratch / "png" / "train.csv", identifiers, len(identifiers), skipped,
                           int(result.get("bad_files") or 0))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def with_original_ids(images: pd.DataFrame, breasts: pd.DataFrame, identifiers: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The scored rows with the archive's patient and image ids in place of the conversion's
    pseudonyms, and the worklist columns beside them (a breast: its studies, ``;``-joined)."""
    ids = identifiers.rename(columns={"patient_id": "_patient", "image_id": "_image"})
    images = images.merge(
        ids[["_patient", "_image", "original_patient_id", "original_image_id", *WORKLIST_COLUMNS]],
        left_on=["patient_id", "image_id"], right_on=["_patient", "_image"], how="left", validate="one_to_one",
    )
    patients = dict(zip(ids["_patient"], ids["original_patient_id"], strict=False))
    studies = (
        images.groupby(["patient_id", "laterality"])["study_instance_uid"]
        .agg(lambda uids: ";".join(sorted(set(uids))))
        .rename("study_instance_uid").reset_index()
    )
    breasts = breasts.merge(studies, on=["patient_id", "laterality"], how="left")
    images = images.drop(columns=["_patient", "_image", "patient_id", "image_id"]).rename(
        columns={"original_patient_id": "patient_id", "original_image_id": "image_id"})
    breasts["patient_id"] = breasts["patient_id"].map(patients)
    if "breast_id" in breasts.columns:
        breasts["breast_id"] = breasts["patient_id"] + "_" + breasts["laterality"].astype(str)
    first = [c for c in IMAGE_COLUMNS if c in images.columns]
    return images[first + [c for c in images.columns if c not in first]], breasts


# --- scoring --------------------------------------------------------------------------------


def onnx_file(model: ScoringModel, work: Path) -> tuple[Path, str]:
    """(local path, sha256) of the model's ONNX file: the one its production manifest lists,
    fetched and verified, else one exported for this run into ``work`` (checked against the
    eager network by ``mammo.export.write_onnx``)."""
    import os

    from mammo.export import write_onnx

    if model.onnx is not None:
        uri, sha = model.onnx
        return _fetch(uri, work, sha), sha
    made = write_onnx(model.export, work / "onnx" / f"{os.getpid()}-{(model.sha256 or 'model')[:12]}.onnx")
    return Path(made["path"]), str(made["sha256"])


def score_images(
    model: ScoringModel, table: pd.DataFrame, *, device: str = "auto", batch_size: int = 32, workers: int = 2,
    seed: int = 0, runtime: str = "eager", workdir: str | Path | None = None,
) -> np.ndarray:
    """Probabilities of the images of ``table`` (column ``path``), in table order; batched on
    ``device`` with a progress bar, preprocessed exactly as in evaluation, by ``runtime``
    (``mammo.runtimes``; ``onnx`` on the CPU, its file fetched or exported under ``workdir``)."""
    if isinstance(model, EnsembleModel):  # the members' mean probability per image
        return np.mean([score_images(member, table, device=device, batch_size=batch_size, workers=workers, seed=seed,
                                     runtime=runtime, workdir=workdir)
                        for member in model.members], axis=0)
    from mammo.data.augment import BatchTransform
    from mammo.engine.data import eval_loader
    from mammo.engine.loop import gather_predictions, predict
    from mammo.engine.runtime import runtime_for
    from mammo.export import model_from_export
    from mammo.runtimes import check_runtime, open_session, predict_onnx

    check_runtime(runtime, device)
    config = load_config(EvalConfig, overrides={
        "data.image_size": model.export["image_size"], "data.batch_size": batch_size, "data.workers": workers,
        "device": "cpu" if runtime == "onnx" else device, "seed": seed,
    })
    rows = table.assign(cancer=table["cancer"] if "cancer" in table.columns else 0)
    probs = np.full(len(rows), np.nan)
    if rows.empty:
        return probs
    if runtime == "onnx":
        work = Path(workdir or Path(tempfile.gettempdir()) / "mammo-predict")
        path, sha = onnx_file(model, work)
        try:
            session = open_session(path, sha)
            with runtime_for(config) as context:
                preds = predict_onnx(session, eval_loader(rows, config, context), desc="predict (onnx)")
        finally:
            if model.onnx is None:
                path.unlink(missing_ok=True)  # exported for this run only
        probs[preds.index] = preds.probs
        return probs
    with runtime_for(config) as runtime:
        net = model_from_export(model.export, source=model.uri).to(runtime.device)
        transform = BatchTransform(None, int(model.export["model_config"]["in_channels"])).to(runtime.device)
        preds = gather_predictions(
            predict(net, eval_loader(rows, config, runtime), transform, runtime.precision, runtime.device, desc="predict"),
            runtime,
        )
    probs[preds.index] = preds.probs
    return probs


def score_table(model: ScoringModel, table: pd.DataFrame, probs: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(image rows, breast rows) with probabilities and flags at the model's threshold."""
    threshold = model.threshold
    images = table.drop(columns=["path", "cache_row"], errors="ignore").copy()
    if "cancer" in images.columns:
        images = images.rename(columns={"cancer": "label"})
    images["prob"] = probs
    images["flag"] = (images["prob"] >= threshold).astype("Int64") if threshold is not None else pd.NA
    scored = images.dropna(subset=["prob"])
    frame = scored.assign(label=scored["label"] if "label" in scored.columns else 0)
    breasts = aggregate_breasts(frame, model.breast_aggregation)  # type: ignore[arg-type]
    if "label" not in images.columns:
        breasts = breasts.drop(columns="label")
    breasts["flag"] = (breasts["prob"] >= threshold).astype("Int64") if threshold is not None else pd.NA
    breasts["threshold"] = threshold
    first = [c for c in IMAGE_COLUMNS if c in images.columns]
    images = images[first + [c for c in images.columns if c not in first]]
    return images, breasts


def images_path(out: str) -> str:
    """Where the image-level CSV goes beside the breast-level ``out``: ``<stem>_images.csv``."""
    head, _, name = out.rpartition("/")
    stem = name[:-4] if name.lower().endswith(".csv") else name
    return f"{head}/{stem}_images.csv" if head else f"{stem}_images.csv"


def _inputs(model: str, data: str, table: str | None) -> list[str]:
    """What predict reads, as locations an output must not land on: the model and, for a
    local dataset, its tables."""
    found = [model, data]
    if not storage.is_remote(data) and Path(data).is_dir():
        found += [str(Path(data) / name) for name in ("train.csv", "test.csv", table or "")]
    elif table:
        found.append(table)
    return found


def _earlier_scores(location: str) -> bool:
    """An earlier output of predict: a CSV with its ``prob`` and ``flag`` columns."""
    return {"prob", "flag"} <= set(csv_header(location))


def _write_csv(frame: pd.DataFrame, out: str) -> None:
    if storage.is_remote(out):
        with tempfile.TemporaryDirectory(prefix="mammo-predict-") as tmp:
            local = Path(tmp) / "out.csv"
            frame.to_csv(local, index=False, float_format="%.6f")
            storage.put_file(local, out)
        return
    from mammo.storage.atomic import atomic_path

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def run_predict(
    *, model: str, data: str, out: str, device: str = "auto", batch_size: int = 32, workers: int = 2,
    table: str | None = None, images: str | None = None, threshold: float | None = None,
    workdir: str | Path | None = None, runtime: str = "eager",
) -> dict[str, Any]:
    """Score ``data`` with ``model`` by ``runtime`` (``mammo.runtimes``); write the breast CSV to
    ``out`` and the image CSV beside it; return a summary (model, counts, flagged, where the
    files are)."""
    from mammo.runtimes import check_runtime

    check_runtime(runtime, device)
    work = Path(workdir or Path(tempfile.gettempdir()) / "mammo-predict")
    for location, flag in ((out, "--out"), (images_path(out), "--out (its image-level CSV)")):
        check_output(location, flag=flag, inputs=_inputs(model, data, table), what="scores CSV", ours=_earlier_scores)
    chosen = resolve_model(model, work, threshold)
    local = fetch_dataset(data, work)
    dicom: DicomStudies | None = None
    with contextlib.ExitStack() as stack:
        if table is None and local.is_dir() and holds_dicoms(local):
            dicom = stack.enter_context(dicom_studies(local, chosen.export["image_size"], work, workers=workers))
            csv = dicom.csv
        else:
            csv = table_file(local, table)
        studies = read_studies(csv)
        studies["path"] = resolve_image_paths(csv, studies, images)
        probs = score_images(chosen, studies, device=device, batch_size=batch_size, workers=workers,
                             runtime=runtime, workdir=work)
        image_rows, breast_rows = score_table(chosen, studies, probs)
        if dicom is not None:
            image_rows, breast_rows = with_original_ids(image_rows, breast_rows, dicom.identifiers)
    _write_csv(breast_rows, out)
    _write_csv(image_rows, images_path(out))
    flagged = None if chosen.threshold is None else int(breast_rows["flag"].sum())
    summary = {
        "model": chosen.describe(), "runtime": runtime,
        "data": str(data), "table": "DICOM files" if dicom is not None else csv.name,
        "images": int(len(image_rows)), "scored_images": int(np.isfinite(probs).sum()),
        "breasts": int(len(breast_rows)), "patients": int(breast_rows["patient_id"].nunique()),
        "flagged_breasts": flagged,
        "out": out, "images_out": images_path(out),
    }
    if dicom is not None:
        summary["dicom"] = {"converted": dicom.converted, "skipped": dicom.skipped, "unreadable": dicom.unreadable}
    return summary
