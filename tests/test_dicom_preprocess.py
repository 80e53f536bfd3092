"""``mammo data dicom`` (``mammo.dicom.preprocess``) on small DICOM folders the tests write: the
RSNA layout with a table and plain folders without one, the output dataset the pipeline reads,
tag mismatches, bad files (fail and skip), incremental reruns, a crash, shards and merge."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammo.cli import main
from mammo.data.layout import open_dataset
from mammo.data.table import read_table
from mammo.dicom.options import PreprocessConfig
from mammo.dicom.preprocess import convert_shard, merge, preprocess
from mammo.dicom.synth import breast_phantom, make_dataset, save, write_synthetic_dicoms
from mammo.errors import DataError

OPTIONS = PreprocessConfig(image_size="64x48", keep_identifiers=True)  # the ids are asserted on


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 J2K DICOMs in the RSNA layout with train.csv (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("rsna") / "in"
    write_synthetic_dicoms(root, count=8, size=(120, 96), compression="j2k", seed=1)
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    target = tmp_path / "in"
    shutil.copytree(src, target)
    return target


def test_rsna_layout_becomes_the_dataset_the_pipeline_reads(rsna: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = preprocess(str(rsna), str(out), OPTIONS)
    assert (result["rows"], result["converted"], result["bad_files"], result["tag_mismatches"]) == (8, 8, 0, 0)
    table = read_table(out)  # the pipeline's own validation
    source = pd.read_csv(rsna / "train.csv", dtype=str)
    written = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    assert list(written.columns[: len(source.columns)]) == list(source.columns)  # every input column kept
    assert {"source", "source_height", "crop_top", "crop_right", "flipped", "voi"} <= set(written.columns)
    assert written["source"].iloc[0] == f"train_images/{table['patient_id'][0]}/{table['image_id'][0]}.dcm"
    assert set(written["source_height"]) == {"120"}
    _, paths = open_dataset(out)
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(48, 64)}  # PIL: (width, height)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"train.csv", "preprocess.json"} | {f"{p}/{i}.png" for p, i in zip(table.patient_id, table.image_id)} == set(manifest["objects"])
    assert not list((out / ".preprocess").rglob("*.json*"))  # journals merged away


def test_folder_without_a_table_is_read_from_the_tags(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    # RSNA-like folder named after the PatientID: the file name is the image id.
    save(make_dataset(breast_phantom(80, 64, seed=1), patient_id="p1", laterality="R", view="MLO"), root / "p1" / "42.dcm")
    # Anywhere else: the SOPInstanceUID is; a file without a suffix but with the DICM preamble is found.
    save(make_dataset(breast_phantom(80, 64, seed=2), patient_id="p2", image_id="1.2.3.4", laterality="L"),
         root / "scans" / "IMG0001")
    (root / "notes.txt").write_text("not an image")
    result = preprocess(str(root), str(tmp_path / "out"), OPTIONS)
    assert result["rows"] == 2 and result["table"] is None
    table = pd.read_csv(tmp_path / "out" / "train.csv", dtype=str, keep_default_na=False)
    rows = table.set_index("image_id")
    assert rows.loc["42", ["patient_id", "laterality", "view", "age"]].tolist() == ["p1", "R", "MLO", "61"]
    assert rows.loc["1.2.3.4", ["patient_id", "laterality", "source"]].tolist() == ["p2", "L", "scans/IMG0001"]
    assert "cancer" not in table.columns  # labels only where a table gives them
    assert (tmp_path / "out" / "p2" / "1.2.3.4.png").is_file()


def test_tags_that_disagree_with_the_table_are_reported(rsna: Path, tmp_path: Path) -> None:
    src = _copy(rsna, tmp_path)
    table = pd.read_csv(src / "train.csv", dtype=str)
    table.loc[0, "laterality"] = "R" if table.loc[0, "laterality"] == "L" else "L"
    table.loc[1, "view"] = "XCC"
    table.to_csv(src / "train.csv", index=False)
    result = preprocess(str(src), str(tmp_path / "out"), OPTIONS)
    assert result["tag_mismatches"] == 2
    fields = {(m["image_id"], m["field"]) for m in result["mismatches"]}
    assert fields == {(table.loc[0, "image_id"], "laterality"), (table.loc[1, "image_id"], "view")}
    record = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert len(record["mismatches"]) == 2
    written = pd.read_csv(tmp_path / "out" / "train.csv", dtype=str)
    assert written.loc[1, "view"] == "XCC"  # the table's value is kept


def _break(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:400])


def test_bad_files_fail_naming_the_file_or_are_skipped_and_listed(rsna: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _copy(rsna, tmp_path)
    victim = sorted((src / "train_images").rglob("*.dcm"))[3]
    _break(victim)
    out = tmp_path / "out"
    code = main(["data", "dicom", "--in", str(src), "--out", str(out), "--image-size", "64x48", "--workers", "0", "--keep-identifiers"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and str(victim) in err[-1] and err[-1].startswith("mammo: error: ")
    assert not (out / "train.csv").exists() and not (out / "manifest.json").exists()  # nothing half-written

    result = preprocess(str(src), str(out), OPTIONS.model_copy(update={"bad_files": "skip"}))
    assert (result["rows"], result["bad_files"]) == (7, 1)
    assert result["bad"][0]["source"] == str(victim.relative_to(src))
    assert victim.stem not in set(pd.read_csv(out / "train.csv", dtype=str)["image_id"])
    assert json.loads((out / "preprocess.json").read_text())["bad"][0]["reason"].startswith(str(victim))

    missing = pd.read_csv(src / "train.csv", dtype=str)
    missing.loc[len(missing)] = ["1", "999", "777", "L", "CC", "50", "0"]
    missing.to_csv(src / "train.csv", index=False)
    with pytest.raises(DataError, match=r"row 10: image_id 777: no DICOM file 999/777\.dcm"):
        preprocess(str(src), str(tmp_path / "out2"), OPTIONS)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["a PNG dataset", "the parent of datasets"])
def test_an_output_folder_holding_other_files_is_refused_untouched(
    rsna: Path, tiny_dataset: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out on an existing dataset (its PNGs and train.csv would be replaced or deleted) or on
    the folder above datasets (a sibling's PNGs would be deleted): one line, nothing written."""
    datasets = tmp_path / "datasets"
    shutil.copytree(tiny_dataset, datasets / "base")
    out = datasets / "base" if where == "a PNG dataset" else datasets
    before = _snapshot(datasets)
    assert main(["data", "dicom", "--in", str(rsna), "--out", str(out), "--image-size", "64x48", "--keep-identifiers"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out}: already holds files this command did not write" in err
    assert _snapshot(datasets) == before


def test_an_output_folder_on_s3_holding_a_dataset_is_refused_untouched(rsna: Path, tiny_dataset: Path, s3_env) -> None:
    from mammo import storage
    from mammo.errors import ConfigError

    storage.upload_dir(tiny_dataset, f"{s3_env.uri}/datasets/base")
    before = storage.list_objects(s3_env.uri)
    with pytest.raises(ConfigError, match="already holds files this command did not write"):
        preprocess(str(rsna), f"{s3_env.uri}/datasets", OPTIONS)
    assert storage.list_objects(s3_env.uri) == before


def test_cleaning_its_own_output_never_touches_files_it_did_not_write(rsna: Path, tmp_path: Path) -> None:
    """A rerun deletes the PNGs of sources that are gone (its own, listed in its manifest), not
    a PNG or a note the user put into the folder since."""
    src = _copy(rsna, tmp_path)
    out = tmp_path / "out"
    preprocess(str(src), str(out), OPTIONS)
    (out / "extra").mkdir()
    (out / "extra" / "mine.png").write_bytes(b"the user's")
    (out / "notes.txt").write_text("the user's")
    removed = sorted((src / "train_images").rglob("*.dcm"))[0]
    removed.unlink()
    table = pd.read_csv(src / "train.csv", dtype=str)
    table[table["image_id"] != removed.stem].to_csv(src / "train.csv", index=False)
    again = preprocess(str(src), str(out), OPTIONS)
    assert again["removed"] == 1 and not (out / removed.parent.name / f"{removed.stem}.png").exists()
    assert (out / "extra" / "mine.png").read_bytes() == b"the user's" and (out / "notes.txt").exists()


def test_reruns_convert_only_new_or_changed_files(rsna: Path, tmp_path: Path) -> None:
    src = _copy(rsna, tmp_path)
    out = tmp_path / "out"
    assert preprocess(str(src), str(out), OPTIONS)["converted"] == 8
    again = preprocess(str(src), str(out), OPTIONS)
    assert (again["converted"], again["unchanged"], again["rows"]) == (0, 8, 8)

    files = sorted((src / "train_images").rglob("*.dcm"))
    changed = files[0]
    ds = make_dataset(breast_phantom(120, 96, seed=99), patient_id=changed.parent.name, laterality="L")
    save(ds, changed, "j2k")
    os.utime(changed, ns=(1, 1))  # a different mtime, whatever the clock did
    removed = files[1]
    removed.unlink()
    table = pd.read_csv(src / "train.csv", dtype=str)
    table = table[table["image_id"] != removed.stem]
    table.to_csv(src / "train.csv", index=False)
    third = preprocess(str(src), str(out), OPTIONS)
    assert (third["converted"], third["unchanged"], third["removed"], third["rows"]) == (1, 6, 1, 7)
    assert not (out / removed.parent.name / f"{removed.stem}.png").exists()
    # Other pixel settings: everything again.
    assert preprocess(str(src), str(out), PreprocessConfig(image_size=32, keep_identifiers=True))["converted"] == 7
    assert {Image.open(p).size for p in open_dataset(out)[1]} == {(32, 32)}


def test_a_crash_loses_only_the_files_in_flight(rsna: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mammo.dicom.preprocess as pre

    src = _copy(rsna, tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(pre, "JOURNAL_SECONDS", 3600.0)  # locally every file is journaled anyway
    real = pre._convert
    calls = []

    def crash_on_fifth(job, *args):
        calls.append(job.source.key)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the process dies while converting its fifth file
        return real(job, *args)

    monkeypatch.setattr(pre, "_convert", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        preprocess(str(src), str(out), OPTIONS)
    monkeypatch.setattr(pre, "_convert", real)
    result = preprocess(str(src), str(out), OPTIONS)
    assert (result["converted"], result["unchanged"], result["rows"]) == (4, 4, 8)


def test_shards_then_merge_equal_one_run(rsna: Path, tmp_path: Path) -> None:
    parts = [convert_shard(str(rsna), str(tmp_path / "sharded"), OPTIONS, shard=k, shards=3) for k in range(3)]
    assert sum(p["sources"] for p in parts) == 8 and all(p["sources"] < 8 for p in parts)
    merged = merge(str(rsna), str(tmp_path / "sharded"), OPTIONS, shard_results=parts)
    single = preprocess(str(rsna), str(tmp_path / "single"), OPTIONS, workers=2)
    assert merged["rows"] == single["rows"] == 8 and merged["converted"] == 8
    a = pd.read_csv(tmp_path / "sharded" / "train.csv")
    b = pd.read_csv(tmp_path / "single" / "train.csv")
    pd.testing.assert_frame_equal(a, b)
    for png in (tmp_path / "single").rglob("*.png"):
        other = tmp_path / "sharded" / png.relative_to(tmp_path / "single")
        np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(other)))
    # Merging before every shard ran is refused.
    convert_shard(str(rsna), str(tmp_path / "partial"), OPTIONS, shard=0, shards=3)
    with pytest.raises(DataError, match="was not converted"):
        merge(str(rsna), str(tmp_path / "partial"), OPTIONS)
