"""The pipeline's typed parameters, derived from ``mammo.config.PipelineParams``.

Every ``PipelineParams`` field becomes a pipeline parameter of the same name, type, default and
description (``data`` is called ``dataset_uri`` here; ``weights`` uses ``""`` for "none", since
KFP parameters cannot be null). The pipeline adds what only the pipeline knows: where the store
is and, in the ``gpu`` profile, GPUs and nodes per trainer. This one table drives the pipeline's
signature and parameter descriptions, ``--param`` parsing and the README's reference.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from mammo.config import PipelineParams, preprocess_config, stage_configs
from mammo.config_files import format_validation_error, load_yaml, parse_value, read_yaml_mapping, split_pair
from mammo.errors import ConfigError
from mammo_components.kfp_component import STORE_URI_HELP

#: Parameter types KFP knows (STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST).
ParamType = type

#: Default store of cluster runs: the bucket of the project's MinIO (docs/kubernetes.md).
DEFAULT_STORE = "s3://mammo"


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
        help=info.description or "",
        field=name,
    )


def pipeline_parameters(*, dataset_uri: str, with_gpus: bool) -> list[PipelineParameter]:
    """All parameters of the pipeline, in signature order."""
    fields = {name: _from_params(name, info) for name, info in PipelineParams.model_fields.items()}
    del fields["data"]  # becomes dataset_uri, with the profile's default
    head = [
        PipelineParameter(
            "dataset_uri", str, dataset_uri,
            "Dataset prefix: train.csv + PNGs, or DICOM files with dataset_format dicom; s3://bucket/key or a local path.",
            "data",
        ),
        PipelineParameter("store_uri", str, DEFAULT_STORE, STORE_URI_HELP),
    ]
    tail = []
    if with_gpus:
        tail.append(PipelineParameter("trainer_gpus", int, 1, "GPUs requested by each trainer pod."))
        tail.append(PipelineParameter(
            "trainer_nodes", int, 1,
            "Nodes per trainer: 1 trains in the step's own pod; more launches a Kubeflow Trainer "
            "TrainJob of that many nodes with trainer_gpus GPUs each (needs Kubeflow Trainer v2.3 "
            "and k8s/components/kubeflow-trainer).",
        ))
    return [*head, *fields.values(), *tail]


def parse_param_flags(pairs: list[str], parameters: list[PipelineParameter]) -> dict[str, Any]:
    """``key=value`` strings -> typed pipeline arguments; unknown keys and bad values are
    ``ConfigError`` naming the key."""
    known = {p.name: p for p in parameters}
    result: dict[str, Any] = {}
    for pair in pairs:
        key, raw = split_pair(pair, "--param", "dataset_uri=s3://mammo/datasets/rsna")
        if key not in known:
            raise ConfigError(f"--param {key}: unknown parameter (see `mammo pipeline params`)")
        value = raw if known[key].type is str else parse_value(raw)
        result[key] = typed(known[key], value, f"--param {key}={raw}")
    return result


def typed(parameter: PipelineParameter, value: Any, where: str) -> Any:
    """``value`` as the parameter's type (an int for a float, list items as strings), or a
    ``ConfigError`` naming ``where``."""
    kind = parameter.type
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # YAML's 256 for image_size
    if kind is list and isinstance(value, list):
        value = [str(item) for item in value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}")
    return value


def by_name(values: dict[str, Any], parameters: list[PipelineParameter], where: str) -> dict[str, Any]:
    """A mapping of parameter names (or the ``PipelineParams`` field a parameter sets, so a
    ``mammo run --config`` file's ``data`` is ``dataset_uri``) -> typed arguments."""
    known = {p.name: p for p in parameters} | {p.field: p for p in parameters if p.field and p.field != p.name}
    result: dict[str, Any] = {}
    for key, value in values.items():
        parameter = known.get(str(key))
        if parameter is None:
            raise ConfigError(f"{where}: {key}: unknown parameter (see `mammo pipeline params`)")
        if parameter.name in result:
            raise ConfigError(f"{where}: {key}: sets {parameter.name} a second time")
        result[parameter.name] = typed(parameter, "" if value is None else value, f"{where}: {key}")
    return result


# --- presets --------------------------------------------------------------------------------

#: Named parameter sets shipped with the package (``presets/<name>.yaml``: ``params``, and for
#: ``mammo run`` the ``synth`` recipe of its demo dataset).
PRESET_FOLDER = "presets"


def preset_names() -> tuple[str, ...]:
    folder = resources.files("mammo_pipelines").joinpath(PRESET_FOLDER)
    return tuple(sorted(Path(entry.name).stem for entry in folder.iterdir() if entry.name.endswith(".yaml")))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's mapping (``params``, ``synth``); one line naming the choices if unknown."""
    if name not in preset_names():
        raise ConfigError(f"preset {name!r}: choose one of {', '.join(preset_names())}")
    text = resources.files("mammo_pipelines").joinpath(PRESET_FOLDER, f"{name}.yaml").read_text()
    return load_yaml(text) or {}


def with_defaults(parameters: list[PipelineParameter], values: dict[str, Any], where: str) -> list[PipelineParameter]:
    """The parameters with ``values`` (names or fields, as ``by_name``) as their defaults."""
    chosen = by_name(values, parameters, where)
    return [dataclasses.replace(p, default=chosen[p.name]) if p.name in chosen else p for p in parameters]


def preset_parameters(parameters: list[PipelineParameter], preset: str) -> list[PipelineParameter]:
    """The parameters with the preset's ``params`` as defaults: those of them that exist here
    (the scoring pipeline has only the inference settings)."""
    names = {p.name for p in parameters} | {p.field for p in parameters if p.field}
    values = {key: value for key, value in (load_preset(preset).get("params") or {}).items() if key in names}
    return with_defaults(parameters, values, f"preset {preset}")


def config_arguments(config_file: str | None, parameters: list[PipelineParameter]) -> dict[str, Any]:
    """A ``--config`` YAML file of parameter values -> typed arguments (``{}`` without one)."""
    if config_file is None:
        return {}
    return by_name(read_yaml_mapping(config_file), parameters, str(config_file))


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
    preprocess_config(params)  # preprocess_set keys and values, even when dataset_format is png
    return params


def describe(parameters: list[PipelineParameter]) -> str:
    """A plain-text table of the parameters (``mammo pipeline params``)."""
    width = max(len(p.name) for p in parameters)
    lines = []
    for p in parameters:
        default = json.dumps(p.default) if not isinstance(p.default, str) else repr(p.default)
        lines.append(f"{p.name:<{width}}  {p.type.__name__:<5}  {default:<28}  {p.help}")
    return "\n".join(lines)
