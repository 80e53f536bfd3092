"""Each KFP step (every ``mammo_components.<folder>.component``) is import, call, return: it hands each of its inputs and outputs by name to its component's step function and
returns what that returns. The logic is tested in ``tests/components/test_component_steps.py``;
here only the wiring, without KFP running anything."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import textwrap
from importlib import import_module
from importlib.util import find_spec

import pytest
from kfp.dsl.python_component import PythonComponent

import mammo_components
from mammo.config import DATASET_FIELDS, PipelineParams


def _lightweight_components() -> dict:
    """Every lightweight component of every component folder's ``component.py``, by name."""
    found = {}
    for folder in pkgutil.iter_modules(mammo_components.__path__):
        if folder.ispkg and find_spec(f"mammo_components.{folder.name}.component") is not None:
            module = import_module(f"mammo_components.{folder.name}.component")
            found.update({name: obj for name, obj in vars(module).items() if isinstance(obj, PythonComponent)})
    return found


#: Every lightweight component the pipelines can call, by name.
COMPONENTS = _lightweight_components()
#: What the TrainJob launchers add: which trainer the job runs.
FIXED = {"baseline_trainjob": {"component": "baseline_trainer"}, "unfreeze_trainjob": {"component": "unfreeze_trainer"}}


def _body_import(func) -> tuple[str, str]:
    """(module, function) that a step body imports and calls."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    [(module, name)] = [
        (node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    ]
    return module, name


def _calls_by_keyword_only(func) -> bool:
    """The body's one call passes keywords only, each a plain name or a constant (no **args)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    [call] = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute)
              and getattr(node.func, "id", "") != "NamedTuple"]
    return not call.args and all(k.arg is not None and isinstance(k.value, (ast.Name, ast.Constant)) for k in call.keywords)


def test_every_lightweight_component_of_the_pipelines_is_checked() -> None:
    """Found, not listed: a new step is covered without a line here."""
    assert {"split_builder", "promoter", "scorer"} <= set(COMPONENTS) and len(COMPONENTS) >= 12


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_a_step_passes_everything_by_name_and_returns_its_answer(name: str, monkeypatch) -> None:
    func = COMPONENTS[name].python_func
    module_name, function = _body_import(func)
    module = import_module(module_name)
    received = {}

    def fake(**kwargs):
        received.update(kwargs)
        return "answer"

    monkeypatch.setattr(module, function, fake)
    arguments = {param: object() for param in inspect.signature(func).parameters}
    returned = func(**arguments)
    assert received == {**FIXED.get(name, {}), **arguments}
    assert _calls_by_keyword_only(func)
    # Steps with outputs of their own (the split builder's parameters, the evaluator's verdict)
    # return the answer; the others fill their artifacts only.
    has_outputs = inspect.signature(func).return_annotation is not inspect.Signature.empty
    assert returned == ("answer" if has_outputs else None)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_the_step_function_takes_the_step_signature(name: str) -> None:
    func = COMPONENTS[name].python_func
    module_name, function = _body_import(func)
    target = getattr(import_module(module_name), function)
    step_params = set(inspect.signature(func).parameters) | set(FIXED.get(name, {}))
    params = inspect.signature(target).parameters
    named = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    required = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # The split builder: its own inputs by name, the PipelineParams fields as **values.
        assert required <= step_params and step_params - named <= set(PipelineParams.model_fields)
    else:
        assert required <= step_params <= named


def test_the_split_builder_takes_every_setting() -> None:
    """Adding a setting is its ``PipelineParams`` field plus its line in the split builder's
    signature and call (KFP copies a lightweight component's source into the pipeline, so that
    signature cannot be generated, and kfp.local 2.17 passes a dict of pipeline parameters with
    every value turned into a string, and fails on a list):
    this names any such line a new field lacks. The pipeline hands the split builder every
    parameter itself (``pipeline._wire``)."""
    taken = set(inspect.signature(COMPONENTS["split_builder"].python_func).parameters)
    settings = set(PipelineParams.model_fields) - {"data", *DATASET_FIELDS}  # data is dataset_uri
    assert settings - taken == set(), "add these to split_builder/component.py (signature and call)"
