"""The split ledger: every patient ever assigned to a split, for the life of a model name.

A split alone remembers only itself: patients dropped from a table and re-added later, a table
moved to another URI or re-exported with other ids would be split afresh, and a model would then
be scored on test patients it trained on. The ledger, ``<store>/splits/ledger/<model>.json``,
holds each patient id and its split (what split.csv holds already, nothing more) and grows with
every split built for the model name; it is keyed by the model name, not by the dataset URI.

- ``known_assignments``: the ledger's patients as ``previous`` for ``mammo.split.build_split``,
  so every patient it knows keeps its split.
- ``check_ids``: a table whose ids mostly changed (most of the ledger's patients missing and
  most of the table's patients new) is refused with one line naming the likely cause (leading
  zeros lost in a re-export, ids written as numbers, another pseudonym key), unless a fresh
  split is accepted explicitly.
- ``update``: the ledger after a split, written under the ledger's lock (``mammo.storage.lock``,
  a fencing token recorded in the ledger) with the storage layer's atomic ``put_json``.
- ``trained_patients``: the train and val patients of a split found in the store by its
  split.csv sha256 (a checkpoint's ``split_fingerprint``), for the evaluator's refusal to score
  a model on test patients it trained on.

Torch-free (the split builder imports it).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from mammo import storage
from mammo.errors import ArtifactNotFoundError, DataError, IntegrityError, MammoError
from mammo.split import SPLIT_CSV, SPLITS
from mammo.storage.layout import check_name
from mammo.storage.lock import Lease

log = logging.getLogger(__name__)

#: Below ``<store>/splits/``: ``ledger/<model>.json`` and its lock ``ledger/<model>.lock/``.
LEDGER_DIR = "ledger"
FORMAT = 1
#: "Mostly changed": more than this share of the ledger's patients missing from the table and
#: more than this share of the table's patients unknown to the ledger.
CHANGED_SHARE = 0.5
#: A keyed pseudonym (``mammo.dicom.identity``): 20 hex digits.
_PSEUDONYM = re.compile(r"^[0-9a-f]{20}$")


def ledger_uri(store_uri: str, model_name: str) -> str:
    return storage.join(store_uri, "splits", LEDGER_DIR, check_name("model name", model_name) + ".json")


def lock_uri(store_uri: str, model_name: str) -> str:
    """The ledger's lock: one split builder at a time reads, extends and writes it."""
    return storage.join(store_uri, "splits", LEDGER_DIR, check_name("model name", model_name) + ".lock")


def read_ledger(store_uri: str, model_name: str) -> dict[str, Any] | None:
    """The model name's ledger, or None before its first split; a damaged one is a one-line
    error naming it (never silently replaced: it is what keeps the splits still)."""
    uri = ledger_uri(store_uri, model_name)
    try:
        ledger = storage.get_json(uri)
    except ArtifactNotFoundError:
        return None
    except (IntegrityError, ValueError) as err:
        raise DataError(f"{uri}: split ledger unreadable ({str(err).splitlines()[0]})") from None
    if not isinstance(ledger, dict) or not isinstance(ledger.get("patients"), dict):
        raise DataError(f"{uri}: not a split ledger (no 'patients' object)")
    bad = [pid for pid, split in ledger["patients"].items() if split not in SPLITS]
    if bad:
        raise DataError(f"{uri}: patient {bad[0]!r} has split {ledger['patients'][bad[0]]!r}, not one of {', '.join(SPLITS)}")
    return ledger


def known_assignments(ledger: dict[str, Any] | None) -> pd.DataFrame | None:
    """The ledger's patients as ``previous`` for ``build_split`` (columns patient_id, split)."""
    if not ledger or not ledger["patients"]:
        return None
    items = sorted(ledger["patients"].items())
    return pd.DataFrame({"patient_id": [p for p, _ in items], "split": [s for _, s in items]})


def _as_number(value: str) -> str:
    """An id as a tool that reads ids as numbers writes it back: leading zeros and a ``.0`` gone."""
    text = value[:-2] if value.endswith(".0") else value
    return text.lstrip("0") or ("0" if text else text)


def likely_cause(missing: set[str], new: set[str]) -> str:
    """Why a table's ids would mostly differ from the ledger's, as far as the ids tell."""
    lost_zeros = {p.lstrip("0") or "0" for p in missing if p.startswith("0") and len(p) > 1}
    if lost_zeros and len(lost_zeros & new) * 2 > len(missing):
        example = next(p for p in sorted(missing) if p.startswith("0") and (p.lstrip("0") or "0") in new)
        return (f"the ids were re-exported without their leading zeros (ledger {example!r} is now "
                f"{example.lstrip('0') or '0'!r}; a spreadsheet or tool read them as numbers): export them as text")
    as_numbers = {_as_number(p) for p in missing}
    if len({_as_number(p) for p in new} & as_numbers) * 2 > len(missing):
        return "the ids differ only in how numbers are written (leading zeros, a trailing '.0'): export them as text"
    if all(_PSEUDONYM.match(p) for p in missing) and all(_PSEUDONYM.match(p) for p in new):
        return ("both are keyed pseudonyms, so the pseudonym key changed (MAMMO_PSEUDONYM_KEY or "
                "--pseudonym-key-file of the preprocessing): convert with the key the ledger's data were made with")
    return "the table holds other patients or ids mapped anew (another dataset, or a new export's ids)"


def check_ids(table_ids: Iterable[str], ledger: dict[str, Any] | None, *, where: str, model_name: str,
              accept_fresh: bool) -> bool:
    """True when the table's ids mostly changed from the ledger's (``CHANGED_SHARE``) and
    ``accept_fresh`` accepts a fresh split; a ``DataError`` naming the likely cause when it does
    not; False when they did not mostly change (the ledger applies)."""
    known = set((ledger or {}).get("patients", {}))
    ids = {str(p) for p in table_ids}
    if not known or not ids:
        return False
    missing, new = known - ids, ids - known
    if not (len(missing) > CHANGED_SHARE * len(known) and len(new) > CHANGED_SHARE * len(ids)):
        return False
    counts = (f"{len(missing)} of the {len(known)} patients in the split ledger of model {model_name!r} are missing "
              f"and {len(new)} of its {len(ids)} patients are new")
    if accept_fresh:
        log.warning("%s: %s; a fresh split is accepted (accept_fresh_split): every patient is assigned anew", where, counts)
        return True
    raise DataError(f"{where}: {counts}: {likely_cause(missing, new)}; a fresh split would put patients the models "
                    "trained on into test (set accept_fresh_split=true to split it anew anyway)")


def conflicts(assignments: pd.DataFrame, ledger: dict[str, Any] | None) -> list[str]:
    """Patients of a split (``patient_id``, ``split`` rows) whose split differs from the ledger's."""
    known = (ledger or {}).get("patients", {})
    if not known:
        return []
    per_patient = assignments.groupby("patient_id", sort=True)["split"].first()
    return [str(p) for p, s in per_patient.items() if known.get(str(p), s) != s]


def update(ledger: dict[str, Any] | None, assignments: pd.DataFrame, *, model_name: str, entry: dict[str, Any],
           lease: Lease) -> dict[str, Any]:
    """The ledger with every patient of ``assignments`` at its split (a fresh split overrides
    the old ones) and ``entry`` (which split, which dataset) appended to its history."""
    patients = dict((ledger or {}).get("patients", {}))
    per_patient = assignments.groupby("patient_id", sort=True)["split"].first()
    patients.update({str(p): str(s) for p, s in per_patient.items()})
    history = list((ledger or {}).get("history", []))
    return {
        "format": FORMAT, "model_name": model_name, "token": lease.token,
        "patients": dict(sorted(patients.items())), "history": [*history, entry],
    }


def write_ledger(store_uri: str, model_name: str, ledger: dict[str, Any], lease: Lease) -> str:
    """Write the ledger while ``lease`` (its lock) still holds; returns its URI."""
    uri = ledger_uri(store_uri, model_name)
    current = read_ledger(store_uri, model_name)
    if current is not None and int(current.get("token", 0)) > lease.token:
        raise DataError(f"{uri}: written meanwhile by a later split builder (token {current['token']} > "
                        f"{lease.token}); rerun the step")
    lease.check()
    storage.put_json(ledger, uri)
    return uri


def trained_patients(store_uri: str) -> Callable[[str], set[str] | None]:
    """For a checkpoint's ``split_fingerprint`` (split.csv's sha256): the train and val patient
    ids of that split among ``<store>/splits/``, or None when the store holds no such split."""
    cache: dict[str, set[str] | None] = {}

    def lookup(split_sha256: str) -> set[str] | None:
        if split_sha256 not in cache:
            cache[split_sha256] = _find(store_uri, split_sha256)
        return cache[split_sha256]

    return lookup


def _find(store_uri: str, split_sha256: str) -> set[str] | None:
    root = storage.join(store_uri, "splits")
    for uri in storage.list_objects(root):
        folder, _, name = uri[len(root) + 1:].partition("/")
        if name != storage.MANIFEST_NAME:
            continue
        prefix = storage.join(root, folder)
        try:
            manifest = storage.read_manifest(prefix)
        except MammoError:
            continue
        entry = manifest.objects.get(SPLIT_CSV)
        if entry is None or entry.sha256 != split_sha256:
            continue
        data = storage.get_bytes(storage.join(prefix, SPLIT_CSV), sha256=split_sha256)
        frame = pd.read_csv(io.BytesIO(data), dtype={"patient_id": str, "split": str})
        return set(frame.loc[frame["split"].isin(("train", "val")), "patient_id"])
    return None
