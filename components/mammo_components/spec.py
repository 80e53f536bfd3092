"""The components, found, and what ``mammo component`` knows of each: read from its folder.

A component is a subfolder of ``mammo_components`` with an ``entrypoint.py`` whose ``run`` is
its one declaration: keyword-only arguments with types and defaults, and a docstring whose first
line is the command's help, whose next paragraphs its description and whose ``Args:`` section
(Google style) describes each argument. ``mammo component <name>`` derives its flags from it:
``<x>_uri`` is ``--<x>``, ``<x>_uris`` a repeatable ``--<x>``, any other name ``--<name>`` with
dashes; an argument without a default is a required flag. ``params``, ``workdir`` and ``run_id``
are the flags every component shares (``SHARED``); an argument whose type a command line cannot
carry (a dict, or a list of them) is the pipeline's only. A folder with a ``cli.py`` parses its
own flags instead (``main(argv) -> int``). The signature is read from the source (``ast``), so
listing the components imports none of them (no pandas, no torch for ``--help``).
"""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import docstring_parser
import yaml

from mammo.errors import ConfigError

#: Arguments every component's command line shares (``mammo_components.cli``).
SHARED = ("params", "workdir", "run_id")
#: The function of ``entrypoint.py`` that is the component.
ENTRYPOINT_FUNCTION = "run"


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a component's ``run`` and the flag it is on the command line."""

    name: str
    annotation: str
    #: Its default as written in the source; None when there is none (a required argument).
    default: str | None
    help: str

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def repeat(self) -> bool:
        return self.annotation.replace(" ", "").startswith("list[")

    @property
    def on_command_line(self) -> bool:
        """False for the shared ones and for values only the pipeline passes (dicts)."""
        return self.name not in SHARED and "dict" not in self.annotation

    @property
    def flag(self) -> str:
        for suffix in ("_uris", "_uri"):
            if self.name.endswith(suffix):
                return "--" + self.name.removesuffix(suffix).replace("_", "-")
        return "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        return "URI" if self.name.endswith(("_uri", "_uris")) else self.name.upper()


def command_name(folder: str) -> str:
    """``mammo component <command>``: the folder name with dashes."""
    return folder.replace("_", "-")


@dataclass(frozen=True)
class Component:
    """A component folder (``mammo_components.<folder>``) as its ``entrypoint.run`` declares it."""

    folder: str
    help: str
    description: str
    arguments: tuple[Argument, ...]
    #: Its ``README.md``, whose Inputs table is ``inputs_table`` of this.
    readme: Path
    #: The module that parses the component's own flags, or None (flags from ``arguments``).
    cli: str | None = None

    @property
    def command(self) -> str:
        return command_name(self.folder)

    @property
    def entrypoint(self) -> str:
        return f"mammo_components.{self.folder}.entrypoint"

    @property
    def flags(self) -> tuple[Argument, ...]:
        """The arguments the command line sets, each by its own flag."""
        return tuple(argument for argument in self.arguments if argument.on_command_line)


def _default_text(node: ast.expr | None) -> str | None:
    return None if node is None else ast.unparse(node)


def one_line(text: str | None) -> str:
    """``text`` with every run of whitespace (a docstring's line breaks, indents) one space."""
    return " ".join((text or "").split())


def argument_descriptions(doc: docstring_parser.Docstring) -> dict[str, str]:
    """Each argument of a parsed docstring's ``Args:`` section and its description, one line each."""
    return {param.arg_name: one_line(param.description) for param in doc.params}


def parse_docstring(text: str) -> docstring_parser.Docstring:
    """A Google-style docstring, as KFP reads a component's."""
    return docstring_parser.parse(text, style=docstring_parser.DocstringStyle.GOOGLE)


def read_component(folder: str, entrypoint: Path) -> Component:
    """The component ``entrypoint.py`` declares: ``run``'s keyword-only arguments, their
    types and defaults as written, and its docstring. A missing ``run``, an argument that is not
    keyword-only or one its ``Args:`` section leaves undescribed is a ``ConfigError``."""
    tree = ast.parse(entrypoint.read_text(encoding="utf-8"), filename=str(entrypoint))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == ENTRYPOINT_FUNCTION]
    if not found:
        raise ConfigError(f"{entrypoint}: no function {ENTRYPOINT_FUNCTION}()")
    func = found[0].args
    if func.posonlyargs or func.args or func.vararg or func.kwarg:
        raise ConfigError(f"{entrypoint}: {ENTRYPOINT_FUNCTION}() takes keyword-only arguments (def run(*, ...))")
    doc = parse_docstring(ast.get_docstring(found[0]) or "")
    described = argument_descriptions(doc)
    arguments = []
    for arg, default in zip(func.kwonlyargs, func.kw_defaults):
        if not described.get(arg.arg):
            raise ConfigError(f"{entrypoint}: {ENTRYPOINT_FUNCTION}() argument {arg.arg} has no line in its Args: section")
        annotation = ast.unparse(arg.annotation) if arg.annotation is not None else "Any"
        arguments.append(Argument(arg.arg, annotation, _default_text(default), described[arg.arg]))
    cli = f"mammo_components.{folder}.cli" if (entrypoint.parent / "cli.py").is_file() else None
    return Component(
        folder=folder,
        help=one_line(doc.short_description),
        description=one_line(doc.long_description),
        arguments=tuple(arguments),
        readme=entrypoint.parent / "README.md",
        cli=cli,
    )


def component_folders() -> dict[str, Path]:
    """Every subfolder of ``mammo_components`` (on each of its paths) with an ``entrypoint.py``,
    by name, sorted: the components."""
    import mammo_components

    found = {}
    for module in pkgutil.iter_modules(mammo_components.__path__):
        if not module.ispkg:
            continue
        spec = find_spec(f"mammo_components.{module.name}.entrypoint")
        if spec is not None and spec.origin is not None:
            found[module.name] = Path(spec.origin)
    return dict(sorted(found.items()))


@cache
def _components(folders: tuple[tuple[str, Path], ...]) -> dict[str, Component]:
    return {command_name(folder): read_component(folder, path) for folder, path in folders}


def components() -> dict[str, Component]:
    """Every component by command name, in name order; imports none of them."""
    return _components(tuple(component_folders().items()))


def how_set(component: Component, argument: Argument) -> str:
    """How ``argument`` is given on ``mammo component``: its flag and whether it repeats or may
    be left out; nothing for a component with a command line of its own (its text names them)."""
    if component.cli is not None:
        return ""
    if argument.name == "params":
        return " (`--param`, `--params-json`)"
    if argument.name in SHARED:
        return f" (`{argument.flag}`)"
    if not argument.on_command_line:
        return " (pipeline only)"
    notes = [f"`{argument.flag}`", *(["repeatable"] if argument.repeat else []),
             *([] if argument.required else ["optional"])]
    return f" ({', '.join(notes)})"


def inputs_table(component: Component) -> str:
    """The ``## Inputs`` table of a component's README, from its ``run``: one row per argument."""
    rows = [f"| `{a.name}`{how_set(component, a)} | {a.help} |" for a in component.arguments]
    return "\n".join(["| Argument | Meaning |", "|---|---|", *rows])


def encode_value(value: Any) -> str:
    """A params value as ``--param key=VALUE`` text that ``mammo.config_files.parse_value`` (YAML)
    reads back as the same value: one-line YAML flow style (``1.0e-05``, not JSON's ``1e-05``,
    which YAML 1.1 reads as a string; strings that look like numbers quoted)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    return text.rstrip("\n").removesuffix("\n...")


def component_args(
    folder: str, *, uris: Mapping[str, str], run_id: str, params: Mapping[str, Any]
) -> list[str]:
    """``--flag=URI ... --run-id=ID --param=k=v ...``: the command line that runs component
    ``folder`` with these inputs (values by argument name: ``dataset_uri``, ``split_uri``,
    ``out_uri``, ``init_uri``), for launchers that start it as a new process (torchrun on this
    node, a TrainJob on several)."""
    component = components()[command_name(folder)]
    missing = [a.flag for a in component.flags if a.required and a.name not in uris]
    if missing:
        raise ConfigError(f"{folder}: no value for {', '.join(missing)}")
    args = [f"{a.flag}={uris[a.name]}" for a in component.flags if a.name in uris]
    args.append(f"--run-id={run_id}")
    args.extend(f"--param={key}={encode_value(value)}" for key, value in sorted(params.items()))
    return args
