"""A component is one folder plus its name in ``mammo_components.COMPONENTS``: everything that
lists components (the command line, packaging) reads that list or finds the folders, and every
component folder has what the others have."""

from __future__ import annotations

import inspect
import re
from importlib import import_module
from pathlib import Path

import mammo_components
from mammo_components import COMPONENTS
from mammo_components.cli import build_parser
from mammo_components.spec import ComponentSpec, components

ROOT = Path(mammo_components.__file__).resolve().parent


def test_the_list_names_exactly_the_folders_with_an_entrypoint() -> None:
    folders = {p.parent.name for p in ROOT.glob("*/entrypoint.py")}
    assert set(COMPONENTS) == folders
    assert len(COMPONENTS) == len(set(COMPONENTS))


def test_every_component_folder_is_complete() -> None:
    listed_in_readme = (ROOT / "README.md").read_text()
    for folder in COMPONENTS:
        path = ROOT / folder
        for name in ("README.md", "__init__.py", "__main__.py", "entrypoint.py", "step.py"):
            assert (path / name).is_file(), f"{folder}/{name} is missing"
        assert f"({folder}/README.md)" in listed_in_readme, f"components/README.md does not link {folder}"
        assert isinstance(import_module(f"mammo_components.{folder}").SPEC, ComponentSpec)
        assert callable(import_module(f"mammo_components.{folder}.entrypoint").run)
        assert "run_module(__package__)" in (path / "__main__.py").read_text()


def test_flags_mirror_the_entrypoint_arguments() -> None:
    for component in components().values():
        if component.spec.cli is not None:
            continue
        run = import_module(component.entrypoint).run
        accepted = set(inspect.signature(run).parameters)
        flags = {f.dest for f in component.spec.flags}
        assert flags <= accepted, component.folder
        required = {n for n, p in inspect.signature(run).parameters.items() if p.default is inspect.Parameter.empty}
        assert required - {"params"} <= flags, component.folder


def test_the_command_line_offers_every_component() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == [folder.replace("_", "-") for folder in COMPONENTS]


def test_packaging_finds_every_component_folder() -> None:
    from mammo_components import setup as packaging

    assert set(COMPONENTS) <= set(packaging.SUBPACKAGES)
    assert not any("egg-info" in name or name.startswith("build") for name in packaging.SUBPACKAGES)


def _signature_names(text: str) -> list[str]:
    """The parameter names of a ``run(*, a, b=None, ...)`` written in prose."""
    inner = text[text.index("(") + 1:text.rindex(")")]
    return [part.split("=")[0].strip() for part in inner.split(",") if part.strip() not in ("*", "")]


def _inputs_table(readme: str) -> list[str]:
    """The first cells of the rows of a README's ``## Inputs`` table."""
    section = re.search(r"^## Inputs\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, "no '## Inputs' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("| ") and "---" not in line]
    return [row.split("|")[1] for row in rows[1:]]  # past the header row


def test_each_component_readme_lists_exactly_the_entrypoint_s_inputs_and_real_flags() -> None:
    """The Inputs table of every component README names each argument of ``entrypoint.run``
    once and nothing else, and every flag it names is one ``mammo component NAME`` accepts; the
    signature in components/README.md's table is the real one."""
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    overview = (ROOT / "README.md").read_text()
    for folder in COMPONENTS:
        params = list(inspect.signature(import_module(f"mammo_components.{folder}.entrypoint").run).parameters)
        cells = _inputs_table((ROOT / folder / "README.md").read_text())
        named = [name for cell in cells for name in re.findall(r"`([a-z][a-z0-9_]*)`", cell)]
        assert sorted(named) == sorted(params), f"{folder}/README.md Inputs: {named} vs run{tuple(params)}"
        flags = {flag for cell in cells for flag in re.findall(r"`(--[a-z-]+)`", cell)}
        spec = import_module(f"mammo_components.{folder}").SPEC
        parser = import_module(spec.cli).build_parser() if spec.cli else choices[folder.replace("_", "-")]
        accepted = {s for action in parser._actions for s in action.option_strings}
        assert flags <= accepted, f"{folder}/README.md names flags the command does not take: {flags - accepted}"
        row = next(line for line in overview.splitlines() if line.startswith(f"| [") and f"({folder}/README.md)" in line)
        written = re.search(r"`(run\(.*?\))`", row)
        assert written and _signature_names(written.group(1)) == params, f"components/README.md row of {folder}"
