"""Training on awkward sizes and through faults, with real files and real processes.

- Any training-set size trains, in both phases (warm-up subset, then full data): sizes around
  multiples of the batch size. The issue's crash was a last training batch of one image reaching
  BatchNorm; training drops a last partial batch (``engine.distributed.EpochSampler``), so every
  step sees a whole batch and DDP ranks stay in step; a set smaller than one batch is one batch,
  and a set of one image is refused in one line (BatchNorm needs two).
- A loss that explodes (finite but above ``loss.ceiling``) or becomes NaN/inf stops the run with
  one line naming the epoch and step, and keeps the last good checkpoint (nothing of the diverged
  epoch is saved). The divergence is made exactly, not by a learning rate whose effect depends on
  the machine's float kernels: a head whose weights are 0 and whose bias is huge gives every image
  the same logit, so every cancer-free image's loss is that number, bit for bit, on any CPU.
- A full disk while writing a checkpoint is one line naming the file and the free space.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from mammo.cli import main as mammo_main
from mammo.data.synth import write_synthetic_dataset
from mammo.engine.checkpoint import load_checkpoint

BATCH = 4
TRAIN_ARGS = ["--image-size", "32", "--backbone", "tinynet", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic dataset and its split (written once for the module)."""
    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    write_synthetic_dataset(data, patients=40, image_size=32, prevalence=0.3, seed=3)
    assert mammo_main(["split", "--data", str(data), "--out", str(root / "split")]) == 0
    return data, root / "split"


def _split_with(base: Path, out: Path, train: int, warmup: int) -> Path:
    """A copy of the split whose training part holds exactly ``train`` images, ``warmup`` of
    them in the warm-up subset (images left out of split.csv are simply not used)."""
    frame = pd.read_csv(base / "split.csv", dtype={"patient_id": str, "image_id": str})
    summary = json.loads((base / "split.json").read_text())
    rows = frame[frame["split"] == "train"].copy()
    rows["breast"] = rows["patient_id"] + "_" + rows["laterality"]
    # Positive and negative breasts alternating: every subset holds both classes.
    by_class = [list(dict.fromkeys(rows[rows["cancer"] == c].sort_values("breast")["breast"])) for c in (1, 0)]
    breasts = [b for pair in zip(*by_class) for b in pair]
    images = {b: list(rows.index[rows["breast"] == b]) for b in breasts}
    chosen = [images[b][0] for b in breasts[:warmup]]  # warm-up: one image of each breast
    warm_breasts = sorted(set(rows.loc[chosen, "breast"]))
    rest = [i for b in breasts if b not in warm_breasts for i in images[b]][: train - warmup]
    assert len(chosen) == warmup and len(rest) == train - warmup, "the base split is too small"
    kept = frame[frame["split"] != "train"]
    out.mkdir(parents=True)
    pd.concat([kept, frame.loc[chosen + rest]]).to_csv(out / "split.csv", index=False)
    summary["warmup"]["breasts"] = warm_breasts
    (out / "split.json").write_text(json.dumps(summary))
    return out


#: (training images, warm-up images): around 1x and 2x the batch, and smaller than one batch.
SIZES = [(2, 2), (BATCH - 1, 2), (BATCH, BATCH - 1), (BATCH + 1, BATCH + 1), (2 * BATCH - 1, BATCH + 1),
         (2 * BATCH + 1, 3)]


@pytest.mark.parametrize(("train", "warmup"), SIZES, ids=[f"train{t}-warmup{w}" for t, w in SIZES])
def test_any_size_trains_in_both_phases(dataset: tuple[Path, Path], tmp_path: Path, train: int, warmup: int) -> None:
    data, base = dataset
    split = _split_with(base, tmp_path / "split", train, warmup)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--epochs", "2", "--batch-size", str(BATCH), "--set", "warmup_epochs=1", "--json"]
    assert mammo_main(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["phase"] for h in history] == ["warmup", "full"]
    for record, size in zip(history, (warmup, train), strict=True):
        whole = size - size % BATCH if size >= BATCH else size  # a last partial batch is dropped
        assert record["train_images"] == whole, record


def test_a_warmup_subset_of_one_image_is_refused_in_one_line(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BatchNorm needs two images in a training step: a phase with one is a clear error."""
    data, base = dataset
    split = _split_with(base, tmp_path / "split", 3, 1)
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(tmp_path / "run"), *TRAIN_ARGS,
            "--epochs", "2", "--batch-size", str(BATCH), "--set", "warmup_epochs=1"]
    assert mammo_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training needs at least 2 images per epoch" in err


def _explode(state: dict[str, torch.Tensor], bias: float) -> dict[str, torch.Tensor]:
    """``state`` with tinynet's head giving every image the logit ``bias`` exactly."""
    return {**state, "fc.weight": torch.zeros_like(state["fc.weight"]), "fc.bias": torch.full_like(state["fc.bias"], bias)}


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_an_exploding_loss_stops_the_first_epoch_naming_the_step_and_writes_no_checkpoint(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finite but absurd loss (1e6 for every cancer-free image, as a learning rate of 1e8 gives
    on some CPUs and not others) is divergence; before, such a run trained on and exited 0."""
    from mammo.config import ModelConfig
    from mammo.models import build_model

    data, split = dataset
    weights = tmp_path / "exploded.pt"
    torch.save(_explode(build_model(ModelConfig(backbone="tinynet")).state_dict(), 1e6), weights)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--epochs", "3", "--batch-size", str(BATCH), "--set", "warmup_epochs=0", "--weights", str(weights)]
    assert mammo_main(args) == 2
    line = _last_line(capsys)
    assert line.startswith("mammo: error: baseline epoch 1 full, step "), line
    assert ", above loss.ceiling 1000 (training diverged" in line
    assert line.endswith(f"no checkpoint was written to {out}")
    assert not (out / "last.pt").exists() and not (out / "history.json").exists()


def test_a_diverging_loss_stops_naming_the_epoch_and_step_and_keeps_the_last_good_checkpoint(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Epoch 1 trains; its checkpoint's head then explodes, and the resumed epoch 2 stops at the
    first step that holds a cancer-free image, with epoch 1's checkpoint and history untouched."""
    data, split = dataset
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--batch-size", str(BATCH), "--set", "warmup_epochs=0"]
    assert mammo_main([*args, "--epochs", "1"]) == 0
    capsys.readouterr()
    payload = torch.load(out / "last.pt", weights_only=True)
    payload["model"] = _explode(payload["model"], 1e6)
    torch.save(payload, out / "last.pt")
    good = (out / "last.pt").read_bytes()
    assert mammo_main([*args, "--epochs", "3", "--resume"]) == 2
    line = _last_line(capsys)
    assert line.startswith("mammo: error: baseline epoch 2 full, step "), line
    assert ", above loss.ceiling 1000 (training diverged" in line
    assert line.endswith(f"kept the last good checkpoint {out / 'last.pt'} (epoch 1)")
    assert (out / "last.pt").read_bytes() == good
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]


@pytest.mark.parametrize("logit", [math.inf, math.nan], ids=["inf", "nan"])
def test_a_non_finite_loss_stops_the_epoch_at_its_step(logit: float) -> None:
    """NaN and inf are divergence whatever the ceiling: the step that produced one is named."""
    from torch.utils.data import DataLoader

    from mammo.data.augment import BatchTransform
    from mammo.engine.loop import train_one_epoch
    from mammo.engine.runtime import Precision
    from mammo.errors import TrainingError
    from mammo.losses import BCEWithLogits

    class ThirdStepGives(torch.nn.Module):
        """One trainable logit for every image; at the third call, ``logit`` instead."""

        def __init__(self) -> None:
            super().__init__()
            self.logit, self.calls = torch.nn.Parameter(torch.zeros(())), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.logit + (logit if self.calls == 3 else 0.0)
            return out.expand(x.shape[0], 1)

    batches = [{"images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "labels": torch.zeros(2),
                "skipped": 0, "index": torch.arange(2)} for _ in range(4)]
    model = ThirdStepGives()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError) as raised:
        train_one_epoch(model, DataLoader(batches, batch_size=None), BatchTransform(None, 1), BCEWithLogits(),
                        optimizer, Precision(torch.device("cpu"), enabled=False), torch.device("cpu"),
                        desc="epoch 4 full", loss_ceiling=1000.0)
    assert str(raised.value).startswith(f"epoch 4 full, step 3: the training loss became {'inf' if logit == math.inf else 'nan'} (training diverged")


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_file_and_free_space(
    dataset: tuple[Path, Path], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.save on a full disk raised 'RuntimeError: [enforce fail at inline_container.cc]'.
    A resnet18 here: its 45 MB checkpoint is what does not fit the 8 MiB disk."""
    data, base = dataset
    split = _split_with(base, tmp_path / "split", BATCH, 2)
    out = small_disk / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS, "--backbone", "resnet18",
            "--epochs", "1", "--batch-size", str(BATCH), "--set", "warmup_epochs=0"]
    assert mammo_main(args) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "enforce fail" not in err
    assert line.startswith(f"mammo: error: no space left on device writing {out / 'last.pt'} (")
    assert f"free of 8.0 MiB on {small_disk})" in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file left


def test_what_a_run_killed_mid_write_left_is_removed_by_the_next_and_nothing_else(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    """A SIGKILL while last.pt is written leaves its temporary copy (``.last.pt.<random>.tmp``,
    as ``atomic_path`` names it); the resumed run removes it, and leaves files it does not
    write alone."""
    data, split = dataset
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--batch-size", str(BATCH), "--set", "warmup_epochs=0"]
    assert mammo_main([*args, "--epochs", "1"]) == 0
    leftovers = [out / ".last.pt.k1ll3d00.tmp", out / ".history.json.x9y8z7w6.tmp", out / ".topk_epoch001.pt.abcdefgh.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a checkpoint")
    users = [out / ".notes.abc.tmp", out / "mine.pt", out / ".mine.pt.abc.tmp"]
    for path in users:
        path.write_bytes(b"the user's")
    assert mammo_main([*args, "--epochs", "2", "--resume"]) == 0
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"the user's" for path in users)
    assert len(json.loads((out / "history.json").read_text())) == 2


@pytest.mark.slow  # a real process receiving a real signal
def test_sigterm_stops_training_with_exit_143_a_line_and_no_half_written_file(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """A pod being stopped gets SIGTERM: the trainer says so in one line and exits 143 (128 +
    15), like Ctrl-C's 130, and no temporary file is left; before, it died silently."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data, split = dataset
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mammo.cli", "train", "--data", str(data), "--split", str(split), "--out", str(out),
               *TRAIN_ARGS, "--batch-size", str(BATCH), "--epochs", "100000", "--set", "warmup_epochs=0",
               "--set", "early_stopping.patience=100000"]
    trainer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        while not (out / "history.json").exists():  # training is under way
            assert trainer.poll() is None, trainer.stderr.read() if trainer.stderr else ""
            time.sleep(0.1)
        trainer.send_signal(signal.SIGTERM)
        _, err = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
    assert trainer.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "mammo: terminated (SIGTERM); files being written were discarded"
    assert not list(out.glob(".*.tmp"))


def _trained(dataset: tuple[Path, Path], out: Path) -> list[str]:
    data, split = dataset
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--batch-size", str(BATCH), "--set", "warmup_epochs=0"]
    assert mammo_main([*args, "--epochs", "1"]) == 0
    return args


@pytest.mark.parametrize(("change", "says"), [
    (lambda p: p.pop("model"), "not a mammo checkpoint (no model weights"),
    (lambda p: p.update(model={"fc.weight": "not a tensor"}), "not a mammo checkpoint (no model weights"),
    (lambda p: p["model_config"].update(backbone="resnet9000"), "its model_config is not valid (model_config: backbone"),
    (lambda p: p.update(model_config="tinynet"), "not a mammo checkpoint (no valid 'model_config')"),
    (lambda p: p.update(image_size=0), "its recorded image size 0"),
    (lambda p: p.update(image_size=60000), "its recorded image size 60000"),
    (lambda p: p.update(image_size="big"), "its recorded image size 'big'"),
    (lambda p: p.pop("optimizer"), "holds no 'optimizer', so training cannot resume from it"),
    (lambda p: p["model"]["fc.weight"].fill_(float("nan")), "its weights hold NaN or infinite values (fc.weight)"),
], ids=["no-model", "model-not-tensors", "unknown-backbone", "config-not-a-dict", "size-0", "size-60000", "size-text",
        "no-optimizer", "nan-weights"])
def test_a_malformed_checkpoint_is_one_line_in_every_command(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change, says: str
) -> None:
    """Checkpoints that unpickle but are malformed: one line naming the file and what is wrong
    in train --resume, evaluate, predict and export, never a traceback."""
    data, split = dataset
    out = tmp_path / "run"
    args = _trained(dataset, out)
    payload = torch.load(out / "last.pt", weights_only=True)
    change(payload)
    torch.save(payload, out / "last.pt")
    capsys.readouterr()
    commands = [[*args, "--epochs", "2", "--resume"]]
    if "resume" not in says:
        commands += [
            ["evaluate", "--data", str(data), "--split", str(split), "--out", str(tmp_path / "eval"),
             "--checkpoint", str(out / "last.pt"), "--workers", "0", "--device", "cpu"],
            ["predict", "--model", str(out / "last.pt"), "--data", str(data), "--out", str(tmp_path / "s.csv"),
             "--workers", "0", "--device", "cpu"],
            ["export", "--model", str(out / "last.pt"), "--out", str(tmp_path / "w.pt")],
        ]
    for command in commands:
        assert mammo_main(command) == 2, command[0]
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out / 'last.pt'}: " in err and says in err, (command[0], err)


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--image-size", "40", "trained at 32 px, not the 40 asked for"),
    ("--backbone", "resnet18", "a tinynet checkpoint, not resnet18"),
])
def test_resume_with_another_size_or_backbone_is_refused(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    out = tmp_path / "run"
    args = _trained(dataset, out)
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert mammo_main([*args, "--epochs", "2", "--resume", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert (out / "last.pt").read_bytes() == before


def test_an_evaluation_that_runs_out_of_space_leaves_nothing_half_written(
    dataset: tuple[Path, Path], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its files move into --out together: a full disk halfway (here: after the CSVs, in the
    plots or the report) leaves no predictions without metrics.json, and no scratch folder."""
    import os
    import shutil

    from model_support import fake_checkpoint

    data, split = dataset
    checkpoint = fake_checkpoint(tmp_path / "model.pt")
    out = small_disk / "eval"
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 96 * 1024))  # room for the CSVs, not for the plots
    os.sync()
    code = mammo_main(["evaluate", "--data", str(data), "--split", str(split), "--out", str(out), "--checkpoint",
                       str(checkpoint), "--workers", "0", "--device", "cpu", "--set", "stats.resamples=20",
                       "--set", "stats.subgroup_resamples=0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no space left on device writing" in err, err
    assert list(out.iterdir()) == [], [p.name for p in out.iterdir()]
