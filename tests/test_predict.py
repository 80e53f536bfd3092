"""Using a model: ``mammo predict`` gives evaluate's probabilities on the same labelled data,
reads a production pointer (verified, with its recorded threshold) and tables without labels;
the weights-only export gives the checkpoint's probabilities to 1e-5 and loads with
``weights_only=True``; the exported program too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from mammo import storage
from mammo.cli import main
from mammo.config import EvalConfig, TrainConfig
from mammo.config_files import load_config
from mammo.engine.baseline import train_baseline
from mammo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mammo.errors import CheckpointError, ConfigError, IntegrityError
from mammo.evaluate import run_evaluation
from mammo.export import (
    TOLERANCE,
    example_images,
    export_name,
    load_export,
    model_from_export,
    probabilities,
    write_export,
    write_program,
)
from mammo.predict import images_path, resolve_model, run_predict
from mammo.split import run_split

COMMON = {"data.batch_size": 16, "data.workers": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset, split, checkpoint): one epoch of tinynet at 32 px on the tiny dataset."""
    root = tmp_path_factory.mktemp("predict")
    run_split(data=str(tiny_dataset), out=str(root / "split"), val_frac=0.25, test_frac=0.25, seed=42)
    config = load_config(TrainConfig, overrides={
        **COMMON, "model.backbone": "tinynet", "data.image_size": 32, "data.root": str(tiny_dataset),
        "split": str(root / "split"), "out": str(root / "run"), "epochs": 1, "warmup_epochs": 0,
        "augment.enabled": False,
    })
    train_baseline(config)
    return tiny_dataset, root / "split", root / "run" / "last.pt"


def test_predict_gives_evaluate_s_probabilities(trained, tmp_path):
    data, split, checkpoint = trained
    config = load_config(EvalConfig, overrides={
        **COMMON, "data.root": str(data), "split": str(split), "out": str(tmp_path / "eval"),
        "checkpoints": [str(checkpoint)], "stats.resamples": 50, "stats.subgroup_resamples": 0,
    })
    evaluation = run_evaluation(config)
    out = tmp_path / "scores" / "breasts.csv"
    summary = run_predict(model=str(checkpoint), data=str(data), out=str(out), device="cpu", workers=0,
                          threshold=evaluation.metrics["threshold"])
    images = pd.read_csv(images_path(str(out)), dtype={"image_id": str, "patient_id": str})
    breasts = pd.read_csv(out, dtype={"breast_id": str, "patient_id": str})
    assert summary["scored_images"] == summary["images"] == len(images)
    joined = evaluation.predictions.merge(images, on="image_id", suffixes=("_eval", "_predict"))
    assert len(joined) == len(evaluation.predictions)  # every val/test image scored
    assert (joined["prob_eval"] - joined["prob_predict"]).abs().max() <= TOLERANCE
    joined = evaluation.breasts.merge(breasts, on="breast_id", suffixes=("_eval", "_predict"))
    assert (joined["prob_eval"] - joined["prob_predict"]).abs().max() <= TOLERANCE
    # The flag is the unrounded probability against the threshold; the CSV keeps 6 decimals, so
    # only breasts farther than that rounding from the threshold can be checked from the file.
    threshold = evaluation.metrics["threshold"]
    clear = (breasts["prob"] - threshold).abs() > 1e-6
    assert (breasts.loc[clear, "flag"] == (breasts.loc[clear, "prob"] >= threshold).astype(int)).all()
    assert summary["flagged_breasts"] == int(breasts["flag"].sum())
    assert {"view", "label", "prob", "flag"} <= set(images.columns)


def test_export_is_slim_loads_weights_only_and_scores_like_the_checkpoint(trained, tmp_path):
    _, _, checkpoint = trained
    info = write_export(checkpoint, tmp_path / "model.weights.pt", threshold=0.3)
    assert info["size"] < checkpoint.stat().st_size / 2  # no optimiser state, no history
    raw = torch.load(info["path"], map_location="cpu", weights_only=True)
    assert raw["threshold"] == 0.3 and raw["image_size"] == 32 and raw["preprocessing"]["in_channels"] == 1
    export = load_export(info["path"])
    images = example_images(export, batch=8)
    want = probabilities(model_from_checkpoint(load_checkpoint(checkpoint)), export, images)
    got = probabilities(model_from_export(export), export, images)
    assert (want - got).abs().max().item() <= TOLERANCE
    program = write_program(export, tmp_path / "model.pt2")
    assert program["max_abs_diff"] <= TOLERANCE
    loaded = torch.export.load(program["path"]).module()
    with torch.inference_mode():
        assert (loaded(images) - want).abs().max().item() <= TOLERANCE


def test_predict_reads_a_production_pointer_and_unlabelled_tables(trained, tmp_path):
    data, _, checkpoint = trained
    export = write_export(checkpoint, tmp_path / "staged" / "x.pt", threshold=0.4)
    prefix = str(tmp_path / "store" / "models" / "m" / "production")
    digest = export["sha256"]
    storage.publish(
        {"model-abc.pt": checkpoint, export_name(digest): export["path"]}, prefix,
        metadata={"checkpoint": "model-abc.pt", "export": export_name(digest), "threshold": 0.4},
    )
    model = resolve_model(prefix, tmp_path / "work")
    assert model.kind == "production" and model.threshold == 0.4 and model.uri.endswith(export_name(digest))

    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(data, unlabelled)
    table = pd.read_csv(unlabelled / "train.csv", dtype=str)
    (unlabelled / "train.csv").unlink()
    table.drop(columns=["cancer"]).to_csv(unlabelled / "test.csv", index=False)
    out = tmp_path / "scores.csv"
    assert main(["predict", "--model", prefix, "--data", str(unlabelled), "--out", str(out),
                 "--device", "cpu", "--workers", "0", "--json"]) == 0
    breasts = pd.read_csv(out)
    assert "label" not in breasts.columns and set(breasts["flag"]) <= {0, 1}
    assert (breasts["threshold"] == 0.4).all()

    Path(prefix, export_name(digest)).write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        resolve_model(prefix, tmp_path / "work2")


def test_predict_refuses_ambiguous_tables_in_one_line(trained, tmp_path, capsys):
    data, _, checkpoint = trained
    both = tmp_path / "both"
    shutil.copytree(data, both)
    shutil.copy(both / "train.csv", both / "test.csv")
    code = main(["predict", "--model", str(checkpoint), "--data", str(both), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "choose one with --table" in err[0]


def test_export_command_writes_export_and_program(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    code = main(["export", "--model", str(checkpoint), "--out", str(tmp_path / "w.pt"),
                 "--program", str(tmp_path / "w.pt2"), "--threshold", "0.25"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["program"]["max_abs_diff"] <= TOLERANCE
    assert load_export(tmp_path / "w.pt")["threshold"] == 0.25


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_never_lands_on_its_input_a_checkpoint_or_production(trained, tmp_path, capsys):
    """--out onto the production checkpoint, onto --model itself, or onto another training
    checkpoint: one line each, nothing replaced. An earlier export is replaced (a rerun)."""
    _, _, checkpoint = trained
    store = tmp_path / "store"
    prefix = store / "models" / "m" / "production"
    storage.publish({"model-abc.pt": checkpoint}, str(prefix), metadata={"checkpoint": "model-abc.pt"})
    other = tmp_path / "run" / "last.pt"
    other.parent.mkdir()
    shutil.copy(checkpoint, other)
    model = tmp_path / "model.pt"
    shutil.copy(checkpoint, model)
    before = {**_bytes(store), **_bytes(tmp_path / "run"), "model": model.read_bytes()}
    for out, says in ((prefix / "model-abc.pt", "is inside a production model folder"),
                      (model, "is an input of this command"),
                      (other, "exists and is not an earlier weights export")):
        assert main(["export", "--model", str(model), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}: {says}" in err
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "w.pt"), "--program", str(other)]) == 2
    assert "--program" in capsys.readouterr().err
    assert {**_bytes(store), **_bytes(tmp_path / "run"), "model": model.read_bytes()} == before
    assert not (tmp_path / "w.pt").exists()
    for _ in range(2):  # a rerun replaces its own earlier export
        assert main(["export", "--model", str(model), "--out", str(tmp_path / "w.pt")]) == 0
    capsys.readouterr()


def test_predict_never_overwrites_its_table_or_a_user_s_file(trained, tmp_path, capsys):
    data, _, checkpoint = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    table = (copy / "train.csv").read_bytes()
    note = tmp_path / "notes.csv"
    note.write_text("a,b\n1,2\n")
    common = ["predict", "--model", str(checkpoint), "--data", str(copy), "--device", "cpu", "--workers", "0", "--json"]
    for out, says in ((copy / "train.csv", "is an input of this command"),
                      (note, "exists and is not an earlier scores CSV"),
                      (tmp_path / "notes_images.csv", None)):
        if says is None:  # the image-level CSV beside --out would replace the note
            note.rename(tmp_path / "notes_images.csv")
            out, says = tmp_path / "notes.csv", "(its image-level CSV)"
        assert main([*common, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err
    assert (copy / "train.csv").read_bytes() == table and (tmp_path / "notes_images.csv").read_text() == "a,b\n1,2\n"
    for _ in range(2):  # a rerun replaces its own earlier scores
        assert main([*common, "--out", str(tmp_path / "scores.csv")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("value", ["2", "nan", "-0.1", "inf"])
def test_a_threshold_that_is_not_a_probability_is_refused(trained, tmp_path, capsys, value):
    data, _, checkpoint = trained
    for command in (["predict", "--data", str(data), "--out", str(tmp_path / "s.csv")],
                    ["export", "--out", str(tmp_path / "w.pt")]):
        assert main([*command, "--model", str(checkpoint), "--threshold", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--threshold {float(value)!r}: must be a probability between 0 and 1" in err
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "w.pt").exists()


def test_a_recorded_threshold_that_is_not_a_probability_is_refused(trained, tmp_path):
    _, _, checkpoint = trained
    prefix = str(tmp_path / "store" / "models" / "m" / "production")
    storage.publish({"model-abc.pt": checkpoint}, prefix, metadata={"checkpoint": "model-abc.pt", "threshold": "NaN"})
    with pytest.raises(ConfigError, match="its recorded threshold 'NaN': must be a probability between 0 and 1"):
        resolve_model(prefix, tmp_path / "work")


class _Payload:
    """Unpickling this runs code: it would create the file named."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_code_is_refused_saying_why_and_the_code_never_runs(tmp_path, capsys):
    from mammo.engine.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "mammo-checkpoint/1", "model": _Payload(marker)}, hostile)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(hostile)
    message = str(err.value)
    assert message.startswith(f"{hostile}: not a readable checkpoint (it holds Python objects a weights-only load refuses")
    assert "it may carry code, so it is not loaded" in message and "weights_only` set to `False" not in message
    assert main(["export", "--model", str(hostile), "--out", str(tmp_path / "w.pt")]) == 2
    assert "it may carry code" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("column", ["prob", "breast_id", "split"])
def test_an_input_column_predict_writes_is_refused(trained, tmp_path, capsys, column):
    """Its two CSVs join on breast_id and carry prob: an input bringing its own would leak in."""
    data, _, checkpoint = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    table = pd.read_csv(copy / "train.csv", dtype=str)
    table[column] = "x"
    table.to_csv(copy / "train.csv", index=False)
    assert main(["predict", "--model", str(checkpoint), "--data", str(copy), "--out", str(tmp_path / "s.csv"),
                 "--workers", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"column '{column}' is one predict writes" in err
    assert not (tmp_path / "s.csv").exists()


def test_predict_scores_a_dicom_folder_and_gives_the_worklist_its_identifiers(trained, tmp_path):
    """A hospital export (DICOM files, no table, no PNGs): converted at the model's input size
    in a scratch folder of the run, scored, and written with the archive's patient and image
    ids, study and SOP instance UIDs; nothing is left beside the DICOMs or in the work folder."""
    import pydicom

    from mammo.dicom.synth import write_synthetic_dicoms

    _, _, checkpoint = trained
    export = tmp_path / "export"
    files = write_synthetic_dicoms(export, count=6, size=(96, 64), compression="explicit")
    (export / "train.csv").unlink()  # an archive export has no labels table
    for number, path in enumerate(files):  # one study per patient, as a screening export has
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.AccessionNumber = f"1.2.826.0.1.3680043.10.9.{ds.PatientID}", f"ACC{number // 2}"
        ds.save_as(path)
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    headers = [pydicom.dcmread(f) for f in files]
    out, work = tmp_path / "scores" / "breasts.csv", tmp_path / "work"
    summary = run_predict(model=str(checkpoint), data=str(export), out=str(out), device="cpu", workers=0,
                          workdir=str(work))
    assert summary["table"] == "DICOM files" and summary["scored_images"] == 6
    assert summary["dicom"] == {"converted": 6, "skipped": {}, "unreadable": 0}
    images = pd.read_csv(images_path(str(out)), dtype=str)
    assert set(images["patient_id"]) == {str(h.PatientID) for h in headers}
    assert set(images["sop_instance_uid"]) == {str(h.SOPInstanceUID) for h in headers}
    assert set(images["study_instance_uid"]) == {str(h.StudyInstanceUID) for h in headers}
    assert set(images["accession_number"]) == {str(h.AccessionNumber) for h in headers}
    breasts = pd.read_csv(out, dtype=str)
    assert len(breasts) == summary["breasts"] == len({(str(h.PatientID), str(h.ImageLaterality)) for h in headers})
    assert set(breasts["patient_id"]) == {str(h.PatientID) for h in headers}
    studies = {str(h.PatientID): str(h.StudyInstanceUID) for h in headers}
    assert [studies[p] for p in breasts["patient_id"]] == list(breasts["study_instance_uid"])
    assert sorted(p.relative_to(export) for p in export.rglob("*")) == before
    assert list(work.glob("mammo-predict-dicom-*")) == []
