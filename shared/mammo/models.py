"""Classifiers with one cancer logit on any network of the backbone table, and its blocks.

``build_model`` returns the torchvision network ``model.backbone`` names (ResNet, EfficientNet,
ConvNeXt; see ``mammo.backbones``) whose classification head is ``Linear(in_features, 1)``: the
forward pass gives logits of shape [B, 1] (squeeze to [B]; the losses accept either).
Pretrained weights come from a torchvision weights name (downloaded; fails on air-gapped
machines) or a local state_dict file. With ``in_channels == 1`` the stem convolution takes
grayscale input, its weights summed over the RGB channels after loading (its bias, if any, kept),
so ImageNet features are kept without repeating every image three times.

``head_parameters`` and ``block_modules`` give what gradual unfreezing trains: the head, then
the family's blocks deepest first. Freezing a block sets ``requires_grad=False`` on its
parameters; the unfreeze trainer also keeps every BatchNorm layer in eval mode (running
statistics frozen). ConvNeXt's LayerNorm has no running statistics: freezing it means only that
its weight and bias (and the blocks' layer-scale factors) do not train.
"""

from __future__ import annotations

import logging
from http.client import HTTPException
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from mammo.backbones import BACKBONES, Family, family_of
from mammo.config import ModelConfig
from mammo.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "block_modules", "build_model", "head_parameters", "is_weights_path"]

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")


def is_weights_path(value: str) -> bool:
    """A weights value names a file when it looks like one or exists; otherwise a torchvision name."""
    return (
        "/" in value or value.lower().endswith(WEIGHT_SUFFIXES) or Path(value).expanduser().exists()
    )


def _download(backbone: str, name: str) -> dict[str, torch.Tensor]:
    """State dict of a torchvision weights enum member, e.g. ``IMAGENET1K_V2`` or ``DEFAULT``."""
    if family_of(backbone).source != "torchvision":
        raise ConfigError(
            f"model.weights: {backbone} has no pretrained weights; expected none or a path to a state_dict file"
        )
    enum = get_model_weights(backbone)
    member = enum.__members__.get(name.upper().removeprefix(f"{enum.__name__.upper()}."))
    if member is None:
        valid = ", ".join(enum.__members__)
        raise ConfigError(
            f"model.weights: unknown torchvision weights {name!r} for {backbone}; "
            f"expected one of {valid}, none, or a path to a state_dict file"
        )
    try:
        return member.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, HTTPException) as exc:
        raise CheckpointError(
            f"could not download torchvision weights {enum.__name__}.{member.name} "
            f"({exc.__class__.__name__}); on machines without internet save "
            f"torchvision.models.{backbone}(weights='{member.name}').state_dict() elsewhere "
            "with torch.save and pass that file as model.weights"
        ) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A bare state_dict, or one under a ``model``/``state_dict`` key (training checkpoints)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # torch.load raises many types (pickle, zip, EOF, Runtime) on bad files
        raise CheckpointError(
            f"{path}: not a loadable state_dict file ({exc.__class__.__name__})"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise CheckpointError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _keys(keys: list[str], kind: str) -> str:
    """``3 missing key(s) (e.g. layer4.0.conv1.weight)`` for error messages."""
    example = f" (e.g. {keys[0]})" if keys else ""
    return f"{len(keys)} {kind} key(s){example}"


def _load(model: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: str) -> None:
    """Load everything but a head of another shape; any other mismatch is an error."""
    own = model.state_dict()
    head = family_of(backbone).head + "."
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith(head) and k in own and v.shape != own[k].shape)
    }
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: {len(wrong)} tensor(s) have the wrong shape for {backbone}, e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: does not match {backbone}: {_keys(missing, 'missing')}, "
            f"{_keys(result.unexpected_keys, 'unexpected')}"
        )
    if result.missing_keys:
        log.info(
            "%s: no 1-logit head in the weights; %s starts from random initialisation", source, head[:-1]
        )


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


def _stem(model: nn.Module, family: Family) -> nn.Conv2d:
    stem = model.get_submodule(family.stem)
    if not isinstance(stem, nn.Conv2d):
        raise TypeError(f"{family.name}: {family.stem} is a {type(stem).__name__}, not a Conv2d")
    return stem


def _to_single_channel(model: nn.Module, family: Family) -> None:
    """Replace the stem conv by a 1-channel conv whose kernel is the sum over the input channels."""
    old = _stem(model, family)
    new = nn.Conv2d(
        1,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set_submodule(model, family.stem, new)


def _network(backbone: str, family: Family) -> nn.Module:
    """The untrained network ``backbone`` names, from torchvision or from this package."""
    if family.source == "mammo":
        from mammo.tinynet import TinyNet

        return TinyNet()
    return get_model(backbone, weights=None)


def build_model(config: ModelConfig) -> nn.Module:
    """The backbone with a 1-logit head, weights loaded, its stem converted for grayscale if asked."""
    family = family_of(config.backbone)
    model = _network(config.backbone, family)
    head = model.get_submodule(family.head)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{family.name}: {family.head} is a {type(head).__name__}, not a Linear")
    _set_submodule(model, family.head, nn.Linear(head.in_features, 1))
    weights = config.weights
    if weights is not None and weights.strip().lower() != "none":
        if is_weights_path(weights):
            path = Path(weights).expanduser()
            state, source = _read_state_dict(path), str(path)
        else:
            state, source = _download(config.backbone, weights), f"torchvision {weights}"
        stem = state.get(f"{family.stem}.weight")
        if stem is not None and stem.dim() == 4 and stem.shape[1] == 1:
            _to_single_channel(model, family)  # weights saved from a grayscale model
        _load(model, state, source, config.backbone)
        log.info("%s: loaded weights from %s", config.backbone, source)
    channels = _stem(model, family).in_channels
    if config.in_channels == 1 and channels == 3:
        _to_single_channel(model, family)
    elif config.in_channels == 3 and channels == 1:
        raise CheckpointError(
            f"{config.weights}: weights are for 1-channel input; set model.in_channels to 1"
        )
    return model


def head_parameters(model: nn.Module, backbone: str) -> list[nn.Parameter]:
    """The classification head's parameters (trained first when unfreezing gradually)."""
    return list(model.get_submodule(family_of(backbone).head).parameters())


def block_modules(model: nn.Module, backbone: str, name: str) -> list[nn.Module]:
    """Modules of one unfreezing block of ``backbone``'s family, e.g. ``layer4`` or ``conv1``
    (conv1 + bn1) for ResNet; unknown names are a ``ConfigError`` listing the valid ones."""
    return [model.get_submodule(path) for path in family_of(backbone).block(name).modules]
