"""Losses against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mammo.config import LossConfig
from mammo.errors import ConfigError
from mammo.losses import build_loss, pos_weight_from_prevalence

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
