"""How a component presents itself on the command line, and the list of components.

Each component folder's ``__init__.py`` declares a ``SPEC`` (``ComponentSpec``): its help and
the flags that mirror its ``entrypoint.run`` keyword arguments. ``mammo_components.COMPONENTS``
lists the folders; ``components()`` pairs the two for ``mammo component`` (``cli``). Adding a
component is therefore one folder (``__init__.py`` with ``SPEC``, ``entrypoint.py``,
``__main__.py``, ``README.md``; ``step.py`` when the pipeline runs it) plus its name in that list.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Flag:
    """One required command-line flag, passed to ``entrypoint.run`` as ``dest``."""

    flag: str
    dest: str
    metavar: str
    help: str
    repeat: bool = False


@dataclass(frozen=True)
class ComponentSpec:
    """``help`` (one line in ``mammo component --help``), ``description`` and ``flags`` of
    ``mammo component <name>``. A component with flags of its own names its ``cli`` module
    instead (``main(argv) -> int``); ``mammo component <name> ...`` hands it the rest."""

    help: str
    description: str = ""
    flags: tuple[Flag, ...] = ()
    cli: str | None = None


def command_name(folder: str) -> str:
    """``mammo component <command>``: the folder name with dashes."""
    return folder.replace("_", "-")


@dataclass(frozen=True)
class Component:
    """A component folder (``mammo_components.<folder>``) and its spec."""

    folder: str
    spec: ComponentSpec

    @property
    def command(self) -> str:
        return command_name(self.folder)

    @property
    def entrypoint(self) -> str:
        return f"mammo_components.{self.folder}.entrypoint"


#: Flags several components share.
DATASET = Flag("--dataset", "dataset_uri", "URI", "Dataset folder (train.csv + PNGs): s3://bucket/datasets/NAME or a local path.")
SPLIT = Flag("--split", "split_uri", "URI", "Published split folder (the split builder's split_uri).")


def components() -> dict[str, Component]:
    """Every component of ``mammo_components.COMPONENTS`` by command name, in that order.
    Imports only the folders' ``__init__`` (no torch)."""
    from mammo_components import COMPONENTS

    found = (Component(folder, import_module(f"mammo_components.{folder}").SPEC) for folder in COMPONENTS)
    return {component.command: component for component in found}
