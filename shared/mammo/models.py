"""ResNet classifiers with one cancer logit, and the block structure gradual unfreezing needs.

``build_model`` returns a torchvision ResNet whose ``fc`` is ``Linear(in_features, 1)``: the
forward pass gives logits of shape [B, 1] (squeeze to [B]; the losses accept either).
Pretrained weights come from a torchvision weights name (downloaded; fails on air-gapped
machines) or a local state_dict file. With ``in_channels == 1`` the first convolution takes
grayscale input, its weights summed over the RGB channels after loading, so ImageNet features
are kept without repeating every image three times.
"""

from __future__ import annotations

import logging
from http.client import HTTPException
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet, get_model, get_model_weights

from mammo.config import ModelConfig
from mammo.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
#: Unfreezing order, deepest first; ``conv1`` is the stem (conv1 + bn1).
BLOCK_NAMES = ("layer4", "layer3", "layer2", "layer1", "conv1")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")


def is_weights_path(value: str) -> bool:
    """A weights value names a file when it looks like one or exists; otherwise a torchvision name."""
    return (
        "/" in value or value.lower().endswith(WEIGHT_SUFFIXES) or Path(value).expanduser().exists()
    )


def _download(backbone: str, name: str) -> dict[str, torch.Tensor]:
    """State dict of a torchvision weights enum member, e.g. ``IMAGENET1K_V2`` or ``DEFAULT``."""
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


def _load(model: ResNet, state: dict[str, torch.Tensor], source: str, backbone: str) -> None:
    """Load everything but a head of another shape; any other mismatch is an error."""
    own = model.state_dict()
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith("fc.") and k in own and v.shape != own[k].shape)
    }
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: {len(wrong)} tensor(s) have the wrong shape for {backbone}, e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: does not match {backbone}: {_keys(missing, 'missing')}, "
            f"{_keys(result.unexpected_keys, 'unexpected')}"
        )
    if result.missing_keys:
        log.info("%s: no 1-logit head in the weights; fc starts from random initialisation", source)


def _to_single_channel(model: ResNet) -> None:
    """Replace conv1 by a 1-channel conv whose kernel is the sum over the input channels."""
    old = model.conv1
    new = nn.Conv2d(
        1,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    model.conv1 = new


def build_model(config: ModelConfig) -> ResNet:
    """ResNet with a 1-logit head, weights loaded, conv1 converted for grayscale if asked."""
    model = get_model(config.backbone, weights=None)
    model.fc = nn.Linear(model.fc.in_features, 1)
    weights = config.weights
    if weights is not None and weights.strip().lower() != "none":
        if is_weights_path(weights):
            path = Path(weights).expanduser()
            state, source = _read_state_dict(path), str(path)
        else:
            state, source = _download(config.backbone, weights), f"torchvision {weights}"
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.dim() == 4 and conv1.shape[1] == 1:
            _to_single_channel(model)  # weights saved from a grayscale model
        _load(model, state, source, config.backbone)
        log.info("%s: loaded weights from %s", config.backbone, source)
    if config.in_channels == 1 and model.conv1.in_channels == 3:
        _to_single_channel(model)
    elif config.in_channels == 3 and model.conv1.in_channels == 1:
        raise CheckpointError(
            f"{config.weights}: weights are for 1-channel input; set model.in_channels to 1"
        )
    return model


def head_parameters(model: ResNet) -> list[nn.Parameter]:
    """The classification head's parameters (trained first when unfreezing gradually)."""
    return list(model.fc.parameters())


def block_modules(model: ResNet, name: str) -> list[nn.Module]:
    """Modules of one unfreezing block: ``layer1``..``layer4``, or ``conv1`` (conv1 + bn1)."""
    if name == "conv1":
        return [model.conv1, model.bn1]
    if name in BLOCK_NAMES:
        return [getattr(model, name)]
    raise ConfigError(f"unknown block {name!r}; expected one of {', '.join(BLOCK_NAMES)}")
