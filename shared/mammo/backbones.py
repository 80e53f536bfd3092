"""The backbone table: every network ``model.backbone`` can name, without importing torch.

Each :class:`Family` says, for its torchvision models, where the classification head is (it
becomes ``Linear(in_features, 1)``), where the stem convolution is (summed over its RGB input
channels for 1-channel input) and the blocks gradual unfreezing trains, deepest first. Module
positions are attribute paths as ``nn.Module.get_submodule`` reads them (``features.0.0``).
With the head, a family's blocks cover every parameter of the network exactly once.

Adding a torchvision family is one :class:`Family` entry in :data:`FAMILIES`: its model names
(``torchvision.models.get_model`` names), head, stem and blocks; its default unfreezing schedule
follows from the number of blocks (:func:`default_schedule`).

Normalisation while unfreezing: ResNet and EfficientNet use BatchNorm, whose running statistics
stay frozen for the whole unfreeze stage (every BatchNorm layer is kept in eval mode). ConvNeXt
uses LayerNorm, which has no running statistics: there a frozen block is one whose parameters,
LayerNorm weights and layer-scale factors included, have ``requires_grad=False``; a block
normalises each image by itself in either mode.

This module must not import torch: the config and the pipeline layer read it on machines that
only compile pipelines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mammo.errors import ConfigError


@dataclass(frozen=True)
class Block:
    """One unfreezing step's modules: ``name`` (as ``unfreeze.steps[].block`` names it) and
    the attribute paths of its modules."""

    name: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """torchvision networks sharing one layout."""

    name: str
    #: ``torchvision.models.get_model`` names; these are the ``model.backbone`` values.
    backbones: tuple[str, ...]
    #: The classifier ``Linear`` replaced by ``Linear(in_features, 1)``.
    head: str
    #: The first ``Conv2d`` (3 input channels), summed to 1 channel for grayscale input.
    stem: str
    #: Unfreezing blocks, deepest first; with the head they cover every parameter once.
    blocks: tuple[Block, ...]
    #: What "frozen" means for its normalisation layers (see the module docstring).
    norm: Literal["batch", "layer"] = "batch"
    #: Where the network comes from: ``torchvision.models.get_model`` (which also knows its
    #: pretrained weights), or this package's ``mammo.tinynet`` (no pretrained weights).
    source: Literal["torchvision", "mammo"] = "torchvision"

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(block.name for block in self.blocks)

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        raise ConfigError(
            f"unknown block {name!r} for {self.name}; expected one of {', '.join(self.block_names)}"
        )


def _features(*groups: tuple[int, ...], extra: dict[int, tuple[str, ...]] | None = None) -> tuple[Block, ...]:
    """Blocks over ``features.N`` indices, named ``features.N`` or ``features.A-B``."""
    blocks = []
    for i, group in enumerate(groups):
        name = f"features.{group[0]}" if len(group) == 1 else f"features.{group[0]}-{group[-1]}"
        modules = tuple(f"features.{n}" for n in group) + (extra or {}).get(i, ())
        blocks.append(Block(name, modules))
    return tuple(blocks)


FAMILIES: tuple[Family, ...] = (
    Family(
        name="resnet",
        backbones=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
        head="fc",
        stem="conv1",
        blocks=(
            Block("layer4", ("layer4",)),
            Block("layer3", ("layer3",)),
            Block("layer2", ("layer2",)),
            Block("layer1", ("layer1",)),
            Block("conv1", ("conv1", "bn1")),  # the stem
        ),
    ),
    # features.0: stem conv; features.1-7: MBConv stages; features.8: the 1x1 conv to 1280
    # channels; classifier: Dropout, Linear.
    Family(
        name="efficientnet",
        backbones=("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4"),
        head="classifier.1",
        stem="features.0.0",
        blocks=_features((7, 8), (6,), (4, 5), (2, 3), (0, 1)),
    ),
    # features.0: stem conv; features.1-3: Fused-MBConv stages; features.4-6: MBConv stages;
    # features.7: the 1x1 conv to 1280 channels; classifier: Dropout, Linear.
    Family(
        name="efficientnet_v2",
        backbones=("efficientnet_v2_s",),
        head="classifier.1",
        stem="features.0.0",
        blocks=_features((6, 7), (5,), (4,), (2, 3), (0, 1)),
    ),
    # features.0: stem (4x4 conv + LayerNorm); features.1/3/5/7: the four stages;
    # features.2/4/6: downsampling (LayerNorm + 2x2 conv); classifier: LayerNorm, Flatten,
    # Linear. The last stage's block also holds the final LayerNorm (classifier.0).
    Family(
        name="convnext",
        backbones=("convnext_tiny", "convnext_small"),
        head="classifier.2",
        stem="features.0.0",
        blocks=_features((6, 7), (4, 5), (2, 3), (1,), (0,), extra={0: ("classifier.0",)}),
        norm="layer",
    ),
    # A test-scale network (about 4,200 parameters) with ResNet's layout: a stem (conv1 + bn1),
    # three conv-BatchNorm-ReLU stages and a Linear head. Not for real data: it is what the test
    # suite and quick smoke runs train in seconds, with warm-up, gradual unfreezing, DDP and
    # frozen BatchNorm exercised exactly as for ResNet (``mammo.tinynet``).
    Family(
        name="tiny",
        backbones=("tinynet",),
        head="fc",
        stem="conv1",
        blocks=(
            Block("layer3", ("layer3",)),
            Block("layer2", ("layer2",)),
            Block("layer1", ("layer1",)),
            Block("conv1", ("conv1", "bn1")),
        ),
        source="mammo",
    ),
)

#: Every ``model.backbone`` value, family by family.
BACKBONES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.backbones)
DEFAULT_BACKBONE = "resnet50"

_BY_NAME = {name: family for family in FAMILIES for name in family.backbones}


def family_of(backbone: str) -> Family:
    """The family of a ``model.backbone`` value; unknown names are a ``ConfigError``."""
    family = _BY_NAME.get(backbone)
    if family is None:
        raise ConfigError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    return family


def describe() -> str:
    """Every backbone name, for help texts."""
    return ", ".join(BACKBONES)


#: The research code's ResNet schedule, (block_lr, head_lr) per step, deepest block first.
LADDER: tuple[tuple[float, float], ...] = (
    (5e-5, 5e-5),
    (1e-5, 3e-5),
    (5e-6, 2e-5),
    (2e-7, 1e-5),
    (1e-7, 1e-5),
)


def ladder(steps: int) -> list[tuple[float, float]]:
    """:data:`LADDER` for ``steps`` blocks: itself for 5, otherwise sampled log-linearly from
    its first to its last rung (two significant digits)."""
    if steps == len(LADDER):
        return list(LADDER)
    if steps < 1:
        return []
    last = len(LADDER) - 1
    rungs = []
    for i in range(steps):
        x = 0.0 if steps == 1 else i * last / (steps - 1)
        lo, frac = int(x), x - int(x)
        hi = min(lo + 1, last)
        rung = tuple(
            float(f"{math.exp((1 - frac) * math.log(LADDER[lo][k]) + frac * math.log(LADDER[hi][k])):.2g}")
            for k in (0, 1)
        )
        rungs.append((rung[0], rung[1]))
    return rungs


def default_schedule(backbone: str) -> list[tuple[str, float, float]]:
    """The family's default unfreezing steps as ``(block, block_lr, head_lr)``, every block once."""
    family = family_of(backbone)
    return [
        (block.name, block_lr, head_lr)
        for block, (block_lr, head_lr) in zip(family.blocks, ladder(len(family.blocks)), strict=True)
    ]
