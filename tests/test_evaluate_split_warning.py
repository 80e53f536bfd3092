"""The evaluator says so when a checkpoint was trained on another split than the one it scores
(its recorded split fingerprint, the sha256 of split.csv, differs): one log line and the same
line in metrics.json's ``warnings``; none for a checkpoint trained on this very split."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from mammo.config import EvalConfig
from mammo.config_files import load_config
from mammo.evaluate import run_evaluation
from mammo.split import run_split
from model_support import fake_checkpoint

EVAL = {"data.batch_size": 32, "data.workers": 0, "device": "cpu", "stats.resamples": 20, "stats.subgroup_resamples": 0}


def _evaluate(tiny_dataset: Path, split: Path, checkpoint: Path, out: Path, **kwargs):
    config = load_config(EvalConfig, overrides={
        **EVAL, "data.root": str(tiny_dataset), "split": str(split), "out": str(out), "checkpoints": [str(checkpoint)],
    })
    return run_evaluation(config, **kwargs).metrics


def _split_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "was trained on another split" in line]


def test_a_checkpoint_of_another_split_is_warned_about(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = tmp_path / "split"
    run_split(data=str(tiny_dataset), out=str(split), val_frac=0.3, test_frac=0.3, seed=1)
    this = hashlib.sha256((split / "split.csv").read_bytes()).hexdigest()
    other = fake_checkpoint(tmp_path / "other" / "model.pt")  # split_fingerprint "f" * 64

    with caplog.at_level(logging.WARNING, logger="mammo.evaluate"):
        metrics = _evaluate(tiny_dataset, split, other, tmp_path / "eval1")
    expected = (f"model.pt was trained on another split (split.csv sha256 {'f' * 12}, this one {this[:12]}), "
                "which cannot be checked: its test figures may include patients it trained on")
    assert _split_lines(metrics["warnings"]) == [expected]
    assert _split_lines([r.getMessage() for r in caplog.records]) == [expected]
    html = (tmp_path / "eval1" / "report.html").read_text()
    assert "model.pt was trained on another split" in html

    # The other split is known and kept none of this split's test patients out of training.
    caplog.clear()
    metrics = _evaluate(tiny_dataset, split, other, tmp_path / "eval2", trained_patients=lambda fingerprint: {"nobody"})
    frame = pd.read_csv(split / "split.csv", dtype=str)
    n_test = frame.loc[frame["split"] == "test", "patient_id"].nunique()
    assert _split_lines(metrics["warnings"]) == [
        f"model.pt was trained on another split (split.csv sha256 {'f' * 12}, this one {this[:12]}); "
        f"none of this split's {n_test} test patients was in its train or val"
    ]

    # Trained on this very split: no such line.
    caplog.clear()
    payload = torch.load(other, weights_only=False)
    payload["split_fingerprint"] = this
    same = tmp_path / "same" / "model.pt"
    same.parent.mkdir()
    torch.save(payload, same)
    with caplog.at_level(logging.WARNING, logger="mammo.evaluate"):
        metrics = _evaluate(tiny_dataset, split, same, tmp_path / "eval3")
    assert _split_lines(metrics["warnings"]) == []
    assert _split_lines([r.getMessage() for r in caplog.records]) == []


def test_a_production_model_of_another_split_is_warned_about_too(tiny_dataset: Path, tmp_path: Path) -> None:
    split = tmp_path / "split"
    run_split(data=str(tiny_dataset), out=str(split), val_frac=0.3, test_frac=0.3, seed=1)
    this = hashlib.sha256((split / "split.csv").read_bytes()).hexdigest()
    candidate = fake_checkpoint(tmp_path / "candidate" / "model.pt", seed=1)
    payload = torch.load(candidate, weights_only=False)
    payload["split_fingerprint"] = this
    torch.save(payload, candidate)
    production = fake_checkpoint(tmp_path / "production" / "model.pt", seed=2)  # split_fingerprint "f" * 64
    metrics = _evaluate(tiny_dataset, split, candidate, tmp_path / "eval", reference=production)
    assert _split_lines(metrics["warnings"]) == [
        f"production was trained on another split (split.csv sha256 {'f' * 12}, this one {this[:12]}), "
        "which cannot be checked: its test figures may include patients it trained on"
    ]


def test_the_report_heads_warnings_without_a_small_sample_as_warnings(tiny_dataset: Path, tmp_path: Path) -> None:
    import json

    from mammo.report import PLOT_NAMES, write_report

    split = tmp_path / "split"
    run_split(data=str(tiny_dataset), out=str(split), val_frac=0.3, test_frac=0.3, seed=1)
    _evaluate(tiny_dataset, split, fake_checkpoint(tmp_path / "model.pt"), tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    plots = {name: tmp_path / "eval" / f"{name}.png" for name in PLOT_NAMES}
    summary = json.loads((split / "split.json").read_text())
    assert any("cancer breast(s) (fewer than" in w for w in metrics["warnings"])  # the tiny split is small
    write_report(tmp_path / "small.html", metrics, summary, plots)
    assert "<b>Small sample.</b>" in (tmp_path / "small.html").read_text()
    metrics["warnings"] = _split_lines(metrics["warnings"])
    write_report(tmp_path / "split.html", metrics, summary, plots)
    html = (tmp_path / "split.html").read_text()
    assert "<b>Warnings.</b>" in html and "Small sample" not in html and "was trained on another split" in html
