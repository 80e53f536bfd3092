"""Read and validate the RSNA-style ``train.csv`` before any work is done.

Only patient_id, image_id, laterality and cancer are required; every other column (site_id, view,
age, BIRADS, density, machine_id, ...) is allowed and kept. Ids are kept as strings so that
leading zeros or non-numeric ids survive a round trip unchanged.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pandas as pd

from mammo.errors import DataError

REQUIRED_COLUMNS = ("patient_id", "image_id", "laterality", "cancer")
#: The full column set of the real RSNA train.csv (the synthetic generator writes all of them).
RSNA_COLUMNS = (
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
)
TABLE_NAME = "train.csv"


def table_path(root: str | Path) -> Path:
    """``root`` may be the dataset directory or the CSV file itself."""
    path = Path(root)
    return path / TABLE_NAME if path.is_dir() else path


def _row(index: int) -> int:
    """Line number in the CSV file (header is line 1)."""
    return index + 2


def _parse_problem(path: Path, exc: Exception) -> str:
    """Why the CSV parser gave up, as a few words naming the row where possible."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            header = next(rows, [])
            for number, row in enumerate(rows, start=2):
                if len(row) > len(header):
                    return f"row {number} has {len(row)} fields, the header {len(header)}"
    except (csv.Error, UnicodeDecodeError, OSError):
        pass
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^Error tokenizing data\. C error: ", "", text)[:200]


def load_csv(path: Path, text_columns: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """A table CSV as written: ``text_columns`` as text, ids exactly as in the file (``NA``,
    ``null`` or ``None`` are ids, not missing values), a header without repeated names;
    ``DataError`` naming the file (and the row where it can) otherwise."""
    try:
        # Required columns as text: ids keep leading zeros, and errors quote the value as written.
        # index_col=False: rows longer than the header are an error, never a silent row index.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(
                path, dtype={c: str for c in text_columns}, index_col=False, encoding="utf-8-sig"
            )
            ids = [c for c in ("patient_id", "image_id") if c in table.columns]
            if ids:  # pandas' default missing-value words (NA, null, None, ...) are ids here
                table[ids] = pd.read_csv(path, usecols=ids, dtype=str, keep_default_na=False, na_values=[""],
                                         index_col=False, encoding="utf-8-sig")[ids]
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the table as UTF-8 CSV"
        ) from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, OverflowError) as exc:
        raise DataError(f"{path}: not a readable CSV ({_parse_problem(path, exc)})") from None
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the header")
    return table


def read_table(root: str | Path) -> pd.DataFrame:
    """Load and validate the table; raise ``DataError`` naming the file and row on bad input."""
    path = table_path(root)
    if not path.is_file():
        raise DataError(f"{path}: dataset table not found")
    table = load_csv(path)
    validate_table(table, str(path))
    table["patient_id"] = table["patient_id"].str.strip()
    table["image_id"] = table["image_id"].str.strip()
    table["laterality"] = table["laterality"].str.strip()
    table["cancer"] = pd.to_numeric(table["cancer"].str.strip()).astype("int64")
    return table.reset_index(drop=True)


def validate_table(table: pd.DataFrame, source: str) -> None:
    """Check columns, emptiness, ids, labels and laterality; first problem wins."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{source}: missing required column(s): {', '.join(missing)}")
    if table.empty:
        raise DataError(f"{source}: table has no rows")
    for column in ("patient_id", "image_id"):
        blank = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if blank.any():
            raise DataError(f"{source}: row {_row(int(blank.idxmax()))}: empty {column}")
    for column in ("patient_id", "image_id"):
        # Ids name files (``{patient_id}/{image_id}.png``): a path in an id could read a file
        # outside the dataset (``../../outside/evil``, ``/etc/...``).
        ids = table[column].astype(str).str.strip()
        pathlike = ids.str.contains(r"[/\\\x00]", regex=True) | ids.isin([".", ".."])
        if pathlike.any():
            i = int(pathlike.idxmax())
            raise DataError(
                f"{source}: row {_row(i)}: {column} {table[column].iloc[i]!r} is not a plain name "
                "(no '/', '\\', '.' or '..'): ids name files inside the dataset"
            )
    labels = pd.to_numeric(table["cancer"].astype(str).str.strip(), errors="coerce")
    bad = labels.isna() | ~labels.isin([0, 1])
    if bad.any():
        i = int(bad.idxmax())
        raise DataError(
            f"{source}: row {_row(i)}: cancer must be 0 or 1, got {table['cancer'].iloc[i]!r}"
        )
    side = table["laterality"].astype(str).str.strip()
    bad = ~side.isin(["L", "R"])
    if bad.any():
        i = int(bad.idxmax())
        raise DataError(
            f"{source}: row {_row(i)}: laterality must be L or R, got {table['laterality'].iloc[i]!r}"
        )
    ids = table["image_id"].astype(str).str.strip()
    dup = ids.duplicated()
    if dup.any():
        i = int(dup.idxmax())
        first = int(ids[ids == ids.iloc[i]].index[0])
        raise DataError(
            f"{source}: row {_row(i)}: duplicate image_id {ids.iloc[i]} (first seen in row {_row(first)})"
        )
    # A breast has one label: its images disagreeing is a mistake in the table, not a max to take.
    breast = table["patient_id"].astype(str).str.strip() + "_" + side
    mixed = labels.groupby(breast).transform("nunique") > 1
    if mixed.any():
        i = int(mixed.idxmax())
        other = int(breast[(breast == breast.iloc[i]) & (labels != labels.iloc[i])].index[0])
        raise DataError(
            f"{source}: row {_row(i)}: breast {breast.iloc[i]} has images labelled cancer {int(labels.iloc[i])} "
            f"and {int(labels.iloc[other])} (row {_row(other)}); a breast has one label"
        )


def breast_ids(table: pd.DataFrame) -> pd.Series:
    """Breast key ``{patient_id}_{laterality}``, the competition's prediction_id."""
    return table["patient_id"].astype(str) + "_" + table["laterality"].astype(str)
