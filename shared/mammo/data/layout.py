"""Find the PNG of every table row, whichever of the common RSNA export layouts is on disk.

Exports of the RSNA data come as ``{patient_id}/{image_id}.png`` (nested), flat
``{image_id}.png`` or flat ``{patient_id}_{image_id}.png``, either in the dataset directory
itself or in a subdirectory such as ``train_images_processed_512/``. The layout and directory
are detected from the first few rows only (a glob over 54k files would be slow); every row's
file is then checked so that a missing image stops the run before any training starts.

``LAYOUTS`` is the one statement of those rules: ``resolve_image_paths`` applies it to a local
directory, ``match_image_keys`` to the object keys of a dataset in storage (the components).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

import pandas as pd

from mammo.data.table import read_table, table_path
from mammo.errors import DataError

log = logging.getLogger(__name__)

#: Path of one image relative to the image directory, from (patient_id, image_id).
Layout = Callable[[str, str], str]

LAYOUTS: dict[str, Layout] = {
    "nested": lambda patient, image: os.path.join(patient, f"{image}.png"),
    "flat": lambda patient, image: f"{image}.png",
    "flat_patient": lambda patient, image: f"{patient}_{image}.png",
}
#: Rows probed to detect the layout; a few misses among them are tolerated.
PROBE_ROWS = 8
IMAGE_SUFFIX = ".png"


def image_stems(patient: str, image: str) -> list[str]:
    """The file names (without ``.png``) the image of (patient, image) has in the layouts,
    in ``LAYOUTS`` order and without repeats: ``[image, f"{patient}_{image}"]``."""
    stems = (PurePosixPath(layout(patient, image).replace(os.sep, "/")).stem for layout in LAYOUTS.values())
    return list(dict.fromkeys(stems))


def match_image_keys(keys: Iterable[str], ids: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The object keys (relative paths, ``/``-separated, in any subfolder) holding the PNG of
    each (patient_id, image_id), and the image ids none was found for.

    A key is matched by its file name, with the first layout of ``image_stems`` that finds
    any: every key of that name is taken (a dataset holds one image export, so normally one).
    Used where a directory cannot be probed: a listing of a dataset in object storage."""
    by_stem: dict[str, list[str]] = {}
    for key in keys:
        if key.lower().endswith(IMAGE_SUFFIX):
            by_stem.setdefault(PurePosixPath(key).stem, []).append(key)
    chosen: dict[str, None] = {}
    missing: list[str] = []
    for patient, image in ids:
        found = next((by_stem[stem] for stem in image_stems(patient, image) if stem in by_stem), None)
        if found is None:
            missing.append(image)
        chosen.update(dict.fromkeys(found or []))
    return list(chosen), missing


def _dataset_dir(root: str | Path) -> Path:
    """The directory holding ``train.csv`` (``root`` may name the CSV file itself)."""
    return table_path(root).parent


def _candidate_dirs(base: Path) -> Iterator[Path]:
    """The dataset directory first, then its subdirectories, those named like images first."""
    yield base
    names = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    names.sort(key=lambda name: "image" not in name.lower())
    yield from (base / name for name in names)


def _hits(directory: Path, layout: Layout, probe: list[tuple[str, str]]) -> int:
    return sum(os.path.isfile(os.path.join(directory, layout(p, i))) for p, i in probe)


def _detect(dirs: Iterable[Path], probe: list[tuple[str, str]]) -> tuple[Path, str] | None:
    """First (directory, layout name) finding every probed file, else the one finding most."""
    best: tuple[int, Path, str] | None = None
    for directory in dirs:
        for name, layout in LAYOUTS.items():
            hits = _hits(directory, layout, probe)
            if hits == len(probe):
                return directory, name
            if hits and (best is None or hits > best[0]):
                best = (hits, directory, name)
    return None if best is None else (best[1], best[2])


def resolve_image_paths(
    root: str | Path, table: pd.DataFrame, images: str | Path | None = None
) -> list[str]:
    """One PNG path per table row, in table order; ``DataError`` if any file is missing."""
    source = table_path(root)
    ids = list(zip(table["patient_id"].astype(str), table["image_id"].astype(str), strict=True))
    probe = ids[:PROBE_ROWS]
    if images is not None:
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image directory not found")
        directory, layout = _detect([image_dir], probe) or (image_dir, "nested")
    else:
        base = _dataset_dir(root)
        if not base.is_dir():
            raise DataError(f"{base}: dataset directory not found")
        found = _detect(_candidate_dirs(base), probe)
        if found is None:
            patient, image = probe[0]
            raise DataError(
                f"{source}: no images found for the first rows in {base} or its subdirectories "
                f"(looked for {patient}/{image}.png, {image}.png and {patient}_{image}.png); "
                "pass the image directory explicitly"
            )
        directory, layout = found
    log.info("images: %s (%s layout)", directory, layout)
    paths = [os.path.join(directory, LAYOUTS[layout](p, i)) for p, i in ids]
    inside = os.path.normpath(directory) + os.sep
    for n, path in enumerate(paths):  # ids are plain names (read_table); make sure of it here
        if not os.path.normpath(path).startswith(inside):
            raise DataError(f"{source}: row {n + 2}: image_id {ids[n][1]!r} resolves outside {directory}")
    missing = [n for n, path in enumerate(paths) if not os.path.isfile(path)]
    if missing:
        first = missing[0]
        raise DataError(
            f"{source}: row {first + 2}: image_id {ids[first][1]}: image not found at "
            f"{paths[first]} ({len(missing)} of {len(paths)} images missing)"
        )
    # The image directory may itself be a link (data kept on another disk); inside it, a link
    # (to a PNG or a patient folder) must stay inside it, so a row cannot read elsewhere.
    real = os.path.realpath(directory) + os.sep
    for n, path in enumerate(paths):
        target = os.path.realpath(path)
        if not target.startswith(real):
            raise DataError(
                f"{source}: row {n + 2}: image_id {ids[n][1]}: {path} is a link to {target}, outside the "
                f"image directory {directory}; copy the file in, or link the whole image directory"
            )
    return paths


def open_dataset(root: str | Path, images: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate ``train.csv``, then resolve every row's image path."""
    table = read_table(root)
    return table, resolve_image_paths(root, table, images)


def holds_dicoms(folder: Path, looked_at: int = 2000) -> bool:
    """Whether a local dataset folder holds DICOM files (``*.dcm``/``*.dicom``) and no PNGs,
    judged from the first ``looked_at`` files found."""
    seen = 0
    dicoms = False
    for _, _, files in os.walk(folder):
        for name in files:
            lower = name.lower()
            if lower.endswith(".png"):
                return False
            dicoms = dicoms or lower.endswith((".dcm", ".dicom"))
            seen += 1
            if seen >= looked_at:
                return dicoms
    return dicoms
