"""What every command-line entry point shares: the log format, the error guard, the config
flags and the way a package adds its sub-commands to ``mammo``.

Used by ``mammo`` and by the command families that live in the upper packages (components,
pipelines), so that they need nothing from ``mammo.cli``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module

from mammo.errors import MammoError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def worker_rank() -> int | None:
    """This process's rank when it is one of several (torchrun sets RANK and WORLD_SIZE)."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    except (KeyError, ValueError):
        return None


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr with time, level and logger name. In a
    distributed job only rank 0 reports progress; the others log warnings and errors, marked
    with their rank."""
    rank = worker_rank()
    level = logging.DEBUG if verbose else logging.INFO
    fmt = LOG_FORMAT
    if rank is not None:
        fmt = f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"
        if rank != 0 and not verbose:
            level = logging.WARNING
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S")


class Terminated(BaseException):
    """SIGTERM arrived (a pod being stopped, ``kill``): unwind like Ctrl-C, so that files being
    written are removed whole and the process says why it stopped."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the command runs, SIGTERM raises ``Terminated`` - only in the main thread and only
    where nobody (a launcher, a test harness) installed a handler of their own."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_guarded(call: Callable[[], int | None]) -> int:
    """Run a command; a user mistake (``MammoError``) becomes one line on stderr and its exit
    code, Ctrl-C exit 130, SIGTERM exit 143 with a line. Shared by every ``mammo`` command family."""
    rank = worker_rank()
    where = "" if rank is None else f"rank {rank}: "
    try:
        with _sigterm_unwinds():
            return int(call() or 0)
    except MammoError as err:
        print(f"mammo: error: {where}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"mammo: {where}interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"mammo: {where}terminated (SIGTERM); files being written were discarded", file=sys.stderr)
        return 143


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed ``argv``, or the exit code after argparse printed ``--help`` (0) or a usage
    error (2): what every ``main(argv) -> int`` front-end returns then."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` (defaults < file < --set)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see README: configuration).")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config value by dotted key, e.g. --set loss.name=focal (repeatable).",
    )


def add_command_family(subparsers: argparse._SubParsersAction, name: str, text: str, module: str) -> None:
    """``mammo NAME ...`` hands the rest of the command line to ``module.main(argv)``, a
    family with its own parser, imported only when used."""
    family = subparsers.add_parser(name, help=text, add_help=False, prefix_chars="\0")
    family.add_argument("rest", nargs=argparse.REMAINDER)

    def handler(args: argparse.Namespace) -> None:
        code = import_module(module).main(args.rest)
        if code:
            raise SystemExit(code)

    family.set_defaults(handler=handler)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (child processes inherit them), restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
