"""DICOM straight from a hospital archive (issue 22): what an export holds besides clean
screening images - decoders that do not exist, truncated and oversized files, wrong bit depths,
DICOMDIRs, raw detector images, special views, implants, tomosynthesis - each one line or a
counted skip; and the identifiers, which never reach a byte the preprocessor writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammo.cli import main
from mammo.dicom.identity import KEY_ENV, Pseudonyms
from mammo.dicom.options import PreprocessConfig
from mammo.dicom.preprocess import preprocess
from mammo.dicom.read import DicomError, decode
from mammo.dicom.synth import breast_phantom, make_dataset, save
from mammo.errors import ConfigError

KEY = b"archive-test-site-key-0123456789"
KEEP = PreprocessConfig(image_size="48x32", keep_identifiers=True)
ARGS = ["--image-size", "48x32", "--keep-identifiers"]


@pytest.fixture(autouse=True)
def _no_site_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _image(path: Path, seed: int = 0, compression: str = "explicit", **tags) -> Path:
    extra = {k: tags.pop(k) for k in list(tags) if k[0].isupper()}
    ds = make_dataset(breast_phantom(60, 48, seed=seed), **tags)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return save(ds, path, compression)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["data", "dicom", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _mpeg2(path: Path) -> Path:
    from pydicom.encaps import encapsulate

    ds = make_dataset(breast_phantom(60, 48, seed=3))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 96])
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_transfer_syntax_without_a_decoder_is_one_line_or_skipped(
    tmp_path: Path, workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    _image(src / "p1" / "1.dcm", laterality="L", patient_id="p1")
    _image(src / "p1" / "2.dcm", seed=1, laterality="R", patient_id="p1")
    video = _mpeg2(src / "p1" / "3.dcm")
    code, _, err = _run(["--in", str(src), "--out", str(tmp_path / "a"), "--workers", workers, *ARGS], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"mammo: error: {video}: transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) "
        "is not supported (no decoder for it)"
    )
    assert not (tmp_path / "a" / "train.csv").exists()
    code, out, err = _run(["--in", str(src), "--out", str(tmp_path / "b"), "--workers", workers, "--bad-files", "skip", *ARGS], capsys)
    result = json.loads(out)
    assert code == 0 and (result["rows"], result["bad_files"]) == (2, 1) and "Traceback" not in err


@pytest.mark.parametrize("compression", ["j2k", "rle"])
@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_truncated_file_is_one_line_without_pydicom_s_lines(
    tmp_path: Path, compression: str, workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    good = _image(src / "p1" / "1.dcm", compression=compression, patient_id="p1")
    cut = src / "p1" / "2.dcm"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    good.unlink()
    code, _, err = _run(["--in", str(src), "--out", str(tmp_path / "out"), "--workers", workers, *ARGS], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith(f"mammo: error: {cut}: truncated DICOM file")
    assert "Traceback" not in err and not any("pydicom" in line for line in lines[:-1])


@pytest.mark.parametrize("compression", ["j2k", "jpeg-lossless"])
def test_a_codestream_of_another_size_or_cut_short_never_reaches_the_decoder(tmp_path: Path, compression: str) -> None:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, generate_fragments

    path = _image(tmp_path / "source.dcm", compression=compression)
    ds = dcmread(path)
    data = bytes(ds.PixelData)
    stream = b"".join(generate_fragments(data[8 + int.from_bytes(data[4:8], "little"):]))
    huge = bytearray(stream)
    if compression == "j2k":
        huge[8:16] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")  # SIZ: Xsiz, Ysiz
        kind = "JPEG 2000"
    else:
        sof = stream.index(b"\xff\xc3")  # SOF3 (lossless): length, precision, height, width
        huge[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
        kind = "JPEG"
    for name, fragment, message in (
        ("huge.dcm", bytes(huge), rf"{kind} codestream of 30000x30000 pixels, the header says 60x48"),
        ("cut.dcm", stream.rstrip(b"\x00")[:-2] + b"\x00\x00", rf"truncated {kind} codestream \(no end-of-image marker\)"),
    ):
        ds.PixelData = encapsulate([fragment])
        ds.save_as(tmp_path / name, enforce_file_format=True)
        with pytest.raises(DicomError, match=message):
            decode(tmp_path / name)
    np.testing.assert_array_equal(decode(path).pixels, breast_phantom(60, 48))


def test_more_pixels_than_max_pixels_are_refused_before_decompressing(tmp_path: Path) -> None:
    # Deflated: the dataset is zlib data; the header claims 20000x20000 (a 778 KB file once
    # inflated to 800 MB). Refused from the header, before the pixel data is inflated.
    ds = make_dataset(breast_phantom(60, 48, seed=1))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    ds.Rows = ds.Columns = 20000
    ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match=r"bomb\.dcm: 20000x20000 pixels x 1 frame\(s\) is more than data\.max_pixels \(100000000\)"):
        decode(tmp_path / "bomb.dcm")
    # Inflating to more than the header declares is refused too, and a plain deflated file reads.
    small = make_dataset(np.zeros((8, 8), np.uint16))
    small.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    small.PixelData = bytes(8 * 8 * 2) + bytes(12 << 20)
    small.save_as(tmp_path / "more.dcm", enforce_file_format=True)
    assert (tmp_path / "more.dcm").stat().st_size < 100_000
    with pytest.raises(DicomError, match=r"inflates to more than the 128 bytes of pixel data its header declares"):
        decode(tmp_path / "more.dcm")
    plain = make_dataset(breast_phantom(60, 48, seed=2))
    plain.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    plain.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(decode(tmp_path / "plain.dcm").pixels, breast_phantom(60, 48, seed=2))
    # The limit is a setting (--max-pixels, default data.max_pixels'), for any transfer syntax.
    rle = _image(tmp_path / "rle.dcm", compression="rle")
    with pytest.raises(DicomError, match=r"60x48 pixels x 1 frame\(s\) is more than data\.max_pixels \(1000\)"):
        decode(rle, max_pixels=1000)


def test_values_outside_bits_stored_are_one_line_or_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    _image(src / "p1" / "1.dcm", patient_id="p1")
    wrong = _image(src / "p1" / "2.dcm", seed=2, patient_id="p1", laterality="R", BitsStored=8, HighBit=7)
    code, _, err = _run(["--in", str(src), "--out", str(tmp_path / "a"), "--workers", "0", *ARGS], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"mammo: error: {wrong}: stored values 0..")
    assert "do not fit BitsStored 8 (0..255)" in err
    result = preprocess(str(src), str(tmp_path / "b"), KEEP.model_copy(update={"bad_files": "skip"}))
    assert (result["rows"], result["bad_files"]) == (1, 1)


def _dicomdir(path: Path) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = []
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _code(value: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def _archive(root: Path) -> None:
    """A CD export: a DICOMDIR, screening views, and everything else an archive holds."""
    from pydicom.sequence import Sequence

    _dicomdir(root / "DICOMDIR")
    hologic = {"Manufacturer": "HOLOGIC, Inc.", "ManufacturerModelName": "Selenia Dimensions"}
    _image(root / "p1" / "cc.dcm", patient_id="p1", view="CC", **hologic)
    _image(root / "p1" / "mlo.dcm", seed=1, patient_id="p1", view="MLO", laterality="R", **hologic)
    _image(root / "p1" / "raw.dcm", seed=2, patient_id="p1", PresentationIntentType="FOR PROCESSING")
    _image(root / "p1" / "ml.dcm", seed=3, patient_id="p1", view="ML")
    _image(root / "p2" / "implant.dcm", seed=4, patient_id="p2", BreastImplantPresent="YES",
           Manufacturer="GE MEDICAL SYSTEMS", ManufacturerModelName="Senographe Pristina")
    # A spot compression view, said only by the codes (no ViewPosition), as modalities do.
    spot = make_dataset(breast_phantom(60, 48, seed=5), patient_id="p2", view="")
    del spot.ViewPosition
    view = _code("399162004", "cranio-caudal")
    view.ViewModifierCodeSequence = Sequence([_code("399055006", "spot compression")])
    spot.ViewCodeSequence = Sequence([view])
    save(spot, root / "p2" / "spot.dcm")
    # Tomosynthesis: the Breast Tomosynthesis Image Storage class, multi-frame.
    tomo = make_dataset(np.concatenate([breast_phantom(60, 48, seed=6)] * 3), patient_id="p2")
    tomo.Rows, tomo.NumberOfFrames = 60, 3
    tomo.SOPClassUID = tomo.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.13.1.3"
    save(tomo, root / "p2" / "tomo.dcm")


def test_an_archive_export_is_converted_by_the_documented_policy(tmp_path: Path) -> None:
    src, out = tmp_path / "export", tmp_path / "out"
    _archive(src)
    result = preprocess(str(src), str(out), KEEP)  # --bad-files fail: none of these is an error
    assert (result["rows"], result["bad_files"], result["skipped_files"]) == (3, 0, 5)
    assert result["skipped"] == {"for_processing": 1, "not_an_image": 1, "tomosynthesis": 1, "view": 1, "view_modifier": 1}
    record = json.loads((out / "preprocess.json").read_text())
    assert record["skipped"] == result["skipped"] and record["policy"]["views"] == ["CC", "MLO"]
    assert {entry["category"] for entry in record["skipped_files"].values()} == set(result["skipped"])
    assert record["skipped_files"]["DICOMDIR"]["reason"].endswith("a DICOMDIR (the index of an exported CD), not an image")
    table = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False).set_index("source")
    assert table.loc["p2/implant.dcm", ["implant", "view", "machine_id"]].tolist() == ["1", "CC", "GE MEDICAL SYSTEMS Senographe Pristina"]
    assert table.loc["p1/mlo.dcm", ["implant", "view", "machine_id"]].tolist() == ["", "MLO", "HOLOGIC, Inc. Selenia Dimensions"]
    # A rerun reads nothing again; another policy re-examines exactly the files it concerns.
    again = preprocess(str(src), str(out), KEEP)
    assert (again["converted"], again["unchanged"], again["skipped_files"]) == (0, 3, 5)
    wider = KEEP.model_copy(update={"views": ["CC", "MLO", "ML"], "view_modifiers": "keep", "implants": "skip"})
    third = preprocess(str(src), str(out), wider)
    assert (third["rows"], third["converted"]) == (4, 2)
    assert third["skipped"] == {"for_processing": 1, "implant": 1, "not_an_image": 1, "tomosynthesis": 1}
    table = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False).set_index("source")
    assert table.loc["p2/spot.dcm", ["view", "view_modifier"]].tolist() == ["CC", "spot compression"]
    assert not (out / "p2" / "implant.png").exists() and "p2/implant.dcm" not in table.index
    raw = preprocess(str(src), str(tmp_path / "raw"), KEEP.model_copy(update={"for_processing": "keep"}))
    assert raw["rows"] == 4 and "for_processing" not in raw["skipped"]


def test_views_and_policies_are_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "export"
    _archive(src)
    code, out, _ = _run(["--in", str(src), "--out", str(tmp_path / "out"), "--workers", "0", "--views", "cc,ml",
                         "--view-modifiers", "keep", "--for-processing", "keep", *ARGS], capsys)
    result = json.loads(out)
    assert code == 0 and result["rows"] == 5 and result["skipped"] == {"not_an_image": 1, "tomosynthesis": 1, "view": 1}
    code, _, err = _run(["--in", str(src), "--out", str(tmp_path / "o2"), "--views", ",", *ARGS], capsys)
    assert code == 2 and err.count("\n") == 1 and "--views" in err


# --- identifiers ----------------------------------------------------------------------------------

CANARIES = {
    "PatientID": "CANARYPID7731",
    "PatientName": "CANARY^PATIENTNAME",
    "PatientBirthDate": "19450317",
    "AccessionNumber": "CANARYACC5512",
    "StudyDate": "20240105",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.7731001",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.7731002",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.7731003",
    "InstitutionName": "CANARY INSTITUTE",
    "ReferringPhysicianName": "CANARY^REFERRER",
    "OperatorsName": "CANARY^OPERATOR",
    "DeviceSerialNumber": "CANARYSN9911",
}


def _canary_export(root: Path) -> list[str]:
    """A hospital export: folders named by PatientID, files by SOPInstanceUID; canaries in
    every identifying attribute of a converted file, a skipped one and a broken one."""
    strings = []
    for n, kind in enumerate(("cc", "mlo", "raw", "broken")):
        values = {k: v + (str(n) if k.endswith("UID") or k in ("PatientID", "AccessionNumber") else "") for k, v in CANARIES.items()}
        if kind == "mlo":
            values["PatientID"] = CANARIES["PatientID"] + "0"  # the same patient as the CC
        ds = make_dataset(breast_phantom(60, 48, seed=n), patient_id=values["PatientID"], image_id=values["SOPInstanceUID"],
                          view="MLO" if kind == "mlo" else "CC", laterality="R" if kind == "mlo" else "L", age=None)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        if kind == "raw":
            ds.PresentationIntentType = "FOR PROCESSING"
        path = save(ds, root / values["PatientID"] / values["StudyInstanceUID"] / f"{values['SOPInstanceUID']}.dcm")
        if kind == "broken":
            path.write_bytes(path.read_bytes()[:-500])
        strings += list(values.values())
    return sorted(set(strings)) + ["1945-03-17", "2024-01-05", "CANARY"]


def _written_strings(root: Path) -> bytes:
    """Every byte under ``root`` (file names included), and the PNGs' text chunks decoded."""
    data = []
    for path in sorted(root.rglob("*")):
        data.append(str(path.relative_to(root)).encode())
        if path.is_file():
            data.append(path.read_bytes())
            if path.suffix == ".png":
                with Image.open(path) as image:
                    data.append(json.dumps({k: str(v) for k, v in image.info.items()}).encode())
    return b"\n".join(data)


def test_no_identifier_reaches_any_byte_the_preprocessor_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "export", tmp_path / "out"
    canaries = _canary_export(src)
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    code, printed, err = _run(["--in", str(src), "--out", str(out), "--image-size", "48x32", "--workers", "0",
                               "--bad-files", "skip", "--identifier-map", str(tmp_path / "map.csv")], capsys)
    result = json.loads(printed)
    assert code == 0 and (result["rows"], result["bad_files"], result["skipped_files"]) == (2, 1, 1)
    written = _written_strings(out)
    found = [c for c in canaries if c.encode() in written]
    assert found == [] and len(list(out.rglob("*.png"))) == 2
    assert not any(c in printed for c in canaries)  # the summary on stdout too
    table = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    assert table["age"].tolist() == ["78", "78"]  # from the birth and study dates, neither kept
    assert table["patient_id"].nunique() == 1  # the same patient, the same pseudonym
    # The way back is only where it was asked for.
    back = pd.read_csv(tmp_path / "map.csv", dtype=str, keep_default_na=False).set_index("image_id")
    assert set(back.index) == set(table["image_id"])
    cc = back.loc[Pseudonyms(KEY).image(CANARIES["SOPInstanceUID"] + "0")]
    assert cc[["original_patient_id", "study_instance_uid", "accession_number"]].tolist() == [
        CANARIES["PatientID"] + "0", CANARIES["StudyInstanceUID"] + "0", CANARIES["AccessionNumber"] + "0"]


def test_pseudonyms_are_stable_keyed_and_cover_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammo.dicom.synth import write_synthetic_dicoms

    src = tmp_path / "rsna"
    write_synthetic_dicoms(src, count=4, size=(60, 48), compression="explicit")
    options = PreprocessConfig(image_size="48x32")
    first = preprocess(str(src), str(tmp_path / "a"), options, key=KEY)
    again = preprocess(str(src), str(tmp_path / "b"), options, key=KEY)
    other = preprocess(str(src), str(tmp_path / "c"), options, key=b"another-site-key-0123456789")
    assert first["rows"] == again["rows"] == other["rows"] == 4
    tables = [pd.read_csv(tmp_path / n / "train.csv", dtype=str) for n in "abc"]
    pd.testing.assert_frame_equal(tables[0], tables[1])  # stable across runs
    given = pd.read_csv(src / "train.csv", dtype=str)
    expected = [Pseudonyms(KEY).patient(p) for p in given["patient_id"]]
    assert sorted(tables[0]["patient_id"]) == sorted(expected)
    assert set(tables[0]["patient_id"]).isdisjoint(tables[2]["patient_id"])  # keyed
    assert set(tables[0]["image_id"]).isdisjoint(given["image_id"]) and "cancer" in tables[0].columns
    written = _written_strings(tmp_path / "a")
    assert not any(f"/{i}".encode() in written or f"{i}.png".encode() in written for i in given["image_id"])
    # The key from the environment; none: one line, nothing written.
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / "train.csv", dtype=str),
        (preprocess(str(src), str(tmp_path / "d"), options), pd.read_csv(tmp_path / "d" / "train.csv", dtype=str))[1],
    )
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"no pseudonym key: .*set {KEY_ENV} or --pseudonym-key-file"):
        preprocess(str(src), str(tmp_path / "e"), options)
    assert not (tmp_path / "e").exists()


def test_key_file_map_and_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    _image(src / "p1" / "1.dcm", patient_id="p1")
    keyfile = tmp_path / "site.key"
    keyfile.write_bytes(KEY + b"\n")
    code, out, _ = _run(["--in", str(src), "--out", str(tmp_path / "out"), "--image-size", "48x32",
                         "--pseudonym-key-file", str(keyfile)], capsys)
    assert code == 0 and (tmp_path / "out" / Pseudonyms(KEY).patient("p1")).is_dir()
    refusals = [
        (["--image-size", "48x32"], "no pseudonym key"),
        (["--pseudonym-key-file", str(tmp_path / "missing.key")], "missing.key: cannot be read"),
        (["--pseudonym-key-file", str(keyfile), "--identifier-map", str(tmp_path / "o2" / "map.csv")], "must not be inside --out"),
        (["--keep-identifiers", "--identifier-map", str(tmp_path / "map.csv")], "nothing to map back"),
    ]
    for extra, message in refusals:
        code, _, err = _run(["--in", str(src), "--out", str(tmp_path / "o2"), *extra], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "o2").exists()
    short = tmp_path / "short.key"
    short.write_text("tiny")
    code, _, err = _run(["--in", str(src), "--out", str(tmp_path / "o3"), "--pseudonym-key-file", str(short)], capsys)
    assert code == 2 and "at least 16" in err


def _bucket_bytes(uri: str) -> bytes:
    from mammo import storage

    return b"\n".join(obj.encode() + b"\n" + storage.get_bytes(obj) for obj in storage.list_objects(uri))


def test_no_identifier_reaches_the_bucket_in_shards_journals_or_merge(tmp_path: Path, s3_env) -> None:
    """On the S3 server, as the pipeline runs it: the DICOMs in the bucket, two shards (their
    journals read mid-run), the merge; nothing written holds a canary."""
    from mammo import storage
    from mammo.dicom.preprocess import convert_shard, merge

    canaries = _canary_export(tmp_path / "export")
    source, out = f"{s3_env.uri}/archive/export", f"{s3_env.uri}/datasets/export-png"
    storage.upload_dir(tmp_path / "export", source)
    options = PreprocessConfig(image_size="48x32", bad_files="skip")
    parts = [convert_shard(source, out, options, shard=k, shards=2, key=KEY, workdir=tmp_path / f"pod-{k}") for k in range(2)]
    assert sum(p["converted"] for p in parts) == 2 and sum(p["skipped_files"] for p in parts) == 1
    mid_run = _bucket_bytes(out)
    assert b".preprocess/" in mid_run and [c for c in canaries if c.encode() in mid_run] == []
    result = merge(source, out, options, key=KEY)
    assert (result["rows"], result["bad_files"], result["skipped"]) == (2, 1, {"for_processing": 1})
    written = _bucket_bytes(out)
    assert [c for c in canaries if c.encode() in written] == [] and b"manifest.json" in written


def test_pipeline_steps_take_the_key_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammo_components.preprocessor.step import run_merge_step, run_plan_step, run_step

    src = tmp_path / "in"
    _image(src / "p1" / "1.dcm", patient_id="p1")
    _image(src / "p1" / "2.dcm", seed=1, patient_id="p1", laterality="R")
    monkeypatch.setenv("MAMMO_CACHE_DIR", str(tmp_path / "cache"))
    step = {"dataset_uri": str(src), "store_uri": str(tmp_path / "store"), "image_size": "48x32", "preprocess_set": []}
    with pytest.raises(ConfigError, match="no pseudonym key"):  # before any shard starts
        run_plan_step(**step, preprocess_shards=2)
    assert not (tmp_path / "store").exists()
    keyfile = tmp_path / "secret" / "key"
    keyfile.parent.mkdir()
    keyfile.write_bytes(KEY)
    assert run_plan_step(**step, preprocess_shards=2, pseudonym_key_file=str(keyfile)) == [0, 1]
    monkeypatch.setenv(KEY_ENV, KEY.decode())  # the other way: the Secret as an environment variable
    parts = [run_step(**step, shard=k, shards=2) for k in range(2)]
    out = run_merge_step(**step, parts=parts, pseudonym_key_file=str(keyfile))
    table = pd.read_csv(Path(out) / "train.csv", dtype=str)
    assert set(table["patient_id"]) == {Pseudonyms(KEY).patient("p1")}
    # Input that is de-identified already: preprocess_set keeps the ids, no key needed.
    monkeypatch.delenv(KEY_ENV)
    keep = {**step, "preprocess_set": ["keep_identifiers=true"], "store_uri": str(tmp_path / "store2")}
    out = run_merge_step(**keep, parts=[run_step(**keep, shard=0, shards=1)])
    assert set(pd.read_csv(Path(out) / "train.csv", dtype=str)["patient_id"]) == {"p1"}
