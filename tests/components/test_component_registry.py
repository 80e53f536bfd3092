"""A component is one folder: its ``entrypoint.run`` (typed keyword arguments, a docstring with
an ``Args:`` section) is its one declaration. Everything that lists components (the command line,
packaging, the pipelines' wiring test) finds the folders; the command line's flags and each
README's Inputs table come from that declaration."""

from __future__ import annotations

import inspect
import re
from importlib import import_module
from pathlib import Path

import pytest

import mammo_components
from mammo.errors import ConfigError
from mammo_components.cli import build_parser
from mammo_components.readmes import main as readmes_main
from mammo_components.readmes import with_inputs_table
from component_support import packaged
from mammo_components.spec import components, inputs_table, read_component

ROOT = Path(mammo_components.__file__).resolve().parent
#: components/README.md, the overview of every component (beside the package, not in it).
OVERVIEW = ROOT.parent / "README.md"


def _choices() -> dict:
    return build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]


def test_the_components_are_exactly_the_folders_with_an_entrypoint() -> None:
    folders = sorted(p.parent.name for p in ROOT.glob("*/entrypoint.py"))
    assert [c.folder for c in components().values()] == folders
    assert list(_choices()) == [folder.replace("_", "-") for folder in folders]


def test_every_component_folder_is_complete() -> None:
    listed_in_readme = OVERVIEW.read_text()
    for component in components().values():
        path = ROOT / component.folder
        for name in ("README.md", "__init__.py", "entrypoint.py", "component.py", "step.py"):
            assert (path / name).is_file(), f"{component.folder}/{name} is missing"
        assert f"(mammo_components/{component.folder}/README.md)" in listed_in_readme, f"components/README.md does not link {component.folder}"
        assert component.help and component.help.endswith("."), component.folder


def test_the_declaration_is_the_entrypoint_s_real_signature() -> None:
    """Read from the source (no import), the same names, defaults and order as the imported ``run``."""
    for component in components().values():
        run = import_module(component.entrypoint).run
        params = inspect.signature(run).parameters
        assert [a.name for a in component.arguments] == list(params), component.folder
        for argument in component.arguments:
            assert argument.required == (params[argument.name].default is inspect.Parameter.empty)
            assert params[argument.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_the_flags_are_the_entrypoint_s_arguments() -> None:
    """Each argument the command line can carry is one flag, required when run() has no default,
    repeatable for a list; the others are the shared flags or the pipeline's only."""
    choices = _choices()
    for component in components().values():
        if component.cli is not None:
            continue
        actions = {a.dest: a for a in choices[component.command]._actions}
        for argument in component.flags:
            action = actions[argument.name]
            assert action.option_strings == [argument.flag]
            assert action.required == argument.required
            assert (action.__class__.__name__ == "_AppendAction") == argument.repeat
        own = {a.dest for a in choices[component.command]._actions} - {"help", "param_pairs", "params_json", "workdir", "run_id"}
        assert own == {a.name for a in component.flags}, component.folder


def test_packaging_finds_every_component_folder() -> None:
    found = packaged(ROOT.parent, ROOT.parent / "pyproject.toml")
    assert {f"mammo_components.{c.folder}" for c in components().values()} <= set(found)
    assert all(name == "mammo_components" or name.startswith("mammo_components.") for name in found)


def test_each_component_readme_s_inputs_table_is_its_declaration() -> None:
    """The Inputs table is what ``python -m mammo_components.readmes`` writes from ``run``;
    every flag a README names is one its command accepts."""
    assert readmes_main(["--check"]) == 0, "run: python -m mammo_components.readmes"
    choices = _choices()
    for component in components().values():
        text = component.readme.read_text()
        assert with_inputs_table(text, inputs_table(component), component.folder) == text
        parser = import_module(component.cli).build_parser() if component.cli else choices[component.command]
        accepted = {s for action in parser._actions for s in action.option_strings}
        flags = set(re.findall(r"`(--[a-z-]+)`", text.split("## Inputs", 1)[1].split("\n## ", 1)[0]))
        assert flags <= accepted, f"{component.folder}/README.md names flags the command does not take: {flags - accepted}"


def _signature_names(text: str) -> list[str]:
    """The parameter names of a ``run(*, a, b=None, ...)`` written in prose."""
    inner = text[text.index("(") + 1:text.rindex(")")]
    return [part.split("=")[0].strip() for part in inner.split(",") if part.strip() not in ("*", "")]


def test_the_overview_table_writes_each_real_signature() -> None:
    overview = OVERVIEW.read_text()
    for component in components().values():
        row = next(line for line in overview.splitlines()
                   if line.startswith("| [") and f"(mammo_components/{component.folder}/README.md)" in line)
        written = re.search(r"`(run\(.*?\))`", row)
        assert written and _signature_names(written.group(1)) == [a.name for a in component.arguments], component.folder


@pytest.mark.parametrize(("source", "message"), [
    ("def other(*, a: str) -> dict:\n    '''X.'''\n", "no function run()"),
    ("def run(a: str) -> dict:\n    '''X.\n\n    Args:\n        a: An input.\n    '''\n", "keyword-only"),
    ("def run(*, a: str, b: int = 1) -> dict:\n    '''X.\n\n    Args:\n        a: An input.\n    '''\n",
     "argument b has no line in its Args: section"),
])
def test_a_declaration_that_says_too_little_is_one_line(tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "entrypoint.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match=message):
        read_component("toy", path)
