"""The `mammo` command line: help, one-line errors with non-zero exits, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mammo.cli import main


def mammo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mammo.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_every_command():
    result = mammo("--help")
    assert result.returncode == 0
    for command in ("data", "split", "train", "unfreeze", "evaluate", "bench", "run", "component", "pipeline"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "unfreeze", "evaluate"])
def test_stage_commands_share_the_common_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    flags = ["--data", "--split", "--out", "--image-size", "--batch-size",
             "--workers", "--device", "--seed", "--config", "--set", "--json"]
    flags += ["--checkpoint"] if command == "evaluate" else ["--epochs", "--backbone", "--weights"]
    for flag in flags:
        assert flag in text, flag
    if command == "evaluate":  # the checkpoint decides the model, so the flags that would not count are absent
        assert "--backbone" not in text and "--weights" not in text


@pytest.mark.parametrize("command", ["train", "unfreeze", "evaluate", "split", "data synth", "bench data"])
def test_every_option_has_help_and_values_show_their_default(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    options = capsys.readouterr().out.split("options:")[1]
    entries = [e for e in options.split("\n  -")[1:] if not e.startswith(("h, --help", "-help"))]
    for entry in entries:
        name, *rest = entry.split(None, 1)
        assert rest and rest[0].strip(), f"{command} -{name}: no help"
    for flag in ("--batch-size", "--workers", "--seed", "--epochs", "--patients", "--val-frac", "--image-size"):
        for entry in entries:
            if entry.startswith(f"-{flag} "):
                assert "default" in " ".join(entry.split()), f"{command} {flag}: default not shown"


def test_help_shows_the_stage_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["unfreeze", "--help"])
    assert "(default: 100)" in " ".join(capsys.readouterr().out.split())  # unfreeze epochs, not train's 50


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["split", "--data", "s3://bucket/ds", "--out", "x"], "--data"),
        (["train", "--data", "d", "--split", "s3://bucket/splits/1", "--out", "x"], "--split"),
        (["evaluate", "--data", "d", "--split", "s", "--out", "s3://b/o", "--checkpoint", "c.pt"], "--out"),
        (["evaluate", "--data", "d", "--split", "s", "--out", "o", "--checkpoint", "s3://b/c.pt"], "--checkpoint"),
    ],
)
def test_stage_commands_refuse_storage_uris_in_one_line(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mammo: error: {flag} s3://") and "mammo component" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_missing_required_setting_is_one_line(tmp_path):
    result = mammo("train", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == "mammo: error: --data (data.root) is required"


# In process from here: the real process's exit code and stderr are checked above; these check
# the line each mistake gives (``main`` is what the console script calls).


def test_bad_table_is_one_line_naming_the_row(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,X,0\n")
    assert main(["split", "--data", str(tmp_path), "--out", str(tmp_path / "split")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == f"mammo: error: {tmp_path / 'train.csv'}: row 3: laterality must be L or R, got 'X'"
    assert not (tmp_path / "split").exists()


def test_bad_config_value_is_one_line(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--split", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--set", "loss.name=hinge"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("mammo: error: config: loss.name: Input should be") and err.count("\n") == 1


def test_missing_checkpoint_for_evaluate_is_one_line(tmp_path, capsys):
    from mammo.data.synth import write_synthetic_dataset
    from mammo.split import run_split

    write_synthetic_dataset(tmp_path / "d", patients=6, image_size=32, prevalence=0.5, seed=0)
    run_split(data=str(tmp_path / "d"), out=str(tmp_path / "s"), val_frac=0.3, test_frac=0.3, seed=1)
    code = main(["evaluate", "--data", str(tmp_path / "d"), "--split", str(tmp_path / "s"),
                 "--out", str(tmp_path / "e"), "--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(f"checkpoint not found: {tmp_path / 'nope.pt'}")


def test_evaluate_refuses_model_settings_the_checkpoint_decides(tmp_path, capsys):
    code = main(["evaluate", "--data", str(tmp_path), "--split", str(tmp_path), "--out", str(tmp_path / "e"),
                 "--checkpoint", str(tmp_path / "c.pt"), "--set", "model.backbone=resnet18"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mammo: error: config: ") and "model: evaluation takes backbone, weights and channels from each checkpoint" in err
    assert len(err.splitlines()) == 1
