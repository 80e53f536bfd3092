"""train.csv validation: each bad input is one line naming the file and row; extra columns kept."""

from __future__ import annotations

import random
import subprocess
import sys
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
        ("patient_id,image_id,laterality,cancer,cancer\n1,10,L,0,1\n", "column 'cancer' appears 2 times in the header"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,L,1\n",
         "row 2: breast 1_L has images labelled cancer 0 and 1 (row 3); a breast has one label"),
    ],
)
def test_bad_tables_name_the_file_and_row(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(DataError) as err:
        read_table(tmp_path)
    assert str(err.value) == f"{path}: {message}"


def test_ids_that_pandas_would_read_as_missing_are_ids(tmp_path):
    write(tmp_path, "patient_id,image_id,laterality,cancer,age\nNA,null,L,0,\nNone,NaN,R,0,61\n")
    table = read_table(tmp_path)
    assert table["patient_id"].tolist() == ["NA", "None"] and table["image_id"].tolist() == ["null", "NaN"]
    assert table["age"].isna().tolist() == [True, False]  # other columns keep missing values


def test_missing_empty_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv: dataset table not found"):
        read_table(tmp_path)
    write(tmp_path, "")
    with pytest.raises(DataError, match=r"train\.csv: file is empty"):
        read_table(tmp_path)
    write(tmp_path, b"patient_id,image_id,laterality,cancer\n\xff\xfe,1,L,0\n")
    with pytest.raises(DataError, match=r"train\.csv: not UTF-8 text"):
        read_table(tmp_path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # More fields than the header: once pandas took the extra leading fields for a row index
        # (a TypeError traceback, or with one field an error naming the wrong value).
        ("patient_id,image_id,laterality,cancer\n1,10,L,0,x,y\n1,11,R,0,x,y\n", "row 2 has 6 fields, the header 4"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0,x\n1,11,R,1,y\n", "row 2 has 5 fields, the header 4"),
        ("patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,R,0,extra\n", "row 3 has 5 fields, the header 4"),
    ],
)
def test_rows_longer_than_the_header_are_named(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(DataError) as err:
        read_table(tmp_path)
    assert str(err.value) == f"{path}: not a readable CSV ({message})"


def test_encodings(tmp_path):
    good = "patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,R,1\n"
    write(tmp_path, b"\xef\xbb\xbf" + good.encode())  # Excel's UTF-8 with BOM is fine
    assert read_table(tmp_path)["patient_id"].tolist() == ["1", "1"]
    write(tmp_path, good.replace("1,11", "1,\xe911").encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset \d+\); save the table as UTF-8 CSV"):
        read_table(tmp_path)


GOOD = ("site_id,patient_id,image_id,laterality,view,age,cancer\n" + "".join(
    f"1,{p},{p * 10 + i},{'LR'[i % 2]},CC,60,{(p + i) % 2}\n" for p in range(1, 8) for i in range(3))).encode()


def _mutations(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, truncations, other encodings, flipped and inserted bytes, extra fields,
    other separators, BOMs and line endings: what a broken export or a wrong file looks like."""
    cases = []
    for _ in range(count):
        kind = rng.randrange(9)
        data = bytearray(GOOD)
        if kind == 0:
            data = bytearray(rng.randbytes(rng.randrange(1, 400)))
        elif kind == 1:
            data = data[: rng.randrange(len(data))]
        elif kind == 2:
            data = bytearray(GOOD.decode().encode(rng.choice(["utf-16", "utf-32", "latin-1", "cp1252"])))
        elif kind == 3:
            for _ in range(rng.randrange(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 4:
            lines = bytes(data).split(b"\n")
            i = rng.randrange(1, len(lines))
            lines[i] += b"," * rng.randrange(1, 4) + b"x"
            data = bytearray(b"\n".join(lines))
        elif kind == 5:
            for _ in range(rng.randrange(1, 5)):
                data.insert(rng.randrange(len(data)), rng.choice(b'",\n\r\x00;\t'))
        elif kind == 6:
            data = bytearray(bytes(data).replace(b",", rng.choice([b";", b"\t", b"|"])))
        elif kind == 7:
            data = bytearray(b"\xef\xbb\xbf") + data
        else:
            data = bytearray(bytes(data).replace(b"\n", b"\r\n") + b"\n\n,,,,\n")
        cases.append(bytes(data))
    return cases


def test_fuzzed_tables_never_escape_as_tracebacks(tmp_path):
    """Whatever the bytes, reading the table either succeeds or raises DataError with one line."""
    outcomes = {"read": 0, "refused": 0}
    for data in _mutations(random.Random(20261130), 600):
        write(tmp_path, data)
        try:
            read_table(tmp_path)
            outcomes["read"] += 1
        except DataError as err:
            assert "\n" not in str(err) and str(err).startswith(str(tmp_path / "train.csv"))
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300 and outcomes["read"] > 10


@pytest.mark.slow
def test_fuzzed_tables_through_the_command_exit_2_with_one_line(tmp_path):
    """The same, end to end: `mammo split` on a few broken tables (real processes)."""
    rng = random.Random(7)
    cases = [b"patient_id,image_id,laterality,cancer\n1,10,L,0,x,y\n1,11,R,0,x,y\n", GOOD.decode().encode("utf-16")]
    cases += rng.sample(_mutations(rng, 50), 4)
    mammo = Path(sys.executable).with_name("mammo")
    for n, data in enumerate(cases):
        folder = tmp_path / f"d{n}"
        folder.mkdir()
        (folder / "train.csv").write_bytes(data)
        proc = subprocess.run([str(mammo), "split", "--data", str(folder), "--out", str(tmp_path / f"s{n}")],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            continue  # a mutation that left a valid table
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("mammo: error: ") and "Traceback" not in proc.stderr
        assert not (tmp_path / f"s{n}").exists()  # nothing half-written
