"""Loss functions for one-logit cancer classification, weighted by the training prevalence.

``prevalence`` must be the cancer share of the TRAINING images the loss sees (by image): the
research code computed it over the whole table, validation included, which leaks evaluation data
into training. What the loss sees is what the loader draws (``drawn_prevalence``): the warm-up
subset's own share during warm-up, and one half under the class-balanced sampler, so the sampler
and ``bce_pos``/``focal_pos`` never correct the imbalance twice (pos_weight 1 there; a warning
says so). Losses are computed in float32 even when the model runs under bf16 autocast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from mammo.config import LossConfig
from mammo.errors import ConfigError


def pos_weight_from_prevalence(prevalence: float) -> float:
    """sqrt((1 - p) / p): a damped inverse class ratio (about 6.8 at RSNA's 2.1 %)."""
    if not 0 < prevalence < 1 or math.isnan(prevalence):
        raise ConfigError(
            f"training cancer prevalence must be strictly between 0 and 1, got {prevalence}: "
            "the training split needs both cancer and cancer-free images"
        )
    return math.sqrt((1 - prevalence) / prevalence)


def drawn_prevalence(labels: Any, balanced_sampler: bool) -> float:
    """The cancer share of the images a training loader draws from rows with these 0/1
    ``labels``: their own share, or 1/2 under the class-balanced sampler (which draws both
    classes equally often) when both classes are there."""
    values = np.asarray(labels, dtype=np.float64).ravel()
    share = float(values.mean()) if values.size else math.nan
    return 0.5 if balanced_sampler and 0 < share < 1 else share


def sampler_warning(config: LossConfig, balanced_sampler: bool) -> str | None:
    """The line for a loss that weights by the class imbalance under the class-balanced sampler,
    which has already removed it: the weight becomes that of a balanced draw (pos_weight 1)."""
    if not balanced_sampler or config.name not in ("bce_pos", "focal_pos"):
        return None
    same = "plain bce" if config.name == "bce_pos" else "focal with alpha 0.5"
    return (f"loss {config.name} with data.balanced_sampler: the sampler already draws cancers and non-cancers equally, "
            f"so the loss is weighted for a balanced draw (pos_weight 1, the same as {same}), not corrected twice; "
            "use one of the two")


def _prepare(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 targets on the logits' device; logits [B] or [B, 1] reshaped to targets' [B]."""
    targets = targets.to(device=logits.device, dtype=torch.float32)
    return logits.float().reshape(targets.shape), targets


class BCEWithLogits(nn.Module):
    """Mean binary cross-entropy on logits, optionally up-weighting positives."""

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets)
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)

    def extra_repr(self) -> str:
        return "" if self.pos_weight is None else f"pos_weight={float(self.pos_weight):.4f}"


class FocalLoss(nn.Module):
    """Mean sigmoid focal loss (torchvision's) with a fixed alpha and gamma."""

    def __init__(self, alpha: float, gamma: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets)
        return sigmoid_focal_loss(
            logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="mean"
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4f}, gamma={self.gamma}"


def build_loss(config: LossConfig, prevalence: float) -> nn.Module:
    """The configured loss; ``prevalence`` is the cancer share of the training images it sees
    (``drawn_prevalence``).

    bce: plain; bce_pos: positives weighted by ``pos_weight_from_prevalence``; focal: alpha =
    ``focal_alpha`` or 1 - p; focal_pos: alpha = pw / (1 + pw). Call ``.to(device)`` on the result.
    """
    pos_weight = pos_weight_from_prevalence(prevalence)
    if config.focal_alpha is not None and config.name != "focal":
        raise ConfigError(
            f"loss.focal_alpha is used by loss 'focal' only, not {config.name!r}; remove it "
            "(focal_pos derives alpha from the training prevalence)"
        )
    if config.name == "bce":
        return BCEWithLogits()
    if config.name == "bce_pos":
        return BCEWithLogits(pos_weight)
    if config.name == "focal":
        alpha = config.focal_alpha if config.focal_alpha is not None else 1 - prevalence
        return FocalLoss(alpha, config.focal_gamma)
    return FocalLoss(pos_weight / (1 + pos_weight), config.focal_gamma)
