"""A component is one folder plus its name in ``mammo_components.COMPONENTS``: everything that
lists components (the command line, packaging) reads that list or finds the folders, and every
component folder has what the others have."""

from __future__ import annotations

import inspect
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
