"""The pipeline's typed parameters, derived from ``mammo.config.PipelineParams``.

Every ``PipelineParams`` field becomes a pipeline parameter of the same name, type and default
(``data`` is called ``dataset_uri`` here; ``weights`` uses ``""`` for "none", since KFP
parameters cannot be null). The pipeline adds what only the pipeline knows: where the store
is, the model's name, the promotion rule and, in the ``gpu`` profile, GPUs per trainer. This one
table drives the pipeline's signature, ``--param`` parsing and the README's reference.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from mammo.config import PipelineParams, format_validation_error, parse_value, split_pair, stage_configs
from mammo.errors import ConfigError

#: Parameter types KFP knows (STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST).
ParamType = type

#: Descriptions of the PipelineParams fields that have none of their own.
HELP = {
    "image_size": "Square input size in pixels.",
    "backbone": "resnet18, resnet34, resnet50, resnet101 or resnet152.",
    "weights": "Initial weights: empty (none), a torchvision weights name (e.g. IMAGENET1K_V2) or a state_dict file path in the image.",
    "in_channels": "1 = grayscale input (conv1 weights summed), 3 = image repeated.",
    "batch_size": "Images per training step.",
    "workers": "DataLoader worker processes per step (0 = main process).",
    "device": "auto, cpu, cuda, cuda:N or mps.",
    "seed": "Seed of the split, the sampling and the initialisation.",
    "val_frac": "Fraction of patients in the validation split (new patients only; old ones keep theirs).",
    "test_frac": "Fraction of patients in the test split (new patients only; old ones keep theirs).",
    "warmup_ratio": "Warm-up subset: all positive training breasts plus this many times as many negatives.",
    "loss": "bce, bce_pos (pos_weight from the training prevalence), focal or focal_pos.",
    "augment": "Batch-level augmentation of training images.",
    "baseline_epochs": "Upper bound on baseline epochs, warm-up included (early stopping may end sooner).",
    "warmup_epochs": "Leading baseline epochs on the balanced warm-up subset.",
    "baseline_lr": "Adam learning rate of the baseline.",
    "unfreeze_epochs": "Upper bound on gradual-unfreezing epochs.",
    "unfreeze_lr": "Learning rate of the head while the backbone is frozen.",
    "threshold_metric": "Breast-level metric maximised on val to choose the operating threshold (pf1 or f1).",
    "rank_metric": "Validation metric ranking the candidate checkpoints, e.g. breast.auc.",
    "baseline_set": "Further baseline settings as dotted key=value strings, e.g. [\"early_stopping.patience=3\"].",
    "unfreeze_set": "Further unfreeze settings as dotted key=value strings, e.g. [\"unfreeze.start_epoch=5\"].",
    "evaluate_set": "Further evaluation settings as dotted key=value strings.",
}

#: Default store of cluster runs: the bucket of the project's MinIO (docs/kubernetes.md).
DEFAULT_STORE = "s3://mammo"
DEFAULT_MODEL_NAME = "mammo"
DEFAULT_PROMOTION_METRIC = "test.breast.auc"
DEFAULT_PROMOTION_MARGIN = 0.005


@dataclass(frozen=True)
class PipelineParameter:
    name: str
    type: ParamType
    default: Any
    help: str
    #: The PipelineParams field this parameter sets; None for pipeline-only parameters.
    field: str | None = None


def _kfp_type(annotation: Any) -> ParamType:
    """int/float/bool/str/list from a pydantic annotation (Literal and Optional unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        kinds = {type(arg) for arg in typing.get_args(annotation)}
        if len(kinds) != 1:
            raise TypeError(f"mixed Literal {annotation}")
        return kinds.pop()
    if origin is list:
        return list
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if origin is not None and len(args) == 1:
        return _kfp_type(args[0])
    if annotation in (int, float, bool, str):
        return annotation
    raise TypeError(f"no KFP parameter type for {annotation}")


def _default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    return "" if value is None else value


def _from_params(name: str, info: FieldInfo) -> PipelineParameter:
    return PipelineParameter(
        name=name,
        type=_kfp_type(info.annotation),
        default=_default(info),
        help=info.description or HELP.get(name, ""),
        field=name,
    )


def pipeline_parameters(*, dataset_uri: str, with_gpus: bool) -> list[PipelineParameter]:
    """All parameters of the pipeline, in signature order."""
    fields = {name: _from_params(name, info) for name, info in PipelineParams.model_fields.items()}
    del fields["data"]  # becomes dataset_uri, with the profile's default
    head = [
        PipelineParameter("dataset_uri", str, dataset_uri, "Dataset prefix (train.csv + PNGs): s3://bucket/key or a local path.", "data"),
        PipelineParameter("store_uri", str, DEFAULT_STORE, "Root of splits/, runs/ and models/: s3://bucket[/prefix] or a local path."),
        PipelineParameter("model_name", str, DEFAULT_MODEL_NAME, "Name under models/<name>/production/ of the promoted model."),
    ]
    tail = [
        PipelineParameter(
            "promotion_metric", str, DEFAULT_PROMOTION_METRIC,
            "Metric deciding promotion, <split>.<level>.<metric>, e.g. test.breast.auc or val.image.pr_auc.",
        ),
        PipelineParameter(
            "promotion_margin", float, DEFAULT_PROMOTION_MARGIN,
            "The best candidate replaces production only when it beats it by more than this (absolute).",
        ),
    ]
    if with_gpus:
        tail.append(PipelineParameter("trainer_gpus", int, 1, "GPUs requested by each trainer pod."))
    return [*head, *fields.values(), *tail]


def parse_params(pairs: list[str], parameters: list[PipelineParameter]) -> dict[str, Any]:
    """``key=value`` strings -> typed pipeline arguments; unknown keys and bad values are
    ``ConfigError`` naming the key."""
    known = {p.name: p for p in parameters}
    result: dict[str, Any] = {}
    for pair in pairs:
        key, raw = split_pair(pair, "--param", "dataset_uri=s3://mammo/datasets/rsna")
        if key not in known:
            raise ConfigError(f"--param {key}: unknown parameter (see `mammo pipeline params`)")
        result[key] = coerce(known[key], raw)
    return result


def coerce(parameter: PipelineParameter, raw: str) -> Any:
    """One ``--param`` value as the parameter's type (YAML syntax for bools and lists)."""
    if parameter.type is str:
        return raw
    value = parse_value(raw)
    kind = parameter.type
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list and isinstance(value, list):
        value = [str(item) for item in value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"--param {parameter.name}={raw}: expected {kind.__name__}")
    return value


def check_arguments(arguments: dict[str, Any], parameters: list[PipelineParameter]) -> PipelineParams:
    """Validate the arguments that feed PipelineParams, and the stage configs they make (with
    the ``*_set`` overrides), before anything is submitted: a bad value fails here with a
    one-line message instead of in the first pod."""
    values = {p.field: arguments.get(p.name, p.default) for p in parameters if p.field}
    values["weights"] = values.get("weights") or None
    try:
        params = PipelineParams.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "pipeline parameters")) from None
    stage_configs(params, split="split", runs={"baseline": "runs", "unfreeze": "runs", "evaluate": "runs"})
    return params


def describe(parameters: list[PipelineParameter]) -> str:
    """A plain-text table of the parameters (``mammo pipeline params``)."""
    width = max(len(p.name) for p in parameters)
    lines = []
    for p in parameters:
        default = json.dumps(p.default) if not isinstance(p.default, str) else repr(p.default)
        lines.append(f"{p.name:<{width}}  {p.type.__name__:<5}  {default:<28}  {p.help}")
    return "\n".join(lines)
