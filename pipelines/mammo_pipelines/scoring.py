"""The ``mammo-scoring`` pipeline: one step, the scorer, that scores a dataset of studies with
the current production model of ``model_name`` and publishes the CSVs under
``<store>/scores/<model_name>/<UTC time>-<dataset>-<hash>/``.

A hospital compiles, uploads, submits and schedules it like the training pipeline
(``mammo pipeline ... --pipeline scoring``); the step gets the same cluster settings as the
evaluator (storage credentials by reference, the pod label, resources, the eval image, or the
training image with GPUs under ``--evaluator-gpus``). Never cached: the production model and the
dataset can change behind the same names.
"""

import inspect
from pathlib import Path
from typing import Any

from kfp import compiler, dsl
from kfp.dsl import Dataset
from pydantic import ValidationError

from mammo.config import PipelineParams
from mammo.config_files import format_validation_error
from mammo.errors import ConfigError
from mammo.runtimes import DEFAULT_RUNTIME, RUNTIMES
from mammo_components.kfp_component import STEP_INPUTS
from mammo_components.scorer.component import scorer
from mammo_pipelines.parameters import DEFAULT_STORE, PipelineParameter, preset_parameters
from mammo_pipelines.profiles import Profile

PIPELINE_NAME = "mammo-scoring"
DESCRIPTION = (
    "Scores a dataset of screening studies (no labels needed) with the current production "
    "model: per breast the probability of cancer and the flag at the model's threshold."
)
#: Default dataset of new studies to score.
DEFAULT_DATASET = "s3://mammo/datasets/incoming"


def parameters_for(profile: Profile) -> list[PipelineParameter]:
    """The scoring pipeline's parameters: where the studies, the store and the model are, and
    the inference settings (typed and described as in ``PipelineParams``)."""
    fields = PipelineParams.model_fields

    def field(name: str, kind: type) -> PipelineParameter:
        return PipelineParameter(name, kind, fields[name].get_default(call_default_factory=True),
                                 fields[name].description or "", name)

    return preset_parameters([
        PipelineParameter("dataset_uri", str, DEFAULT_DATASET,
                          "Studies to score: a folder with test.csv or train.csv (patient_id, image_id, laterality) "
                          "and the PNGs.", "data"),
        PipelineParameter("store_uri", str, DEFAULT_STORE, "Root of models/ (the production model) and scores/ (the output)."),
        field("model_name", str),
        PipelineParameter("table", str, "", "The CSV of dataset_uri to score; empty: the one of test.csv and train.csv there."),
        field("device", str),
        field("batch_size", int),
        field("workers", int),
        PipelineParameter("runtime", str, DEFAULT_RUNTIME, STEP_INPUTS["runtime"]),
    ], profile.preset)


def check_arguments(arguments: dict[str, Any], parameters: list[PipelineParameter]) -> None:
    """Check the values that are PipelineParams fields (one-line error naming the field)."""
    values = {p.field: arguments.get(p.name, p.default) for p in parameters if p.field and p.field != "data"}
    if arguments.get("runtime", DEFAULT_RUNTIME) not in RUNTIMES:
        raise ConfigError(f"pipeline parameter runtime: {arguments['runtime']!r} is not one of {', '.join(RUNTIMES)}")
    try:
        PipelineParams.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "pipeline parameters")) from None


def _wire(profile: Profile, args: dict[str, Any]) -> Any:
    from mammo_pipelines.pipeline import _runtime, gpu_step

    task = scorer(
        dataset_uri=args["dataset_uri"], store_uri=args["store_uri"], model_name=args["model_name"],
        table=args["table"],
        params={"device": args["device"], "batch_size": args["batch_size"], "workers": args["workers"]},
        runtime=args["runtime"],
    )
    task.set_display_name("scorer").set_container_image(profile.evaluator_image)
    _runtime(task, profile, profile.evaluator).set_caching_options(False)
    if profile.evaluator_gpus and profile.gpu_type is not None:
        gpu_step(task, profile, profile.evaluator_gpus)
    return task.outputs["scores"]


def build_pipeline(profile: Profile):  # -> kfp GraphComponent
    """The scoring pipeline for ``profile``; its signature is its parameter table."""
    parameters = parameters_for(profile)
    names = [p.name for p in parameters]

    def mammo_scoring(*args: Any) -> Any:
        return _wire(profile, dict(zip(names, args, strict=True)))

    mammo_scoring.__doc__ = DESCRIPTION + "\n\nArgs:\n" + "".join(
        f"    {p.name}: {' '.join(p.help.split())}\n" for p in parameters
    )
    mammo_scoring.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type)
         for p in parameters],
        return_annotation=Dataset,
    )
    config = dsl.PipelineConfig(ttl_seconds_after_finished=profile.ttl_seconds)
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_config=config)(mammo_scoring)


def compile_pipeline(profile: Profile, out: str | Path) -> Path:
    """Write the scoring pipeline's spec (YAML) for ``profile`` to ``out``; returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(profile), package_path=str(path))
    return path
