"""train.csv validation: each bad input is one line naming the file and row; extra columns kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo.data.table import breast_ids, read_table
from mammo.errors import DataError

HEADER = "site_id,patient_id,image_id,laterality,view,age,cancer,BIRADS,density\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.csv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_valid_table_keeps_every_column_and_string_ids(tmp_path):
    write(tmp_path, HEADER + "1,007,0101,L,CC,61,0,1,B\n1,007,0102,R,MLO,61,1,,C\n")
    table = read_table(tmp_path)
    assert list(table.columns) == HEADER.strip().split(",")
    assert table["patient_id"].tolist() == ["007", "007"]  # leading zeros survive
    assert table["cancer"].tolist() == [0, 1]
    assert breast_ids(table).tolist() == ["007_L", "007_R"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("patient_id,image_id,cancer\n1,2,0\n", "missing required column(s): laterality"),
        ("patient_id,image_id,laterality,cancer\n", "table has no rows"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,R,2\n", "row 3: cancer must be 0 or 1, got '2'"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,yes\n", "row 2: cancer must be 0 or 1, got 'yes'"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0.5\n", "row 2: cancer must be 0 or 1, got '0.5'"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,B,0\n", "row 3: laterality must be L or R, got 'B'"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0\n2,11,R,0\n2,10,R,1\n",
         "row 4: duplicate image_id 10 (first seen in row 2)"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0\n,11,R,0\n", "row 3: empty patient_id"),
    ],
)
def test_bad_tables_name_the_file_and_row(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(DataError) as err:
        read_table(tmp_path)
    assert str(err.value) == f"{path}: {message}"


def test_missing_empty_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv: dataset table not found"):
        read_table(tmp_path)
    write(tmp_path, "")
    with pytest.raises(DataError, match=r"train\.csv: file is empty"):
        read_table(tmp_path)
    write(tmp_path, b"patient_id,image_id,laterality,cancer\n\xff\xfe,1,L,0\n")
    with pytest.raises(DataError, match=r"train\.csv: not a readable CSV"):
        read_table(tmp_path)
