"""The ``mammo component ...`` command family, registered with ``mammo`` through the
``mammo.commands`` entry point (see pyproject.toml); the family itself lives in ``cli``."""

from __future__ import annotations

import argparse

from mammo.console import add_command_family


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command_family(
        subparsers, "component", "Run one pipeline component from the command line.", "mammo_components.cli"
    )
