"""How a component presents itself on the command line, and the list of components.

Each component folder's ``__init__.py`` declares a ``SPEC`` (``ComponentSpec``): its help and
the flags that mirror its ``entrypoint.run`` keyword arguments. ``mammo_components.COMPONENTS``
lists the folders; ``components()`` pairs the two for ``mammo component`` (``cli``). Adding a
component is therefore one folder (``__init__.py`` with ``SPEC``, ``entrypoint.py``,
``__main__.py``, ``README.md``; ``step.py`` when the pipeline runs it) plus its name in that list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import yaml

from mammo.errors import ConfigError


@dataclass(frozen=True)
class Flag:
    """One command-line flag, passed to ``entrypoint.run`` as ``dest``; required unless
    ``required`` is False (then the argument keeps ``entrypoint.run``'s default when left out)."""

    flag: str
    dest: str
    metavar: str
    help: str
    repeat: bool = False
    required: bool = True


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


def encode_value(value: Any) -> str:
    """A params value as ``--param key=VALUE`` text that ``mammo.config.parse_value`` (YAML)
    reads back as the same value: one-line YAML flow style (``1.0e-05``, not JSON's ``1e-05``,
    which YAML 1.1 reads as a string; strings that look like numbers quoted)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    return text.rstrip("\n").removesuffix("\n...")


def component_args(
    folder: str, *, uris: Mapping[str, str], run_id: str, params: Mapping[str, Any]
) -> list[str]:
    """``--flag=URI ... --run-id=ID --param=k=v ...``: the command line that runs component
    ``folder`` with these inputs (its flags from its ``SPEC``, values by destination name:
    ``dataset_uri``, ``split_uri``, ``run_uri``, ``init_uri``), for launchers that start it
    as a new process (torchrun on this node, a TrainJob on several)."""
    spec = import_module(f"mammo_components.{folder}").SPEC
    missing = [flag.flag for flag in spec.flags if flag.required and flag.dest not in uris]
    if missing:
        raise ConfigError(f"{folder}: no value for {', '.join(missing)}")
    args = [f"{flag.flag}={uris[flag.dest]}" for flag in spec.flags if flag.dest in uris]
    args.append(f"--run-id={run_id}")
    args.extend(f"--param={key}={encode_value(value)}" for key, value in sorted(params.items()))
    return args
