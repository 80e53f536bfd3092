"""A synthetic RSNA-layout dataset whose cancer images carry a learnable signal.

Demos, tests and benchmarks need data with the real dataset's shape (the full ``train.csv``
column set, 1-4 views per breast, both breasts per patient, cancer in one breast of a cancer
patient) and images a small CNN can actually learn from, without downloading 300 GB. Images
are breast-shaped textured regions on a dark background (with the pectoral muscle on MLO
views); every image of a cancer breast also shows a small bright spiculated mass at a random
position. Everything derives from ``seed``, so the same arguments give byte-identical files
(on the same torch build and CPU type).

By default every lesion is plainly visible, which a small CNN separates perfectly: fine for
tests of the machinery, useless for a report. ``lesion_contrast`` (fainter masses), ``occult``
(cancer breasts whose lesion shows in no view, as some cancers are mammographically occult) and
``view_miss`` (a lesion missing from one view) make the task realistic: the demo uses them so
that its test AUC lands well above chance and clearly below 1 (``occult`` alone caps the
breast-level AUC near 1 - occult / 2). They draw from generators of their own, so images the
options do not touch are byte-identical to the default dataset's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchvision.io import write_png
from mammo.data.table import RSNA_COLUMNS, TABLE_NAME
from mammo.errors import ConfigError
from mammo.storage.atomic import atomic_path
from mammo.progress import track

IMAGE_DIR = "train_images"
#: Pixels generated per vectorised chunk: few large tensor ops, bounded memory at any size.
CHUNK_PIXELS = 2**22
_SITE_MACHINES = {1: [21, 29, 48, 49, 93, 216], 2: [29, 48, 49, 170, 190, 197, 210]}
_OTHER_VIEWS = ["AT", "ML", "LM", "LMO"]


def _check_difficulty(lesion_contrast: float, occult: float, view_miss: float) -> None:
    if not 0 < lesion_contrast <= 4:
        raise ConfigError(f"lesion_contrast must be in (0, 4], got {lesion_contrast}")
    for name, value in (("occult", occult), ("view_miss", view_miss)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _validate(patients: int, image_size: int, prevalence: float, layout: str) -> None:
    if patients < 1:
        raise ConfigError(f"patients must be at least 1, got {patients}")
    if image_size < 16:
        raise ConfigError(f"image_size must be at least 16, got {image_size}")
    if not 0 < prevalence < 1:
        raise ConfigError(f"prevalence must be between 0 and 1 (exclusive), got {prevalence}")
    if layout not in ("nested", "flat"):
        raise ConfigError(f"layout must be 'nested' or 'flat', got {layout!r}")


def _breast_views(rng: np.random.Generator) -> list[str]:
    """1-4 views, mostly the standard CC + MLO pair, now and then an extra or unusual view."""
    count = int(rng.choice([1, 2, 3, 4], p=[0.04, 0.80, 0.11, 0.05]))
    if count == 1:
        return [str(rng.choice(["CC", "MLO"]))]
    extras = [
        str(rng.choice(["CC", "MLO"])) if rng.random() < 0.85 else str(rng.choice(_OTHER_VIEWS))
        for _ in range(count - 2)
    ]
    return ["CC", "MLO", *extras]


def _build_table(patients: int, prevalence: float, rng: np.random.Generator) -> pd.DataFrame:
    """One row per image with the real train.csv's columns and plausible value distributions."""
    patient_ids = np.sort(10000 + rng.choice(max(55000, 2 * patients), patients, replace=False))
    n_cancer = min(max(1, round(prevalence * patients)), max(patients - 1, 1))
    cancer_patients = set(rng.choice(patients, n_cancer, replace=False).tolist())
    rows: list[dict[str, Any]] = []
    for p, patient_id in enumerate(patient_ids):
        site = int(rng.choice([1, 2], p=[0.55, 0.45]))
        machine = int(rng.choice(_SITE_MACHINES[site]))
        age = float(np.clip(round(rng.normal(59, 10)), 35, 89))
        implant = int(rng.random() < 0.02)
        density = str(rng.choice(list("ABCD"), p=[0.1, 0.42, 0.38, 0.1]))
        cancer_side = str(rng.choice(["L", "R"])) if p in cancer_patients else None
        for side in ("L", "R"):
            cancer = int(side == cancer_side)
            biopsy = 1 if cancer else int(rng.random() < 0.03)
            invasive = int(cancer and rng.random() < 0.65)
            if site == 2:
                birads = np.nan
            elif cancer:
                birads = float(rng.choice([0, 1], p=[0.8, 0.2]))
            else:
                birads = float(rng.choice([0, 1, 2], p=[0.15, 0.6, 0.25]))
            for view in _breast_views(rng):
                rows.append(
                    {
                        "site_id": site,
                        "patient_id": str(patient_id),
                        "laterality": side,
                        "view": view,
                        "age": age,
                        "cancer": cancer,
                        "biopsy": biopsy,
                        "invasive": invasive,
                        "BIRADS": birads,
                        "implant": implant,
                        "density": density,
                        "machine_id": machine,
                        "difficult_negative_case": bool(biopsy and not cancer),
                    }
                )
    table = pd.DataFrame(rows)
    image_ids = 10**5 + rng.choice(2**31 - 10**5, len(table), replace=False)
    table["image_id"] = [str(i) for i in image_ids]
    return table[list(RSNA_COLUMNS)]


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * (high - low) + low).view(n, 1, 1)


def _smooth_noise(gen: torch.Generator, n: int, cells: int, size: int) -> torch.Tensor:
    """Zero-mean noise varying over ``size / cells`` pixels: tissue texture at one scale."""
    coarse = torch.rand(n, 1, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def _render(chunk: pd.DataFrame, size: int, gen: torch.Generator, lesion_contrast: float = 1.0) -> torch.Tensor:
    """uint8 [n, 1, size, size] images for the rows of ``chunk`` (chest wall on the left).
    A row's lesion shows where its ``visible`` column (default: ``cancer``) is 1, at
    ``lesion_contrast`` times the full brightness."""
    n = len(chunk)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = axis.view(1, size, 1), axis.view(1, 1, size)
    # Breast: half-ellipse against the chest wall with a soft skin line.
    reach, half_height = _uniform(gen, n, 0.55, 0.85), _uniform(gen, n, 0.34, 0.47)
    centre = _uniform(gen, n, 0.45, 0.55)
    radius = torch.sqrt((x / reach) ** 2 + ((y - centre) / half_height) ** 2)
    breast = torch.sigmoid((1 - radius) * 25)
    density = torch.tensor(["ABCD".index(d) for d in chunk["density"]], dtype=torch.float32).view(n, 1, 1)
    tissue = 70 + 18 * density + 30 * (1 - radius).clamp(0, 1) ** 0.5
    tissue = tissue + 22 * _smooth_noise(gen, n, 6, size) + 9 * _smooth_noise(gen, n, 24, size)
    image = breast * tissue
    # MLO views show the pectoral muscle as a bright triangle in the upper chest-wall corner.
    mlo = torch.tensor(chunk["view"].str.contains("MLO").to_numpy(), dtype=torch.float32).view(n, 1, 1)
    muscle = torch.sigmoid((1 - x / _uniform(gen, n, 0.22, 0.38) - y / _uniform(gen, n, 0.35, 0.6)) * 30)
    image = image + mlo * muscle * breast * 45
    # Cancer: a small bright spiculated mass somewhere inside the breast.
    angle = _uniform(gen, n, -1.2, 1.2)
    depth = _uniform(gen, n, 0.2, 0.7)
    mass_x, mass_y = depth * reach * torch.cos(angle), centre + depth * half_height * torch.sin(angle)
    sigma = _uniform(gen, n, 0.035, 0.06)
    spikes, phase = torch.randint(5, 10, (n, 1, 1), generator=gen), _uniform(gen, n, 0, 2 * math.pi)
    dx, dy = x - mass_x, y - mass_y
    spread = sigma * (1 + 0.35 * torch.cos(spikes * torch.atan2(dy, dx) + phase))
    mass = _uniform(gen, n, 50, 90) * torch.exp(-(dx**2 + dy**2) / (2 * spread**2))
    shown = chunk["visible"] if "visible" in chunk.columns else chunk["cancer"]
    cancer = torch.tensor(shown.to_numpy(), dtype=torch.float32).view(n, 1, 1)
    image = image + cancer * mass * breast * lesion_contrast
    # Acquisition: machine gain, sensor noise, a nearly black background.
    image = image * _uniform(gen, n, 0.85, 1.15) + 3 * torch.randn(n, size, size, generator=gen) * breast + 4
    flip = torch.tensor((chunk["laterality"] == "R").to_numpy()).view(n, 1, 1)
    image = torch.where(flip, image.flip(-1), image)
    return image.round().clamp(0, 255).to(torch.uint8).unsqueeze(1)


def _rendered(
    table: pd.DataFrame, size: int, gen: torch.Generator, lesion_contrast: float = 1.0
) -> Iterator[tuple[pd.Series, torch.Tensor]]:
    """(row, uint8 [1, size, size]) per table row, rendered a chunk at a time."""
    chunk_rows = max(1, CHUNK_PIXELS // size**2)
    for start in range(0, len(table), chunk_rows):
        chunk = table.iloc[start : start + chunk_rows]
        yield from zip((row for _, row in chunk.iterrows()), _render(chunk, size, gen, lesion_contrast), strict=True)


def _visibility(table: pd.DataFrame, occult: float, view_miss: float, seed: int) -> pd.Series:
    """Which cancer images show their lesion: none of an occult cancer breast's images (a share
    ``occult`` of cancer breasts: the mammographically occult cancers every screening programme
    misses), and each other image with probability 1 - ``view_miss`` (a lesion seen in one view
    only). Drawn from a generator of its own, so the default (everything visible) leaves every
    other draw, and so the files, as they were."""
    visible = table["cancer"].astype(int).copy()
    if occult == 0 and view_miss == 0:
        return visible
    rng = np.random.default_rng([seed, 1])
    breasts = table.loc[table["cancer"] == 1, ["patient_id", "laterality"]].drop_duplicates()
    hidden = {tuple(b) for b, u in zip(breasts.itertuples(index=False), rng.random(len(breasts))) if u < occult}
    for i in np.flatnonzero(table["cancer"].to_numpy() == 1):
        row = table.iloc[i]
        if (row["patient_id"], row["laterality"]) in hidden or rng.random() < view_miss:
            visible.iloc[i] = 0
    return visible


def _image_path(images: Path, row: pd.Series, layout: str) -> Path:
    if layout == "nested":
        return images / row["patient_id"] / f"{row['image_id']}.png"
    return images / f"{row['image_id']}.png"


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    """Atomically: a dataset without its train.csv is visibly incomplete, never half-written."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_synthetic_dataset(
    out: str | Path,
    *,
    patients: int = 200,
    image_size: int = 512,
    prevalence: float = 0.1,
    layout: Literal["nested", "flat"] = "nested",
    seed: int = 0,
    lesion_contrast: float = 1.0,
    occult: float = 0.0,
    view_miss: float = 0.0,
) -> dict[str, Any]:
    """Write ``out/train.csv`` and ``out/train_images/`` PNGs; return a summary of what was written.

    Difficulty (defaults: every lesion plainly visible, which a small CNN separates perfectly):
    ``lesion_contrast`` scales the masses' brightness against the tissue texture, ``occult`` is
    the share of cancer breasts whose lesion shows in no image, ``view_miss`` the chance that an
    image of another cancer breast does not show it."""
    _validate(patients, image_size, prevalence, layout)
    _check_difficulty(lesion_contrast, occult, view_miss)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a directory")
    images = root / IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    # Rewriting in place: drop the old table first, so an interrupted run leaves no valid dataset.
    (root / TABLE_NAME).unlink(missing_ok=True)
    table = _build_table(patients, prevalence, np.random.default_rng(seed))
    if layout == "nested":
        for patient_id in table["patient_id"].unique():
            (images / patient_id).mkdir(exist_ok=True)
    shown = table.assign(visible=_visibility(table, occult, view_miss, seed))
    rendered = _rendered(shown, image_size, torch.Generator().manual_seed(seed), lesion_contrast)
    for row, pixels in track(rendered, desc="synthetic images", total=len(table), every_s=10.0):
        write_png(pixels, str(_image_path(images, row, layout)))
    _write_csv(table, root / TABLE_NAME)
    cancer = table[table["cancer"] == 1]
    return {
        "out": str(root),
        "rows": len(table),
        "patients": patients,
        "cancer_images": len(cancer),
        "cancer_patients": int(cancer["patient_id"].nunique()),
        "layout": layout,
        **({} if (lesion_contrast, occult, view_miss) == (1.0, 0.0, 0.0) else {
            "lesion_contrast": lesion_contrast, "occult": occult, "view_miss": view_miss,
            "visible_cancer_images": int(shown["visible"].sum()),
        }),
    }
