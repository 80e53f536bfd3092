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
    flags = ["--data", "--split", "--out", "--image-size", "--backbone", "--weights", "--batch-size",
             "--workers", "--device", "--seed", "--config", "--set"]
    flags.append("--checkpoint" if command == "evaluate" else "--epochs")
    for flag in flags:
        assert flag in text, flag


def test_missing_required_setting_is_one_line(tmp_path):
    result = mammo("train", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == "mammo: error: --data (data.root) is required"


def test_bad_table_is_one_line_naming_the_row(tmp_path):
    (tmp_path / "train.csv").write_text("patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,X,0\n")
    result = mammo("split", "--data", str(tmp_path), "--out", str(tmp_path / "split"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"mammo: error: {tmp_path / 'train.csv'}: row 3: laterality must be L or R, got 'X'"
    )
    assert not (tmp_path / "split").exists()


def test_bad_config_value_is_one_line(tmp_path):
    result = mammo("train", "--data", str(tmp_path), "--split", str(tmp_path), "--out", str(tmp_path / "r"),
                   "--set", "loss.name=hinge")
    assert result.returncode == 2
    assert result.stderr.startswith("mammo: error: config: loss.name: Input should be")
    assert result.stderr.count("\n") == 1


def test_missing_checkpoint_for_evaluate_is_one_line(tmp_path):
    from mammo.data.synth import write_synthetic_dataset
    from mammo.split import run_split

    write_synthetic_dataset(tmp_path / "d", patients=6, image_size=32, prevalence=0.5, seed=0)
    run_split(data=str(tmp_path / "d"), out=str(tmp_path / "s"), val_frac=0.3, test_frac=0.3, seed=1)
    result = mammo("evaluate", "--data", str(tmp_path / "d"), "--split", str(tmp_path / "s"),
                   "--out", str(tmp_path / "e"), "--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"checkpoint not found: {tmp_path / 'nope.pt'}")
