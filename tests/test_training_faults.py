"""Training on awkward sizes and through faults, with real files and real processes.

- Any training-set size trains, in both phases (warm-up subset, then full data): sizes around
  multiples of the batch size. The issue's crash was a last training batch of one image reaching
  BatchNorm; training drops a last partial batch (``engine.distributed.EpochSampler``), so every
  step sees a whole batch and DDP ranks stay in step; a set smaller than one batch is one batch,
  and a set of one image is refused in one line (BatchNorm needs two).
- A loss that becomes NaN stops the run with one line naming the epoch and step, and keeps the
  last good checkpoint (nothing of the diverged epoch is saved).
- A full disk while writing a checkpoint is one line naming the file and the free space.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mammo.cli import main as mammo_main
from mammo.data.synth import write_synthetic_dataset
from mammo.engine.checkpoint import load_checkpoint

BATCH = 4
TRAIN_ARGS = ["--image-size", "32", "--backbone", "resnet18", "--workers", "0", "--device", "cpu"]


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


def test_a_diverging_loss_stops_naming_the_epoch_and_step_and_keeps_the_last_good_checkpoint(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A learning rate of 1e8 (finite, so the config accepts it) trains one epoch to huge but
    finite losses, then NaN. Before: NaN epochs were trained, checkpointed, and exit 0."""
    data, split = dataset
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--epochs", "3", "--batch-size", str(BATCH), "--set", "warmup_epochs=0", "--set", "optimizer.lr=1e8"]
    assert mammo_main(args) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("mammo: error: baseline epoch ") and "Traceback" not in err
    assert ", step " in line and ("the training loss became nan" in line or "the training loss became inf" in line)
    failed_epoch = int(line.split("epoch ")[1].split()[0])
    if failed_epoch > 1:
        assert f"kept the last good checkpoint {out / 'last.pt'} (epoch {failed_epoch - 1})" in line
        assert load_checkpoint(out / "last.pt")["epoch"] == failed_epoch - 1
        history = json.loads((out / "history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, failed_epoch))
    else:
        assert "no checkpoint was written" in line and not (out / "last.pt").exists()


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_file_and_free_space(
    dataset: tuple[Path, Path], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.save on a full disk raised 'RuntimeError: [enforce fail at inline_container.cc]'."""
    data, base = dataset
    split = _split_with(base, tmp_path / "split", BATCH, 2)
    out = small_disk / "run"
    args = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *TRAIN_ARGS,
            "--epochs", "1", "--batch-size", str(BATCH), "--set", "warmup_epochs=0"]
    assert mammo_main(args) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "enforce fail" not in err
    assert line.startswith(f"mammo: error: no space left on device writing {out / 'last.pt'} (")
    assert f"free of 8.0 MiB on {small_disk})" in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file left
