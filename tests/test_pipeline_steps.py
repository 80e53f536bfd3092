"""Each KFP step of ``mammo_pipelines.steps`` is import, call, return: it hands all of its
inputs and outputs to its component's ``step.run_step`` and returns what that returns. The
logic is tested in ``tests/components/test_component_steps.py``; here only the wiring, without
KFP running anything."""

from __future__ import annotations

import ast
import inspect
import textwrap
from importlib import import_module

import pytest

from mammo.config import PipelineParams
from mammo_pipelines import steps

STEPS = ["split_builder", "baseline_trainer", "unfreeze_trainer", "evaluator", "promoter"]


def _body_import(func) -> str:
    """The module a step body imports ``run_step`` from."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    [module] = [
        node.module for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and any(alias.name == "run_step" for alias in node.names)
    ]
    return module


@pytest.mark.parametrize("name", STEPS)
def test_a_step_passes_everything_to_run_step_and_returns_its_answer(name: str, monkeypatch) -> None:
    func = getattr(steps, name).python_func
    module = import_module(_body_import(func))
    received = {}

    def fake_run_step(**kwargs):
        received.update(kwargs)
        return "answer"

    monkeypatch.setattr(module, "run_step", fake_run_step)
    arguments = {param: object() for param in inspect.signature(func).parameters}
    returned = func(**arguments)
    assert received == arguments
    # Steps with outputs of their own (the split builder's parameters, the evaluator's verdict)
    # return run_step's answer; the others fill their artifacts only.
    has_outputs = inspect.signature(func).return_annotation is not inspect.Signature.empty
    assert returned == ("answer" if has_outputs else None)


@pytest.mark.parametrize("name", STEPS)
def test_run_step_takes_the_step_signature(name: str) -> None:
    func = getattr(steps, name).python_func
    run_step = import_module(_body_import(func)).run_step
    step_params = set(inspect.signature(func).parameters)
    params = inspect.signature(run_step).parameters
    named = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # The split builder: its own inputs by name, the PipelineParams fields as **values.
        assert named <= step_params and step_params - named <= set(PipelineParams.model_fields)
    else:
        assert named == step_params
