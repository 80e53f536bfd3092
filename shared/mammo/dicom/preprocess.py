"""A folder (or object-store prefix) of DICOM mammograms to the PNG dataset the pipeline reads.

Input: the RSNA layout (``train_images/{patient_id}/{image_id}.dcm`` + ``train.csv``) or any
folder of DICOM files (``*.dcm``/``*.dicom``; locally also files without a suffix that carry the
DICM preamble). With a table (``--csv``, else ``<in>/train.csv`` when present) its rows are the
dataset and each row's file is found by name (``{patient_id}/{image_id}.dcm`` or
``{image_id}.dcm``, in any subfolder); tags that disagree with the table are reported. Without
one the table is built from the tags: PatientID, ImageLaterality (else Laterality),
ViewPosition, PatientAge; image_id is the file name when the file sits in a folder named after
its PatientID (the RSNA layout), else the SOPInstanceUID. Label columns come only from a table.

Output (``out``, a folder or prefix): ``{patient_id}/{image_id}.png``, ``train.csv`` (every
input column kept, plus the conversion record of each row: source, source size, crop box,
flip, padding, windowing, ...), ``preprocess.json`` (settings, per-source records, bad files,
tag mismatches) and ``manifest.json`` last (sha256 of every object: ``mammo.storage``).

Incremental: a source whose size and ETag (mtime locally) are those recorded, converted with
the same pixel settings, is not converted again. Progress is recorded while converting, in a
journal under ``.preprocess/``: locally a line per file as it is done, so a crash loses only the
files in flight; in object storage (no appends) rewritten at least every ``JOURNAL_SECONDS``,
so a crash loses at most the files converted since then.

Sharded: ``shard``/``shards`` convert a stable share of the sources (by a hash of their key) and
record it; ``merge`` then writes table, record and manifest. One call with ``shards=1`` does
both (``mammo data dicom``); the pipeline runs the shards as parallel pods.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from mammo import storage
from mammo.dicom.identity import MAP_COLUMNS, Pseudonyms, load_key, pseudonyms_for
from mammo.dicom.options import PreprocessConfig
from mammo.errors import ConfigError, DataError
from mammo.storage import MANIFEST_NAME, Manifest, ManifestEntry
from mammo.storage.uri import check_scheme, relative_key

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
TABLE_NAME = "train.csv"
RECORD_NAME = "preprocess.json"
STATE_DIR = ".preprocess"
#: Written into an empty output folder before the first PNG: the folder is this command's
#: until its first merge, whose manifest then says so (the marker is removed with the journals).
CLAIM_NAME = "claimed.json"
JOURNAL_SECONDS = 15.0
#: Columns a table must have to name each row's file.
ID_COLUMNS = ("patient_id", "image_id")
#: Table columns compared with the tags (table column -> tag field of ``header_tags``).
CHECKED_TAGS = {"patient_id": "patient_id", "laterality": "laterality", "view": "view"}
MAX_LISTED_MISMATCHES = 200


# --- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One DICOM object: its key below the input, URI, size and ETag."""

    key: str
    uri: str
    size: int
    etag: str

    @property
    def stem(self) -> str:
        name = PurePosixPath(self.key).name
        for suffix in DICOM_SUFFIXES:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def folder(self) -> str:
        return PurePosixPath(self.key).parent.name


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def list_sources(source_uri: str) -> list[Source]:
    """The DICOM objects below ``source_uri``, sorted by key."""
    infos = storage.open_store(source_uri).list_info(source_uri)
    found = []
    for info in infos:
        key = relative_key(source_uri, info.uri)
        parts = PurePosixPath(key).parts
        if any(part.startswith(".") for part in parts):
            continue
        name = parts[-1].lower()
        if name.endswith(DICOM_SUFFIXES) or (
            "." not in name and not storage.is_remote(info.uri) and _has_preamble(storage.local_path(info.uri))
        ):
            found.append(Source(key, info.uri, info.size, info.etag))
    return found


def shard_of(key: str, shards: int) -> int:
    """The shard a source belongs to: stable under growth of the dataset."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % shards


# --- the table ----------------------------------------------------------------------------------


def read_input_table(uri: str) -> pd.DataFrame:
    """The input table as text (every column kept as written); ids required."""
    try:
        data = storage.get_bytes(uri)
    except storage.ArtifactNotFoundError:
        raise DataError(f"{uri}: table not found") from None
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{uri}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ID_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{uri}: missing required column(s): {', '.join(missing)}")
    for column in ID_COLUMNS:
        table[column] = table[column].str.strip()
    blank = (table["patient_id"] == "") | (table["image_id"] == "")
    if blank.any():
        raise DataError(f"{uri}: row {int(blank.idxmax()) + 2}: empty patient_id or image_id")
    dup = table["image_id"].duplicated()
    if dup.any():
        raise DataError(f"{uri}: row {int(dup.idxmax()) + 2}: duplicate image_id {table['image_id'][dup.idxmax()]}")
    return table.reset_index(drop=True)


def safe_id(value: str) -> bool:
    """An id usable as one path segment (no traversal, no separators, not hidden)."""
    return bool(value) and "/" not in value and "\\" not in value and not value.startswith(".") and "\0" not in value


@dataclass
class Job:
    """One source to convert, the ids of its row as written out (pseudonyms unless identifiers
    are kept; None: from its tags), its row's view, and the state's key for it."""

    source: Source
    patient_id: str | None = None
    image_id: str | None = None
    view: str | None = None
    original: tuple[str, str] | None = None  # the row's ids as given (for the identifier map only)
    state_key: str = ""

    def __post_init__(self) -> None:
        if not self.state_key:
            self.state_key = self.source.key


def _state_key(key: str, pseudonyms: Pseudonyms | None) -> str:
    """What the outputs call a source: its key below the input, or (pseudonymised) a keyed
    pseudonym of it, since an archive's paths can carry identifiers too."""
    return pseudonyms.source(key) if pseudonyms is not None else key


def match_table(table: pd.DataFrame, sources: list[Source], where: str) -> tuple[list[Job], list[dict[str, str]]]:
    """Each row's source (``{patient_id}/{image_id}.dcm`` preferred, then ``{image_id}.dcm``
    anywhere); rows without one are returned as problems."""
    by_stem: dict[str, list[Source]] = {}
    for src in sources:
        by_stem.setdefault(src.stem, []).append(src)
    jobs, problems = [], []
    views = table["view"] if "view" in table.columns else [None] * len(table)
    for i, (patient, image, view) in enumerate(zip(table["patient_id"], table["image_id"], views, strict=True)):
        if not (safe_id(patient) and safe_id(image)):
            problems.append({"row": str(i + 2), "image_id": image, "reason": "unsafe patient_id or image_id (a path)"})
            continue
        candidates = by_stem.get(image, [])
        chosen = next((s for s in candidates if s.folder == patient), candidates[0] if candidates else None)
        if chosen is None:
            problems.append({
                "row": str(i + 2), "image_id": image,
                "reason": f"no DICOM file {patient}/{image}.dcm or {image}.dcm under {where}",
            })
            continue
        jobs.append(Job(chosen, patient, image, view or None, (patient, image)))
    return jobs, problems


def ids_from_tags(source: Source, tags: dict[str, str], check_safe: bool = True) -> tuple[str, str]:
    """(patient_id, image_id) of a file without a table row, as the tags give them (the caller
    pseudonymises); ``DataError`` for missing tags."""
    patient = tags.get("patient_id", "")
    if not patient:
        raise DataError(f"{source.uri}: missing tag PatientID")
    if not tags.get("laterality"):
        raise DataError(f"{source.uri}: missing tag ImageLaterality/Laterality")
    if tags["laterality"] not in ("L", "R"):
        raise DataError(f"{source.uri}: laterality tag {tags['laterality']!r} is not L or R")
    image = source.stem if source.folder == patient else (tags.get("image_id") or source.stem)
    if check_safe and not (safe_id(patient) and safe_id(image)):
        raise DataError(f"{source.uri}: PatientID or image id {patient!r}/{image!r} is not usable as a file name")
    return patient, image


def png_key(patient: str, image: str) -> str:
    return f"{patient}/{image}.png"


# --- converting one file (also in worker processes) ----------------------------------------------


def _convert(job: Job, out_uri: str, options_json: str, scratch: str, key: bytes | None = None) -> dict[str, Any]:
    """Fetch (when remote), convert and store one file; return its record, ``{"skip": reason,
    "category": ...}`` for a file the policy leaves out, or ``{"bad": reason}`` for one that
    cannot be converted (``stored``: the reason as the outputs may hold it, the file named by its
    pseudonym when pseudonymising). Storage failures propagate. With ``key`` the ids are
    replaced by keyed pseudonyms, and ``identifiers`` (popped by the caller, never stored)
    says what they were."""
    from mammo.dicom.convert import DicomSkipped, convert_file
    from mammo.dicom.read import DicomError

    options = PreprocessConfig.model_validate_json(options_json)
    pseudonyms = Pseudonyms(key) if key else None
    src = job.source
    label = f"source {pseudonyms.source(src.key)}" if pseudonyms is not None else src.uri
    local: Path
    fetched = None
    try:
        if storage.is_remote(src.uri):
            fetched = Path(tempfile.mkdtemp(prefix="dicom-", dir=scratch)) / "file.dcm"
            storage.open_store(src.uri).get_file(src.uri, fetched)
            local = fetched
        else:
            local = storage.local_path(src.uri)
        try:
            converted = convert_file(local, options, job.view)
            tags = converted.tags
            if job.patient_id is None:
                original = ids_from_tags(src, tags, check_safe=pseudonyms is None)
                patient, image = original
                if pseudonyms is not None:
                    patient, image = pseudonyms.patient(patient), pseudonyms.image(image)
            else:
                original = job.original or (str(job.patient_id), str(job.image_id))
                patient, image = job.patient_id, str(job.image_id)
        except DicomSkipped as err:
            reason = str(err).replace(str(local), src.uri)
            return {"skip": reason, "stored": reason.replace(src.uri, label), "category": err.category}
        except DataError as err:  # DicomError included
            reason = str(err).replace(str(local), src.uri)
            return {"bad": reason, "stored": _scrubbed(reason, src.uri, label, err) if pseudonyms else reason}
        except Exception as exc:  # a reader or decoder failing in a way nobody foresaw: still one line
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            return {"bad": f"{src.uri}: cannot be converted ({type(exc).__name__}: {text})",
                    "stored": f"{label}: cannot be converted ({type(exc).__name__})"}
        if pseudonyms is not None:
            tags = {**tags, "patient_id": pseudonyms.patient(tags.get("patient_id", "")),
                    "image_id": pseudonyms.image(tags.get("image_id", ""))}
        key_out = png_key(patient, image)
        info = storage.put_bytes(converted.png, storage.join(out_uri, key_out))
    finally:
        if fetched is not None:
            shutil.rmtree(fetched.parent, ignore_errors=True)
    result = {
        "etag": src.etag, "size": src.size, "patient_id": patient, "image_id": image, "png": key_out,
        "png_size": info.size, "png_sha256": info.sha256, "tags": tags, "record": converted.record,
    }
    if pseudonyms is not None:
        result["identifiers"] = {
            "original_patient_id": original[0], "original_image_id": original[1], "source": src.key,
            **converted.identifiers,
        }
    return result


def _scrubbed(reason: str, uri: str, label: str, err: Exception) -> str:
    """A bad file's reason as the outputs hold it when pseudonymising: the file named by its
    pseudonym, and no tag value that could identify (a DataError about the ids quotes them)."""
    from mammo.dicom.read import DicomError

    if isinstance(err, DicomError):
        return reason.replace(uri, label)
    return f"{label}: {_id_problem(reason)}"


def _id_problem(reason: str) -> str:
    if "missing tag" in reason:
        return reason[reason.index("missing tag"):]
    if "laterality" in reason:
        return "laterality tag is not L or R"
    return "PatientID or image id is not usable"


def available_cpus() -> int:
    """CPUs this process may use: the cgroup's CPU quota (a pod's limit) when there is one, else
    the CPUs it may run on."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- state: what earlier runs converted ---------------------------------------------------------


def _preprocessor_manifest(out_uri: str) -> dict[str, Any] | None:
    """The manifest at ``out_uri`` when a merge of this command wrote it, else None."""
    manifest = _read_json(storage.join(out_uri, MANIFEST_NAME))
    if isinstance(manifest, dict) and (manifest.get("metadata") or {}).get("component") == "preprocessor":
        return manifest
    return None


def claim_output(out_uri: str, source_uri: str) -> dict[str, Any] | None:
    """Make sure ``out_uri`` is this command's to write and clean: an earlier output of it (its
    manifest, which is returned, or the claim of a run not merged yet), or empty, then claimed.
    A folder holding anything else - another dataset, the parent of datasets, a bucket - is
    refused before a single file is written: its files would be replaced or deleted."""
    earlier = _preprocessor_manifest(out_uri)
    if earlier is not None:
        return earlier
    claim = storage.join(out_uri, STATE_DIR, CLAIM_NAME)
    if storage.exists(claim):
        return None
    state = storage.join(out_uri, STATE_DIR) + "/"
    foreign = [uri for uri in storage.list_objects(out_uri) if not uri.startswith(state)]
    if foreign:
        raise ConfigError(
            f"--out {out_uri}: already holds files this command did not write (e.g. {foreign[0]}, "
            f"{len(foreign)} in all); choose an empty folder, or an earlier output of mammo data dicom"
        )
    storage.put_json({"source": source_uri, "claimed": datetime.now(timezone.utc).isoformat(timespec="seconds")}, claim)
    return None


def _state_prefix(out_uri: str, digest: str) -> str:
    return storage.join(out_uri, STATE_DIR, digest[:16])


def _read_json(uri: str) -> Any | None:
    try:
        return storage.get_json(uri)
    except storage.ArtifactNotFoundError:
        return None


def load_state(
    out_uri: str, options: PreprocessConfig
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, dict[str, Any]], list[str]]:
    """What earlier runs with the same pixel settings did, by state key (``Job.state_key``): the
    records of converted files, the reasons of bad ones and the entries of skipped ones (the
    last merged ``preprocess.json``, then the journals of later runs, oldest first, so that the
    latest word on each file wins), and the journals' URIs."""
    digest = options.digest()
    records: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}
    skipped: dict[str, dict[str, Any]] = {}
    merged = _read_json(storage.join(out_uri, RECORD_NAME))
    if isinstance(merged, dict) and merged.get("digest") == digest:
        records.update(merged.get("records", {}))
        skipped.update(merged.get("skipped_files", {}))
    journals = []
    uris = storage.list_objects(_state_prefix(out_uri, digest))
    for uri in uris:
        journal = read_journal(uri)
        if journal is not None and journal[0].get("digest") == digest:
            journals.append((str(journal[0].get("written", "")), journal[1]))
    for _, entries in sorted(journals, key=lambda item: item[0]):
        for entry in entries:
            key = entry.get("key")
            if key is None:
                continue
            if "record" in entry:
                records[key] = entry["record"]
                bad.pop(key, None)
                skipped.pop(key, None)
            elif "bad" in entry:
                bad[key] = entry["bad"]
                records.pop(key, None)
                skipped.pop(key, None)
            elif "skip" in entry:
                skipped[key] = entry["skip"]
                records.pop(key, None)
                bad.pop(key, None)
    return records, bad, skipped, uris


def reusable(record: dict[str, Any] | None, job: Job, pngs: set[str], options: PreprocessConfig | None = None) -> bool:
    """Whether ``record`` still describes ``job``'s source, converted, with its PNG in place
    (and, given ``options``, not a file their policy now skips)."""
    from mammo.dicom.convert import skip_reason

    if record is None or "png" not in record:
        return False
    src = job.source
    if (record.get("etag"), record.get("size")) != (src.etag, src.size) or record["png"] not in pngs:
        return False
    if job.patient_id is not None and (record["patient_id"], record["image_id"]) != (job.patient_id, job.image_id):
        return False
    if options is not None and skip_reason(record.get("tags", {}), options, job.view) is not None:
        return False
    return True


def still_skipped(entry: dict[str, Any] | None, job: Job, options: PreprocessConfig) -> bool:
    """Whether a file skipped before is unchanged and skipped under the same policy."""
    if entry is None:
        return False
    src = job.source
    return (entry.get("etag"), entry.get("size"), entry.get("policy")) == (src.etag, src.size, options.policy_digest())


class Journal:
    """This run's progress as JSON lines in ``.preprocess/<settings>/shard-K-of-N-<id>.jsonl``: a
    header (settings digest, start time), then one line per converted or bad file. Locally each
    line is appended and flushed as the file is done, so a crash loses only the files in flight;
    in object storage (no appends) the whole journal is rewritten at most every
    ``JOURNAL_SECONDS`` and at the end."""

    def __init__(self, out_uri: str, options: PreprocessConfig, shard: int, shards: int) -> None:
        self.uri = storage.join(
            _state_prefix(out_uri, options.digest()), f"shard-{shard:04d}-of-{shards:04d}-{uuid.uuid4().hex[:8]}.jsonl"
        )
        self.records: dict[str, dict[str, Any]] = {}
        self.bad: list[dict[str, str]] = []
        self.skipped: dict[str, dict[str, Any]] = {}
        header = {"digest": options.digest(), "written": datetime.now(timezone.utc).isoformat()}
        self.lines = [json.dumps(header)]
        self.handle = None
        if not storage.is_remote(out_uri):
            path = storage.local_path(self.uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("a", encoding="utf-8")
            self.handle.write(self.lines[0] + "\n")
            self.handle.flush()
        self.dirty = True
        self.last = time.monotonic()

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry)
        self.lines.append(line)
        if self.handle is not None:
            self.handle.write(line + "\n")
            self.handle.flush()
        else:
            self.dirty = True
            if time.monotonic() - self.last >= JOURNAL_SECONDS:
                self.flush()

    def add(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = record
        self._append({"key": key, "record": record})

    def add_bad(self, key: str, reason: str) -> None:
        self.bad.append({"source": key, "reason": reason})
        self.records.pop(key, None)
        self._append({"key": key, "bad": reason})

    def add_skip(self, key: str, entry: dict[str, Any]) -> None:
        self.skipped[key] = entry
        self.records.pop(key, None)
        self._append({"key": key, "skip": entry})

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            return
        if self.dirty:
            storage.put_bytes(("\n".join(self.lines) + "\n").encode(), self.uri)
            self.dirty = False
            self.last = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def read_journal(uri: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A journal's header and entries; None when unreadable (a torn last line is dropped)."""
    try:
        text = storage.get_bytes(uri).decode("utf-8")
    except (storage.ArtifactNotFoundError, UnicodeDecodeError):
        return None
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash, and nothing after it
    if not entries or not isinstance(entries[0], dict) or "digest" not in entries[0]:
        return None
    return entries[0], entries[1:]


# --- running the conversions ----------------------------------------------------------------------


def _run_jobs(
    jobs: list[Job],
    out_uri: str,
    options: PreprocessConfig,
    workers: int,
    scratch: Path,
    on_done: Callable[[Job, dict[str, Any]], None],
    key: bytes | None = None,
) -> None:
    """Convert ``jobs`` in this process (``workers`` <= 1) or in a pool of spawned processes
    (each with its own storage clients); ``on_done`` gets each result in completion order and
    may raise to stop: pending work is cancelled, files in flight finish or are dropped."""
    options_json = options.model_dump_json()
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, _convert(job, out_uri, options_json, str(scratch), key))
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init)
    pending: dict[Future, Job] = {}
    queue = iter(jobs)
    try:
        for job in _take(queue, 2 * workers):
            pending[pool.submit(_convert, job, out_uri, options_json, str(scratch), key)] = job
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                on_done(job, future.result())
                for nxt in _take(queue, 1):
                    pending[pool.submit(_convert, nxt, out_uri, options_json, str(scratch), key)] = nxt
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _take(items: Iterator[Job], n: int) -> list[Job]:
    out = []
    for _ in range(n):
        try:
            out.append(next(items))
        except StopIteration:
            break
    return out


def _normalize(uri: str | os.PathLike[str]) -> str:
    text = str(uri).strip()
    if not text:
        raise ConfigError("empty URI: expected s3://bucket/key or a local path")
    check_scheme(text)
    if storage.is_remote(text):
        return text.rstrip("/")
    return str(storage.local_path(text).expanduser().resolve())


def _table_uri(source_uri: str, csv: str | None) -> str | None:
    if csv:
        return _normalize(csv)
    candidate = storage.join(source_uri, TABLE_NAME)
    return candidate if storage.exists(candidate) else None


def plan_jobs(
    source_uri: str, csv_uri: str | None, pseudonyms: Pseudonyms | None = None
) -> tuple[list[Job], list[dict[str, str]], pd.DataFrame | None]:
    """Every source to convert (with its row's ids when there is a table), the rows without a
    file, and the table; with ``pseudonyms`` the table's ids and the jobs' output ids and
    state keys are pseudonyms (a missing row's entry too)."""
    sources = list_sources(source_uri)
    if csv_uri is None:
        if not sources:
            raise DataError(f"{source_uri}: no DICOM files (*.dcm, *.dicom) found")
        return [Job(s, state_key=_state_key(s.key, pseudonyms)) for s in sources], [], None
    table = read_input_table(csv_uri)
    jobs, missing = match_table(table, sources, source_uri)
    unused = len(sources) - len({job.source.key for job in jobs})
    if unused:
        log.info("%d DICOM file(s) under %s are not in %s and are not converted", unused, source_uri, csv_uri)
    if pseudonyms is not None:
        for job in jobs:
            job.patient_id, job.image_id = pseudonyms.patient(str(job.patient_id)), pseudonyms.image(str(job.image_id))
            job.state_key = _state_key(job.source.key, pseudonyms)
        for problem in missing:
            problem["stored_image_id"] = pseudonyms.image(problem["image_id"])
            problem["stored_reason"] = "unsafe patient_id or image_id" if problem["reason"].startswith("unsafe") else "no DICOM file for this row"
        table = table.copy()
        table["patient_id"] = table["patient_id"].map(pseudonyms.patient)
        table["image_id"] = table["image_id"].map(pseudonyms.image)
    return jobs, missing, table


def _pseudonyms(options: PreprocessConfig, key: bytes | None) -> Pseudonyms | None:
    """The run's pseudonyms (None: identifiers kept); the key from ``$MAMMO_PSEUDONYM_KEY``
    when none is given; refused in one line without one."""
    return pseudonyms_for(options.keep_identifiers, load_key() if key is None and not options.keep_identifiers else key)


def convert_shard(
    source: str,
    out: str,
    options: PreprocessConfig,
    *,
    csv: str | None = None,
    workers: int = 0,
    shard: int = 0,
    shards: int = 1,
    workdir: str | os.PathLike[str] | None = None,
    key: bytes | None = None,
    identifiers: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Convert shard ``shard`` of ``shards`` of the sources that are new or changed; record
    progress in a journal. Returns counts. ``DataError`` naming the first bad file (fail).
    ``key``: the pseudonyms' site key (default: ``$MAMMO_PSEUDONYM_KEY``; needed unless
    ``options.keep_identifiers``); ``identifiers``, when given, gets what the converted files'
    pseudonyms stand for, by state key (for the identifier map)."""
    if shards < 1 or not 0 <= shard < shards:
        raise ConfigError(f"shard {shard} of {shards}: expected 0 <= shard < shards, shards >= 1")
    source_uri, out_uri = _normalize(source), _normalize(out)
    if source_uri == out_uri:
        raise ConfigError(f"--out {out}: must differ from --in")
    pseudonyms = _pseudonyms(options, key)
    started = time.monotonic()
    jobs, missing, _ = plan_jobs(source_uri, _table_uri(source_uri, csv), pseudonyms)
    if missing and options.bad_files == "fail":
        first = missing[0]
        raise DataError(f"{_table_uri(source_uri, csv)}: row {first['row']}: image_id {first['image_id']}: {first['reason']}")
    claim_output(out_uri, source_uri)
    mine = [job for job in jobs if shard_of(job.source.key, shards) == shard]
    previous, _, was_skipped, _ = load_state(out_uri, options)
    pngs = {relative_key(out_uri, uri) for uri in storage.list_objects(out_uri) if uri.endswith(".png")}
    journal = Journal(out_uri, options, shard, shards)
    todo, skipped_before = [], 0
    for job in mine:
        if still_skipped(was_skipped.get(job.state_key), job, options):
            skipped_before += 1
        elif not reusable(previous.get(job.state_key), job, pngs, options):
            todo.append(job)
    reused = len(mine) - len(todo) - skipped_before
    log.info(
        "shard %d/%d: %d of %d DICOM file(s); %d unchanged since the last run, %d to convert",
        shard + 1, shards, len(mine), len(jobs), reused, len(todo),
    )
    converted = 0
    done_at = [time.monotonic()]
    policy = options.policy_digest()

    def on_done(job: Job, result: dict[str, Any]) -> None:
        nonlocal converted
        if "bad" in result:
            if options.bad_files == "fail":
                raise DataError(result["bad"])
            log.warning("skipping %s", result["bad"])
            journal.add_bad(job.state_key, result["stored"])
            return
        if "skip" in result:
            log.debug("not converted: %s", result["skip"])
            journal.add_skip(job.state_key, {
                "category": result["category"], "reason": result["stored"], "etag": job.source.etag,
                "size": job.source.size, "policy": policy,
            })
            return
        converted += 1
        found = result.pop("identifiers", None)
        if identifiers is not None and found is not None:
            identifiers[job.state_key] = found
        journal.add(job.state_key, result)
        if time.monotonic() - done_at[0] > 30:
            done_at[0] = time.monotonic()
            log.info("shard %d/%d: %d of %d converted", shard + 1, shards, converted, len(todo))

    base = Path(workdir) if workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mammo-dicom-", dir=base))
    try:
        _run_jobs(todo, out_uri, options, workers, scratch, on_done, pseudonyms.key if pseudonyms else None)
    finally:
        journal.close()
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    counts = skip_counts(journal.skipped.values())
    if journal.skipped and shards > 1:  # one run: the merge says it
        log.info("shard %d/%d: %d file(s) not converted by the policy: %s", shard + 1, shards,
                 len(journal.skipped), ", ".join(f"{n} {c}" for c, n in counts.items()))
    return {
        "shard": shard, "shards": shards, "sources": len(mine), "converted": converted, "unchanged": reused,
        "skipped_files": len(journal.skipped) + skipped_before, "skipped": counts,
        "bad_files": len(journal.bad), "missing_rows": len(missing), "seconds": round(seconds, 1),
        "journal": journal.uri,
    }


def skip_counts(entries: Any) -> dict[str, int]:
    """Skipped files by category (``mammo.dicom.convert.SKIP_CATEGORIES``), sorted."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["category"]] = counts.get(entry["category"], 0) + 1
    return dict(sorted(counts.items()))


# --- merging: the dataset's table, record and manifest ------------------------------------------


def _mismatches(table: pd.DataFrame, tags: list[dict[str, str]]) -> list[dict[str, str]]:
    found = []
    for column, tag in CHECKED_TAGS.items():
        if column not in table.columns:
            continue
        for image, value, row_tags in zip(table["image_id"], table[column], tags, strict=True):
            dicom = row_tags.get(tag, "")
            if dicom and str(value).strip() and str(value).strip().upper() != dicom.upper():
                found.append({"image_id": str(image), "field": column, "csv": str(value), "dicom": dicom})
    return found


def build_table(
    jobs: list[Job], records: dict[str, dict[str, Any]], table: pd.DataFrame | None
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The output table: the input table's rows (all columns) or rows from the tags, each with
    its conversion record; only rows whose file was converted. Returns it and tag mismatches."""
    from mammo.dicom.convert import RECORD_COLUMNS, TAG_COLUMNS

    done = [(job, records[job.state_key]) for job in jobs if job.state_key in records]
    if table is not None:
        by_image = {rec["image_id"]: (job, rec) for job, rec in done}
        keep = [i for i, image in enumerate(table["image_id"]) if image in by_image]
        out = table.iloc[keep].reset_index(drop=True).copy()
        pairs = [by_image[image] for image in out["image_id"]]
        for column in TAG_COLUMNS:
            if column not in out.columns:
                out[column] = [rec["tags"].get(column, "") for _, rec in pairs]
        mismatches = _mismatches(out, [rec["tags"] for _, rec in pairs])
    else:
        pairs = sorted(done, key=lambda item: (item[1]["patient_id"], item[1]["image_id"]))
        out = pd.DataFrame({
            "patient_id": [rec["patient_id"] for _, rec in pairs],
            "image_id": [rec["image_id"] for _, rec in pairs],
            **{column: [rec["tags"].get(column, "") for _, rec in pairs] for column in TAG_COLUMNS},
            "age": [rec["tags"].get("age", "") for _, rec in pairs],
        })
        mismatches = []
        dup = out["image_id"].duplicated()
        if dup.any():
            image = out["image_id"][dup.idxmax()]
            raise DataError(f"two DICOM files have image id {image} (SOPInstanceUID or file name): remove one")
    out["source"] = [job.state_key for job, _ in pairs]
    for column in RECORD_COLUMNS:
        if column != "source":
            out[column] = [rec["record"].get(column, "") for _, rec in pairs]
    return out, mismatches


def merge(
    source: str,
    out: str,
    options: PreprocessConfig,
    *,
    csv: str | None = None,
    shard_results: list[dict[str, Any]] | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Write ``train.csv``, ``preprocess.json`` and the manifest (last) from the recorded
    conversions; delete the PNGs this command wrote that no row refers to any more (never a
    file it did not write), the journals and the claim. ``key``: as ``convert_shard``."""
    source_uri, out_uri = _normalize(source), _normalize(out)
    pseudonyms = _pseudonyms(options, key)
    earlier = claim_output(out_uri, source_uri)
    csv_uri = _table_uri(source_uri, csv)
    jobs, missing, table = plan_jobs(source_uri, csv_uri, pseudonyms)
    digest = options.digest()
    records, bad, skipped, journals = load_state(out_uri, options)
    # The PNGs this command wrote here: in its last manifest, or recorded by its runs since.
    own = set((earlier or {}).get("objects", {})) | {str(rec["png"]) for rec in records.values() if "png" in rec}
    current = {job.state_key for job in jobs}
    records = {key: rec for key, rec in records.items() if key in current}
    bad = {key: reason for key, reason in bad.items() if key in current}
    skipped = {key: entry for key, entry in skipped.items() if key in current and key not in records and key not in bad}
    unconverted = [job for job in jobs if job.state_key not in records and job.state_key not in bad and job.state_key not in skipped]
    if unconverted:
        raise DataError(
            f"{unconverted[0].source.uri} was not converted ({len(unconverted)} file(s)): did a shard fail? run it again"
        )
    if missing and options.bad_files == "fail":
        first = missing[0]
        raise DataError(f"{csv_uri}: row {first['row']}: image_id {first['image_id']}: {first['reason']}")
    if skipped:
        log.info("%d file(s) not converted by the policy: %s (listed in %s)", len(skipped),
                 ", ".join(f"{n} {c}" for c, n in skip_counts(skipped.values()).items()), RECORD_NAME)
    for job in jobs:  # a record from another row's ids (the table changed) is not this row's
        rec = records.get(job.state_key)
        if rec is not None and job.patient_id is not None and (rec["patient_id"], rec["image_id"]) != (job.patient_id, job.image_id):
            raise DataError(f"{job.source.uri}: recorded under other ids; convert it again (rerun the shards)")
    result_table, mismatches = build_table(jobs, records, table)
    if mismatches:
        first = mismatches[0]
        log.warning(
            "%d tag(s) disagree with the table, e.g. image_id %s: %s %r in the table, %r in the DICOM "
            "(the table's values are kept; all listed in %s)",
            len(mismatches), first["image_id"], first["field"], first["csv"], first["dicom"], RECORD_NAME,
        )
    store = storage.open_store(out_uri)
    wanted = set(png_key(p, i) for p, i in zip(result_table["patient_id"], result_table["image_id"], strict=True))
    listed = {relative_key(out_uri, info.uri): info for info in store.list_info(out_uri)}
    stale = [key for key in listed if key in own and key.endswith(".png") and key not in wanted]
    entries: dict[str, ManifestEntry] = {}
    for rec in records.values():
        if rec["png"] in wanted:
            entries[rec["png"]] = ManifestEntry(size=int(rec["png_size"]), sha256=str(rec["png_sha256"]))
    csv_bytes = result_table.to_csv(index=False, lineterminator="\n").encode()
    bad_list = [{"source": key, "reason": reason} for key, reason in sorted(bad.items())]
    bad_list += [{"source": f"{csv_uri} row {m['row']}", "reason": m.get("stored_reason", m["reason"])} for m in missing]
    counts = skip_counts(skipped.values())
    summary = {
        "source": source_uri,
        "table": csv_uri,
        "rows": len(result_table),
        "sources": len(jobs),
        "bad_files": len(bad_list),
        "skipped_files": len(skipped),
        "skipped": counts,
        "tag_mismatches": len(mismatches),
        "image_size": options.pixel_settings()["image_size"],
        "identifiers": "kept" if pseudonyms is None else "pseudonymised",
    }
    record = {
        **summary,
        "digest": digest,
        "settings": options.pixel_settings(),
        "policy": options.policy(),
        "records": dict(sorted(records.items())),
        "bad": bad_list,
        "skipped_files": dict(sorted(skipped.items())),
        "mismatches": mismatches[:MAX_LISTED_MISMATCHES],
    }
    for name, data in ((TABLE_NAME, csv_bytes), (RECORD_NAME, json.dumps(record, indent=1, sort_keys=True).encode())):
        info = store.put_bytes(data, storage.join(out_uri, name))
        entries[name] = ManifestEntry(size=info.size, sha256=str(info.sha256))
    manifest = Manifest(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        objects=dict(sorted(entries.items())),
        metadata={"component": "preprocessor", **summary},
    )
    store.put_bytes(manifest.model_dump_json(indent=2).encode(), storage.join(out_uri, MANIFEST_NAME))
    for key in stale:
        store.delete(storage.join(out_uri, key))
    for uri in journals:
        store.delete(uri)
    claim = storage.join(out_uri, STATE_DIR, CLAIM_NAME)
    if store.exists(claim):
        store.delete(claim)
    shards = shard_results or []
    return {
        **summary,
        "out": out_uri,
        "converted": sum(int(r.get("converted", 0)) for r in shards),
        "unchanged": sum(int(r.get("unchanged", 0)) for r in shards),
        "removed": len(stale),
        "bad": bad_list[:20],
        "mismatches": mismatches[:20],
    }


def preprocess(
    source: str,
    out: str,
    options: PreprocessConfig,
    *,
    csv: str | None = None,
    workers: int = 0,
    workdir: str | os.PathLike[str] | None = None,
    key: bytes | None = None,
    identifier_map: str | None = None,
) -> dict[str, Any]:
    """``mammo data dicom``: convert what is new or changed, then merge; with
    ``identifier_map`` (pseudonymising only) write there the map back to the original ids."""
    started = time.monotonic()
    map_uri = _check_map(identifier_map, out, options) if identifier_map else None
    found: dict[str, dict[str, str]] = {}
    part = convert_shard(source, out, options, csv=csv, workers=workers, workdir=workdir, key=key, identifiers=found)
    result = merge(source, out, options, csv=csv, shard_results=[part], key=key)
    if map_uri is not None:
        result["identifier_map"] = write_identifier_map(source, out, options, map_uri, found, csv=csv, key=key, workdir=workdir)
    seconds = time.monotonic() - started
    result["seconds"] = round(seconds, 1)
    result["files_per_second"] = round(part["converted"] / part["seconds"], 3) if part["converted"] and part["seconds"] else None
    return result


def _check_map(identifier_map: str, out: str, options: PreprocessConfig) -> str:
    """The identifier map's URI: never inside the output (the store the pipeline reads)."""
    if options.keep_identifiers:
        raise ConfigError("--identifier-map: identifiers are kept (--keep-identifiers): there is nothing to map back")
    map_uri, out_uri = _normalize(identifier_map), _normalize(out)
    if map_uri == out_uri or map_uri.startswith(out_uri.rstrip("/") + "/"):
        raise ConfigError(f"--identifier-map {identifier_map}: must not be inside --out {out} (the dataset must hold no identifiers)")
    return map_uri


def _identify(job: Job, scratch: Path) -> dict[str, str]:
    """What a file's ids were (its header read again, pixels left alone): for the map's rows of
    files converted by an earlier run."""
    from mammo.dicom.convert import header_tags, identifiers_of
    from mammo.dicom.read import read_header

    src = job.source
    if storage.is_remote(src.uri):
        local = Path(tempfile.mkdtemp(prefix="dicom-", dir=scratch)) / "file.dcm"
        storage.open_store(src.uri).get_file(src.uri, local)
    else:
        local = storage.local_path(src.uri)
    dataset = read_header(local)
    tags = header_tags(dataset)
    original = job.original or ids_from_tags(src, tags, check_safe=False)
    return {"original_patient_id": original[0], "original_image_id": original[1], "source": src.key,
            **identifiers_of(dataset)}


def write_identifier_map(
    source: str, out: str, options: PreprocessConfig, map_uri: str, found: dict[str, dict[str, str]], *,
    csv: str | None = None, key: bytes | None = None, workdir: str | os.PathLike[str] | None = None,
) -> str:
    """The map from the dataset's pseudonyms back to the original ids and UIDs, one row per
    row of the dataset, as CSV at ``map_uri`` (only there); ``found``: what this run's
    conversions already read. Returns ``map_uri``."""
    pseudonyms = _pseudonyms(options, key)
    assert pseudonyms is not None
    source_uri, out_uri = _normalize(source), _normalize(out)
    jobs, _, _ = plan_jobs(source_uri, _table_uri(source_uri, csv), pseudonyms)
    records, _, _, _ = load_state(out_uri, options)
    base = Path(workdir) if workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mammo-dicom-map-", dir=base))
    rows = []
    try:
        for job in jobs:
            rec = records.get(job.state_key)
            if rec is None or "png" not in rec:
                continue
            ids = found.get(job.state_key) or _identify(job, scratch)
            rows.append({"patient_id": rec["patient_id"], "image_id": rec["image_id"], "source_pseudonym": job.state_key, **ids})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = pd.DataFrame(rows, columns=list(MAP_COLUMNS)).sort_values(["patient_id", "image_id"])
    storage.put_bytes(table.to_csv(index=False, lineterminator="\n").encode(), map_uri)
    log.info("identifier map of %d image(s): %s (keep it where the identifiers may be)", len(table), map_uri)
    return map_uri


__all__ = [
    "Source", "available_cpus", "build_table", "convert_shard", "list_sources", "load_state", "merge", "plan_jobs", "preprocess",
    "shard_of",
]
