"""``mammo component ...``: flags mirror the entrypoints, the result is printed as JSON, user
mistakes are one line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mammo.cli import main as mammo_main
from mammo_components.cli import main

from component_support import PARAMS


def test_split_builder_from_the_command_line(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS))
    store = tmp_path / "store"
    code = mammo_main([
        "component", "split-builder", "--dataset", str(synth_data), "--store", str(store),
        "--params-json", str(params), "--param", "seed=7", "--workdir", str(tmp_path / "work"),
    ])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split_uri"] == str(store / "splits" / result["dataset_fingerprint"])
    summary = json.loads((store / "splits" / result["dataset_fingerprint"] / "split.json").read_text())
    assert (summary["seed"], summary["fractions"]["val"]) == (7, 0.25)  # --param over --params-json


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "bogus=1"], "params: bogus: Extra inputs are not permitted"),
        (["--param", "image_size=big"], "params: image_size: image size 'big': expected S or HxW"),
        (["--param", "novalue"], "--param 'novalue': expected key=value"),
        (["--params-json", "/nonexistent/params.json"], "--params-json /nonexistent/params.json: file not found"),
        (["--dataset", "gs://bucket/data"], "unsupported URI scheme 'gs' in gs://bucket/data"),
        (["--dataset", "s3://mammo/datasets/x"], "MINIO_ENDPOINT is not set"),
        (["--run-id", "../etc"], "run id '../etc': use 1-128 letters"),
    ],
)
def test_user_mistakes_are_one_line(
    args: list[str], message: str, synth_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    base = ["--dataset", str(synth_data), "--store", str(tmp_path / "store"), "--workdir", str(tmp_path / "w")]
    code = main(["split-builder", *base, *args])  # argparse: the last --dataset wins
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("mammo: error: ") and err.count("\n") == 1
    assert message in err


def test_missing_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unfreeze-trainer", "--dataset", "d", "--split", "s", "--out", "r"]) == 2
    assert "the following arguments are required: --init" in capsys.readouterr().err


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluator", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--dataset URI", "--split URI", "--checkpoint URI", "--out URI", "--param KEY=VALUE", "--params-json FILE", "--workdir DIR", "--run-id ID"):
        assert flag in text


def test_python_m_runs_a_component_without_torch(tmp_path: Path) -> None:
    """``python -m mammo_components.<name>`` is the same CLI; the split builder (and the CLI
    itself) never import torch."""
    probe = (
        "import runpy, sys; sys.argv = ['x', '--dataset', sys.argv[1], '--store', sys.argv[2]];\n"
        "try: runpy.run_module('mammo_components.split_builder', run_name='__main__')\n"
        "except SystemExit as exc: print('torch' in sys.modules, exc.code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "missing"), str(tmp_path / "store")],
        capture_output=True, text=True, check=True,
    )
    assert done.stdout.split() == ["False", "2"]
    assert done.stderr.strip().splitlines()[-1] == f"mammo: error: artifact not found: {tmp_path / 'missing'}/train.csv"
