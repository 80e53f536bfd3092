"""``mammo component <name> ...``: run one component from the command line.

The same entrypoint functions the containers run, so a step that failed in the cluster can be
rerun on a laptop with the same URIs. The components and their flags are found in the component
folders (``mammo_components.spec``: each ``entrypoint.run`` declares its arguments); params come
from ``--params-json FILE`` and ``--param key=value`` (later wins). The result is printed as
JSON. Torch is imported only by the component that runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

from mammo.config import PipelineParams
from mammo.config_files import parse_value, split_pair
from mammo.console import parse_command_line, run_guarded, setup_logging
from mammo.errors import ConfigError
from mammo_components.spec import command_name, components


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo component",
        description="Run one pipeline component: every input is read from, and every output "
        "written to, object storage (s3://bucket/... with MINIO_* in the environment) or a "
        "local path. Prints the result as JSON.",
    )
    sub = parser.add_subparsers(dest="component", metavar="COMPONENT", required=True)
    params_help = (
        "params (mammo.config.PipelineParams; unset ones keep the research defaults): "
        + ", ".join(name for name in PipelineParams.model_fields if name != "data")
        + ". Environment: MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_SECURE, "
        "MINIO_REGION (s3:// URIs), MAMMO_PUSHGATEWAY_URL (telemetry), MAMMO_CACHE_DIR."
    )
    for name, component in components().items():
        if component.cli is not None:  # flags of its own: its cli module parses the rest
            own = sub.add_parser(name, help=component.help, add_help=False, prefix_chars="\0")
            own.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        p = sub.add_parser(name, help=component.help, description=f"{component.help} {component.description}".strip(),
                           epilog=params_help)
        for argument in component.flags:
            default = "" if argument.required else " (optional)" if argument.default == "None" else \
                f" (default: {argument.default})"
            p.add_argument(
                argument.flag, dest=argument.name, metavar=argument.metavar, required=argument.required,
                help=(argument.help + default).replace("%", "%%"), action="append" if argument.repeat else "store",
                default=argparse.SUPPRESS,  # left out: run()'s own default
            )
        p.add_argument(
            "--param", dest="param_pairs", action="append", default=[], metavar="KEY=VALUE",
            help="A PipelineParams value, e.g. --param backbone=resnet18 --param "
            "baseline_set='[early_stopping.patience=3]' (repeatable; YAML values).",
        )
        p.add_argument("--params-json", metavar="FILE", help="PipelineParams as a JSON object; --param wins.")
        p.add_argument("--workdir", metavar="DIR",
                       help="Local scratch and cache (default: $MAMMO_CACHE_DIR or ~/.cache/mammo).")
        p.add_argument("--run-id", metavar="ID",
                       help="Telemetry label; default: <run-id> of a .../runs/<run-id>/... output URI.")
    return parser


def load_params(params_json: str | None, pairs: list[str]) -> dict[str, Any]:
    """``--params-json`` overlaid with ``--param`` pairs; malformed input is a ``ConfigError``."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            loaded = json.loads(Path(params_json).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--params-json {params_json}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--params-json {params_json}: not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--params-json {params_json}: expected a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, raw = split_pair(pair, "--param", "backbone=resnet18")
        params[key] = parse_value(raw)
    return params


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    component = components()[args.component]
    if component.cli is not None:
        return import_module(component.cli).main(args.rest)
    setup_logging()
    kwargs = {a.name: getattr(args, a.name) for a in component.flags if hasattr(args, a.name)}

    def call() -> None:
        params = load_params(args.params_json, args.param_pairs)
        entrypoint = import_module(component.entrypoint)
        result = entrypoint.run(**kwargs, params=params, workdir=args.workdir, run_id=args.run_id)
        print(json.dumps(result, indent=2))

    return run_guarded(call)


def run_module(package: str) -> int:
    """``python -m mammo_components.<folder> ARGS`` (the folder's ``__main__``): the same as
    ``mammo component <folder with dashes> ARGS``."""
    return main([command_name(package.rsplit(".", 1)[-1]), *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
