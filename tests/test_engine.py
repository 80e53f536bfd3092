"""End-to-end training on tiny synthetic images: it learns, checkpoints, resumes and unfreezes.

The network is ``tinynet`` (the backbone table's test-scale network). The learning claims use
``learnable_dataset``, whose lesions are bright enough that every seed, thread count and CPU
instruction set separates the classes with a wide margin (measured: see the fixture); the
mechanics (resume, stopping, unfreezing) compare runs made in the same test, never a figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import torch

from mammo.backbones import family_of
from mammo.config import EvalConfig, TrainConfig, UnfreezeConfig
from mammo.config_files import load_config
from mammo.engine.baseline import train_baseline
from mammo.engine.checkpoint import BEST_CHECKPOINTS, load_checkpoint
from mammo.engine.unfreeze import UnfreezeTrainer, train_unfreeze
from mammo.errors import CheckpointError, ConfigError
from mammo.evaluate import evaluate, run_evaluation
from mammo.split import run_split

from data_support import LEARNABLE

COMMON = {
    "data.batch_size": 32,
    "data.workers": 0,
    "model.backbone": "tinynet",
    "device": "cpu",
}
#: tinynet with BatchNorm trains well at ten times ResNet's default rate.
LEARNING_RATE = 0.01
#: Evaluation takes the model from each checkpoint.
EVAL_COMMON = {key: value for key, value in COMMON.items() if not key.startswith("model.")}


class Killed(Exception):
    """Stands in for a pod being killed after an epoch."""


class Data(NamedTuple):
    root: Path
    split: Path
    size: int


def make_dataset(root: Path, patients: int, size: int) -> Data:
    from mammo.data.synth import write_synthetic_dataset

    write_synthetic_dataset(root / "data", patients=patients, image_size=size, prevalence=0.3, seed=3)
    run_split(data=str(root / "data"), out=str(root / "split"), val_frac=0.2, test_frac=0.25, seed=42)
    return Data(root / "data", root / "split", size)


@pytest.fixture(scope="module")
def learnable(learnable_dataset: tuple[Path, Path]) -> Data:
    """The session's strong-signal dataset (100 patients at 48 px, lesions at full contrast)."""
    return Data(*learnable_dataset, LEARNABLE["image_size"])


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Data:
    """Just enough for the mechanics (resume, stopping, unfreezing): 40 patients at 32 px."""
    return make_dataset(tmp_path_factory.mktemp("small"), 40, 32)


def baseline_config(data: Data, out: Path, **extra) -> TrainConfig:
    overrides = {
        **COMMON,
        "data.image_size": data.size,
        "data.root": str(data.root),
        "split": str(data.split),
        "out": str(out),
        "epochs": 8,
        "warmup_epochs": 1,
        "augment.enabled": False,  # augmentation has its own tests; here it would only slow learning
        "optimizer.lr": LEARNING_RATE,
        "early_stopping.start_epoch": 8,
        **extra,
    }
    return load_config(TrainConfig, overrides=overrides)


@pytest.fixture(scope="module")
def baseline_run(learnable, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("baseline")
    summary = train_baseline(baseline_config(learnable, out))
    return out, summary


@pytest.fixture(scope="module")
def small_init(small, tmp_path_factory) -> Path:
    """A one-epoch baseline on the small dataset, to start unfreezing from."""
    out = tmp_path_factory.mktemp("small-baseline")
    train_baseline(baseline_config(small, out, epochs=1, warmup_epochs=0))
    return out / "last.pt"


def test_baseline_learns_and_writes_checkpoints(baseline_run):
    out, summary = baseline_run
    assert summary["epochs_run"] == 8
    names = set(summary["checkpoints"])
    assert set(BEST_CHECKPOINTS) | {"last.pt"} <= names
    topk = sorted(n for n in names if n.startswith("topk_"))
    assert 1 <= len(topk) <= 3
    history = json.loads((out / "history.json").read_text())
    assert [h["phase"] for h in history] == ["warmup"] + ["full"] * 7
    assert history[0]["train_images"] < history[1]["train_images"]
    # Mechanics, not learning (that is test_distributed's learning test, with a measured margin):
    # every epoch's val AUC is defined and best_auc.pt is the epoch with the highest.
    aucs = [h["val"]["image"]["auc"] for h in history]
    assert all(0.0 <= a <= 1.0 for a in aucs), history
    ckpt = load_checkpoint(out / "best_auc.pt")
    assert ckpt["metrics"]["image"]["auc"] == pytest.approx(max(aucs))
    for key in ("model", "optimizer", "schedule", "scaler", "config", "metrics", "split_fingerprint", "versions"):
        assert key in ckpt
    epochs = {name: load_checkpoint(out / name)["epoch"] for name in names}
    inodes = {name: (out / name).stat().st_ino for name in names}
    for epoch in set(epochs.values()):
        same_epoch = {inodes[name] for name, e in epochs.items() if e == epoch}
        assert len(same_epoch) == 1, f"epoch {epoch} is stored more than once"
    assert ckpt["versions"]["torch"] == torch.__version__
    assert (out / "config.yaml").read_text().startswith("split:")


def test_resume_after_kill_reproduces_the_run(small, tmp_path):
    straight = tmp_path / "straight"
    cut = tmp_path / "cut"
    extra = {"epochs": 3, "warmup_epochs": 1, "augment.enabled": True}
    train_baseline(baseline_config(small, straight, **extra))

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_baseline(baseline_config(small, cut, **extra), on_epoch=kill_after_two)
    assert load_checkpoint(cut / "last.pt")["epoch"] == 2
    train_baseline(baseline_config(small, cut, **extra), resume=True)

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"][-1]["val"] == b["history"][-1]["val"]
    # resuming a finished run is a no-op that reports the same summary
    again = train_baseline(baseline_config(small, cut, **extra), resume=True)
    assert again["epochs_run"] == 3


def test_resume_refuses_another_split(small, small_init, tmp_path):
    other = tmp_path / "other-split"
    run_split(data=str(small.root), out=str(other), val_frac=0.2, test_frac=0.25, seed=7)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "last.pt").write_bytes(small_init.read_bytes())
    with pytest.raises(CheckpointError, match="different split"):
        train_baseline(baseline_config(small._replace(split=other), copy, epochs=6), resume=True)


def test_early_stopping_is_honoured(small, tmp_path):
    config = baseline_config(
        small, tmp_path,
        epochs=8, warmup_epochs=0,
        **{"early_stopping.start_epoch": 1, "early_stopping.patience": 1, "early_stopping.min_delta": 1.0},
    )
    summary = train_baseline(config)
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == 2


def unfreeze_config(data: Data, init: Path, out: Path, **extra) -> UnfreezeConfig:
    overrides = {
        **COMMON,
        "data.image_size": data.size,
        "data.root": str(data.root),
        "split": str(data.split),
        "out": str(out),
        "init": str(init),
        "epochs": 4,
        "unfreeze.start_epoch": 1,
        "unfreeze.cooldown": 1,
        "unfreeze.drop": 0.0,
        "early_stopping.start_epoch": 4,
        **extra,
    }
    return load_config(UnfreezeConfig, overrides=overrides)


def test_unfreeze_unfreezes_blocks_and_keeps_batchnorm_frozen(small, small_init, tmp_path):
    init = small_init
    start = load_checkpoint(init)["model"]
    trainer = UnfreezeTrainer(unfreeze_config(small, init, tmp_path / "u", epochs=3))  # 3 of tinynet's 4 blocks at most
    summary = trainer.run()
    assert summary["epochs_run"] == 3
    state = load_checkpoint(tmp_path / "u" / "last.pt")
    assert state["schedule"]["unfrozen"] >= 2
    groups = [g["name"] for g in trainer.optimizer.param_groups]
    assert groups[:3] == ["head", "layer3", "layer2"]  # tinynet's blocks, deepest first
    # each epoch's history record names the blocks unfrozen at its end (the report marks them)
    history = json.loads((tmp_path / "u" / "history.json").read_text())
    assert [b for record in history for b in record["unfrozen"]] == groups[1:]
    # head lr follows the schedule of the latest unfrozen step
    trained = state["model"]
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])
    assert not torch.equal(trained["layer3.0.weight"], start["layer3.0.weight"])
    # blocks never unfrozen and every BatchNorm running statistic are exactly as they started
    frozen = tuple(f"{m}." for b in family_of("tinynet").blocks if b.name not in groups for m in b.modules)
    never = [name for name in trained if name.startswith(frozen)]
    assert never and all(torch.equal(trained[name], start[name]) for name in never)
    for name, tensor in trained.items():
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(tensor, start[name]), name


def test_unfreeze_resume_restores_param_groups(small, small_init, tmp_path):
    init = small_init

    def kill_after_three(record):
        if record["epoch"] == 3:
            raise Killed

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_unfreeze(unfreeze_config(small, init, straight))
    with pytest.raises(Killed):
        train_unfreeze(unfreeze_config(small, init, cut), on_epoch=kill_after_three)
    train_unfreeze(unfreeze_config(small, init, cut), resume=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(cut / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["schedule"]["unfrozen"] == b["schedule"]["unfrozen"]


def test_unfreeze_needs_an_init_checkpoint(small, tmp_path):
    config = unfreeze_config(small, tmp_path / "missing.pt", tmp_path / "u")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        train_unfreeze(config)
    config.init = None
    with pytest.raises(ConfigError, match="--init"):
        train_unfreeze(config)


def test_evaluate_ranks_candidates_and_writes_report(learnable, baseline_run, tmp_path):
    out = baseline_run[0]
    config = load_config(
        EvalConfig,
        overrides={
            **EVAL_COMMON,
            "data.root": str(learnable.root),
            "split": str(learnable.split),
            "out": str(tmp_path / "eval"),
            "checkpoints": [str(out / "best_auc.pt"), str(out / "best_loss.pt"), str(out / "last.pt")],
        },
    )
    result = evaluate(config)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["best"] == result["best"]
    assert [c["rank"] for c in metrics["candidates"]] == [1, 2, 3]
    aucs = [c["val"]["breast"]["auc"] for c in metrics["candidates"]]
    assert aucs == sorted(aucs, reverse=True)
    for split in ("val", "test"):
        for level in ("image", "breast"):
            m = metrics[split][level]
            for key in ("auc", "pr_auc", "pf1", "best_f1", "best_threshold", "sensitivity",
                        "specificity", "precision", "n", "prevalence"):
                assert key in m
            assert m["threshold"] == pytest.approx(metrics["threshold"])
    assert 0.0 <= metrics["test"]["breast"]["auc"] <= 1.0  # defined; learning is test_distributed's
    for name in ("predictions_image.csv", "predictions_breast.csv", "roc.png", "pr.png",
                 "calibration.png", "report.html", "config.yaml"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in html and metrics["best"] in html
    assert [row for row in ("train", "val", "test", "all") if f"<tr><td>{row}</td>" in html] == ["train", "val", "test", "all"]


def test_run_evaluation_returns_what_it_writes(learnable, baseline_run, tmp_path):
    out = tmp_path / "eval"
    config = load_config(
        EvalConfig,
        overrides={**EVAL_COMMON, "data.root": str(learnable.root), "split": str(learnable.split), "out": str(out),
                   "checkpoints": [str(baseline_run[0] / "best_auc.pt")]},
    )
    evaluation = run_evaluation(config)
    assert evaluation.out == out
    assert evaluation.metrics == json.loads((out / "metrics.json").read_text())
    for frame, name in ((evaluation.predictions, "predictions_image.csv"), (evaluation.breasts, "predictions_breast.csv")):
        written = pd.read_csv(out / name, dtype={"patient_id": str, "image_id": str, "laterality": str, "breast_id": str})
        assert list(frame.columns) == list(written.columns) and len(frame) == len(written)
        assert frame["prob"].to_numpy() == pytest.approx(written["prob"].to_numpy(), abs=1e-6)
    test = evaluation.best_breasts("test")
    assert set(test["split"]) == {"test"} and set(test["checkpoint"]) == {evaluation.best}
    summary = evaluation.summary()
    assert summary["best"] == evaluation.best and summary["test"]["breast"]["auc"] == evaluation.metrics["test"]["breast"]["auc"]


def test_the_demo_preset_unfreezes_blocks_within_its_unfreeze_epochs(small, small_init, tmp_path):
    """``make run`` shows gradual unfreezing happen: the demo preset's schedule (its
    unfreeze_set, for its unfreeze_epochs) unfreezes blocks whatever val does."""
    from mammo.config_files import parse_value, split_pair
    from mammo_pipelines.parameters import load_preset

    params = load_preset("demo")["params"]
    schedule = dict(split_pair(pair, "unfreeze_set", "key=value") for pair in params["unfreeze_set"])
    overrides = {key: parse_value(value) for key, value in schedule.items()}
    assert overrides["unfreeze.drop"] == 0
    trainer = UnfreezeTrainer(unfreeze_config(small, small_init, tmp_path / "u", epochs=params["unfreeze_epochs"],
                                              **overrides))
    trainer.run()
    history = load_checkpoint(tmp_path / "u" / "last.pt")["history"]
    unfrozen = [block for epoch in history for block in epoch.get("unfrozen", [])]
    assert len(unfrozen) == 2 and len(set(unfrozen)) == 2
