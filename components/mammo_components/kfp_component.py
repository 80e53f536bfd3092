"""What every component's KFP component (``<folder>/component.py``) shares: the placeholder
images, the description of each step input and output (``STEP_INPUTS``) and ``described``, which
writes them into a step function's docstring, where KFP reads them.

A component's KFP component is a thin adapter: its body imports the component's ``step`` function
(``mammo_components``, installed in the project's images and in the local virtual environment),
calls it with the step's inputs and outputs, each by name (a call that readers and tools can
follow), and returns what it returns. The logic - running the component with URIs in object
storage, deriving the run id, filling the Dataset/Model/Metrics/ClassificationMetrics/HTML
artifacts for the KFP UI - lives in those ordinary, unit-tested functions. KFP copies each
function's source into the compiled pipeline, so every import happens inside the body, and
``install_kfp_package=False`` because the images already contain the KFP SDK. The images named
here are placeholders; each compile profile sets the real ones per task
(``PipelineTask.set_container_image``). Why this form runs both in the cluster and under
kfp.local: components/README.md, "How the components run in KFP".
"""

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from kfp.dsl.types.type_annotations import is_artifact_wrapped_in_Output

from mammo.config import PipelineParams
from mammo_components.spec import argument_descriptions, one_line, parse_docstring

#: Placeholder images, replaced by the compile profile (images.env).
TRAIN_IMAGE = "mammo-train"
EVAL_IMAGE = "mammo-eval"

#: The pipeline parameter ``store_uri`` (``mammo_pipelines.parameters``) and every step's input.
STORE_URI_HELP = "Root of splits/, runs/ and models/: s3://bucket[/prefix] or a local path."

#: What the step inputs and outputs that several steps share are, for the KFP UI: the pipeline
#: parameters' own descriptions, and the values the steps hand each other. An input or output
#: only one step has is described in that step function's own ``Args:`` section.
STEP_INPUTS = {
    **{name: info.description or "" for name, info in PipelineParams.model_fields.items() if name != "data"},
    "store_uri": STORE_URI_HELP,
    "dataset_uri": "The dataset the step reads: the pipeline's dataset_uri, or for DICOM input the PNG dataset the "
    "preprocessor wrote.",
    "split_uri": "The split builder's split folder (split.csv, split.json) in the store.",
    "run_id": "The run's id (a digest of data, split, parameters and code) and folder runs/<run_id>/.",
    "params": "The run's training values from the split builder (PipelineParams, JSON).",
    "processes": "torchrun processes in this pod, one per GPU (1: in the step's own process).",
    "code_version": "The images and code the run id includes.",
    "kfp_run_id": "KFP's id of this run, recorded for lineage (never part of the run id).",
    "nodes": "Nodes of the TrainJob.", "gpus_per_node": "GPUs per node of the TrainJob.",
    "image": "The training image the TrainJob runs.", "labels": "Labels of the TrainJob (Kueue's queue and priority).",
    "init": "The baseline's Model: the checkpoint gradual unfreezing starts from (URI and sha256 in its metadata).",
    "model": "The trainer's checkpoint of the epoch with the highest val image AUC, best_auc.pt (metadata: URI, "
    "sha256, val metrics, run id and folder).",
    "metrics": "The step's figures (KFP Metrics).",
    "dataset_fingerprint": "Fingerprint of the dataset the split was built from.",
    "fold": "This fold's index (0 to folds - 1): the fold of training patients it holds out.",
    "fold_models": "folds > 1: each fold's baseline and unfreeze best checkpoints (URI, sha256), in fold order; "
    "empty with folds 1.",
    "runtime": "How the network runs: eager (PyTorch) or onnx (ONNX Runtime on the CPU, from the production "
               "model's verified ONNX file: within 1e-4 of eager, several times faster on CPU nodes; README, "
               "Scoring on CPU nodes).",
}
StepFunction = TypeVar("StepFunction", bound=Callable[..., Any])


def described(func: StepFunction) -> StepFunction:
    """Write the description of every input and output into a step function's docstring (KFP
    puts it in the component's inputs and outputs): the function's own ``Args:`` line for a name
    only it has, else ``STEP_INPUTS``'s; an undescribed one fails at import."""
    signature = inspect.signature(func)
    inputs = [n for n, p in signature.parameters.items() if not is_artifact_wrapped_in_Output(p.annotation)]
    outputs = [n for n, p in signature.parameters.items() if is_artifact_wrapped_in_Output(p.annotation)]
    outputs += list(getattr(signature.return_annotation, "_fields", ()))  # a NamedTuple's output parameters
    text = inspect.cleandoc(func.__doc__ or "")
    own = argument_descriptions(parse_docstring(text))
    if own:
        text = text.split("\nArgs:", 1)[0].rstrip()
    descriptions = {**STEP_INPUTS, **own}
    missing = [name for name in inputs + outputs if not descriptions.get(name)]
    if missing:
        raise TypeError(f"{func.__name__}: no description in its Args: section or STEP_INPUTS for {', '.join(missing)}")

    def section(title: str, names: list[str]) -> str:
        lines = "".join(f"    {name}: {one_line(descriptions[name])}\n" for name in names)
        return f"\n\n{title}:\n{lines}" if names else ""

    # Inputs under Args, outputs under Returns: where KFP's docstring parser looks for each.
    func.__doc__ = text + section("Args", inputs) + section("Returns", outputs)
    return func
