"""Losses against hand-written formulas."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from mammo.config import LossConfig
from mammo.errors import ConfigError
from mammo.losses import build_loss, drawn_prevalence, pos_weight_from_prevalence, sampler_warning

LOGITS = [1.5, -0.5, 0.0, -2.0, 3.0]
TARGETS = [1.0, 1.0, 0.0, 0.0, 0.0]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def hand_bce(pos_weight: float = 1.0) -> float:
    terms = [
        -(pos_weight * y * math.log(sigmoid(x)) + (1 - y) * math.log(1 - sigmoid(x)))
        for x, y in zip(LOGITS, TARGETS)
    ]
    return sum(terms) / len(terms)


def hand_focal(alpha: float, gamma: float) -> float:
    terms = []
    for x, y in zip(LOGITS, TARGETS):
        p_true = sigmoid(x) if y == 1 else 1 - sigmoid(x)
        weight = alpha if y == 1 else 1 - alpha
        terms.append(-weight * (1 - p_true) ** gamma * math.log(p_true))
    return sum(terms) / len(terms)


def evaluate(config: LossConfig, prevalence: float, shape: tuple[int, ...] = (5,)) -> float:
    loss = build_loss(config, prevalence)(
        torch.tensor(LOGITS).reshape(shape), torch.tensor(TARGETS)
    )
    assert loss.dim() == 0
    return float(loss)


def test_pos_weight_is_the_damped_inverse_class_ratio() -> None:
    assert pos_weight_from_prevalence(0.2) == pytest.approx(2.0)
    assert pos_weight_from_prevalence(0.5) == pytest.approx(1.0)
    assert pos_weight_from_prevalence(1158 / 54706) == pytest.approx(6.80, abs=0.01)


def test_bce_and_weighted_bce_match_hand_computation() -> None:
    assert evaluate(LossConfig(name="bce"), 0.2) == pytest.approx(hand_bce())
    assert evaluate(LossConfig(name="bce_pos"), 0.2) == pytest.approx(hand_bce(pos_weight=2.0))
    assert evaluate(LossConfig(name="bce_pos"), 0.2, shape=(5, 1)) == pytest.approx(hand_bce(2.0))


def test_focal_losses_match_hand_computation() -> None:
    assert evaluate(LossConfig(name="focal"), 0.2) == pytest.approx(hand_focal(0.8, 2.0))
    explicit = LossConfig(name="focal", focal_alpha=0.25, focal_gamma=1.0)
    assert evaluate(explicit, 0.2) == pytest.approx(hand_focal(0.25, 1.0))
    assert evaluate(LossConfig(name="focal_pos"), 0.2) == pytest.approx(hand_focal(2 / 3, 2.0))
    assert evaluate(LossConfig(name="focal_pos", focal_gamma=0.0), 0.2) == pytest.approx(
        hand_focal(2 / 3, 0.0)
    )


def test_pos_weight_is_a_buffer_and_the_loss_is_float32_with_gradients() -> None:
    loss_fn = build_loss(LossConfig(name="bce_pos"), 0.2)
    assert dict(loss_fn.named_buffers())["pos_weight"].item() == pytest.approx(2.0)
    assert not list(loss_fn.parameters())
    logits = torch.tensor(LOGITS, dtype=torch.bfloat16, requires_grad=True)
    value = loss_fn(logits, torch.tensor([1, 1, 0, 0, 0]))
    assert value.dtype == torch.float32
    value.backward()
    assert logits.grad is not None and logits.grad.shape == (5,)


@pytest.mark.parametrize("prevalence", [0.0, 1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name", ["bce", "bce_pos", "focal", "focal_pos"])
def test_single_class_training_split_is_a_config_error(name: str, prevalence: float) -> None:
    with pytest.raises(ConfigError, match="training split needs both cancer and cancer-free"):
        build_loss(LossConfig(name=name), prevalence)


def test_focal_alpha_is_refused_where_it_would_be_ignored() -> None:
    with pytest.raises(
        ConfigError, match="loss.focal_alpha is used by loss 'focal' only, not 'focal_pos'"
    ):
        build_loss(LossConfig(name="focal_pos", focal_alpha=0.3), 0.1)


# --- the weight follows what the loader draws ---------------------------------------------------


def test_the_drawn_cancer_share_is_the_rows_own_or_one_half_under_the_balanced_sampler() -> None:
    assert drawn_prevalence([1, 0, 0, 0], balanced_sampler=False) == 0.25
    assert drawn_prevalence([1, 0, 0, 0], balanced_sampler=True) == 0.5
    assert drawn_prevalence([1, 1], balanced_sampler=True) == 1.0  # one class: nothing to balance
    assert sampler_warning(LossConfig(name="bce_pos"), balanced_sampler=False) is None
    assert sampler_warning(LossConfig(name="bce"), balanced_sampler=True) is None
    assert sampler_warning(LossConfig(name="focal"), balanced_sampler=True) is None
    for name in ("bce_pos", "focal_pos"):
        line = sampler_warning(LossConfig(name=name), balanced_sampler=True)
        assert line is not None and "\n" not in line
        assert line.startswith(f"loss {name} with data.balanced_sampler: the sampler already draws cancers")


def _train_capturing_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra) -> list[tuple[str, object, object]]:
    """A 3-epoch tinynet baseline (1 warm-up epoch) on a small synthetic split; per epoch: the
    phase, the cancer labels it trained on and the loss module its training step was given."""
    from mammo.config import TrainConfig
    from mammo.config_files import load_config
    from mammo.data.synth import write_synthetic_dataset
    from mammo.engine import trainer
    from mammo.engine.baseline import BaselineTrainer, train_baseline
    from mammo.split import run_split

    write_synthetic_dataset(tmp_path / "data", patients=40, image_size=32, prevalence=0.3, seed=3)
    run_split(data=str(tmp_path / "data"), out=str(tmp_path / "split"), val_frac=0.2, test_frac=0.25, seed=42)
    epochs: list[tuple[str, object, object]] = []
    one_epoch, train_rows = trainer.train_one_epoch, BaselineTrainer.train_rows

    def rows_of(self, epoch):
        phase, frame = train_rows(self, epoch)
        epochs.append((phase, frame["cancer"].to_numpy(), None))
        return phase, frame

    def capture(model, loader, transform, loss_fn, *args, **kwargs):
        phase, labels, _ = epochs[-1]
        epochs[-1] = (phase, labels, loss_fn)
        return one_epoch(model, loader, transform, loss_fn, *args, **kwargs)

    monkeypatch.setattr(BaselineTrainer, "train_rows", rows_of)
    monkeypatch.setattr(trainer, "train_one_epoch", capture)
    train_baseline(load_config(TrainConfig, overrides={
        "data.batch_size": 32, "data.workers": 0, "model.backbone": "tinynet", "device": "cpu",
        "data.image_size": 32, "data.root": str(tmp_path / "data"), "split": str(tmp_path / "split"),
        "out": str(tmp_path / "out"), "epochs": 3, "warmup_epochs": 1, "augment.enabled": False,
        "early_stopping.enabled": False, **extra,
    }))
    return epochs


def _pos_weight(loss_fn) -> float:
    return float(dict(loss_fn.named_buffers())["pos_weight"])


def test_warm_up_is_weighted_by_the_balance_of_the_subset_it_trains_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = _train_capturing_losses(tmp_path, monkeypatch)
    assert [phase for phase, _, _ in epochs] == ["warmup", "full", "full"]
    warmup, full = epochs[0][1], epochs[1][1]
    assert 0 < warmup.mean() < 1 and warmup.mean() > full.mean()  # the subset holds every cancer, fewer negatives
    assert _pos_weight(epochs[0][2]) == pytest.approx(pos_weight_from_prevalence(float(warmup.mean())), rel=1e-6)
    for _, labels, loss_fn in epochs[1:]:
        assert _pos_weight(loss_fn) == pytest.approx(pos_weight_from_prevalence(float(full.mean())), rel=1e-6)


def test_the_balanced_sampler_with_bce_pos_weights_a_balanced_draw_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mammo.engine.trainer"):
        epochs = _train_capturing_losses(tmp_path, monkeypatch, **{"data.balanced_sampler": True})
    assert [phase for phase, _, _ in epochs] == ["warmup", "full", "full"]
    assert [_pos_weight(loss_fn) for _, _, loss_fn in epochs] == [1.0, 1.0, 1.0]
    lines = [r.getMessage() for r in caplog.records if "data.balanced_sampler" in r.getMessage()]
    assert lines == ["baseline: " + sampler_warning(LossConfig(name="bce_pos"), balanced_sampler=True)]
