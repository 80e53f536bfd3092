"""``mammo component <name> ...``: run one component from the command line.

The same entrypoint functions the containers run, so a step that failed in the cluster can be
rerun on a laptop with the same URIs. Each component's flags mirror its entrypoint's keyword
arguments; params come from ``--params-json FILE`` and ``--param key=value`` (later wins).
The result is printed as JSON. Torch is imported only by the component that runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from mammo.config import PipelineParams, parse_value, split_pair
from mammo.cli import run_guarded
from mammo.errors import ConfigError


@dataclass(frozen=True)
class Flag:
    flag: str
    dest: str
    metavar: str
    help: str
    repeat: bool = False


@dataclass(frozen=True)
class Component:
    module: str
    help: str
    description: str
    flags: tuple[Flag, ...]


DATASET = Flag("--dataset", "dataset_uri", "URI", "Dataset folder (train.csv + PNGs): s3://bucket/datasets/NAME or a local path.")
SPLIT = Flag("--split", "split_uri", "URI", "Published split folder (the split builder's split_uri).")

COMPONENTS: dict[str, Component] = {
    "split-builder": Component(
        "mammo_components.split_builder.entrypoint",
        "Build (or reuse) the fixed patient-level split of a dataset.",
        "Reads <dataset>/train.csv, validates it and writes split.csv/split.json to "
        "<store>/splits/<dataset-fingerprint>/; a dataset split before is reused, a grown one "
        "keeps every earlier patient in its split.",
        (DATASET, Flag("--store", "store_uri", "URI", "Storage root, e.g. s3://mammo.")),
    ),
    "baseline-trainer": Component(
        "mammo_components.baseline_trainer.entrypoint",
        "Baseline training; checkpoints go to --run as they are saved.",
        "Warm-up, then full data, early stopping. Restarted with the same --run it resumes "
        "from <run>/last.pt in storage.",
        (DATASET, SPLIT, Flag("--run", "run_uri", "URI", "Output folder: <store>/runs/<run-id>/baseline_trainer.")),
    ),
    "unfreeze-trainer": Component(
        "mammo_components.unfreeze_trainer.entrypoint",
        "Gradual unfreezing from a baseline checkpoint.",
        "Starts from --init (verified by sha256); checkpoints go to --run as they are saved; "
        "restarted with the same --run it resumes from <run>/last.pt in storage.",
        (
            DATASET,
            SPLIT,
            Flag("--init", "init_uri", "URI", "Starting checkpoint, e.g. the baseline's best_uri."),
            Flag("--run", "run_uri", "URI", "Output folder: <store>/runs/<run-id>/unfreeze_trainer."),
        ),
    ),
    "evaluator": Component(
        "mammo_components.evaluator.entrypoint",
        "Evaluate checkpoints on val and test; publish metrics, predictions, plots, report.",
        "The threshold is chosen on val and applied unchanged to test; with several "
        "checkpoints the best by the rank metric on val is named.",
        (
            DATASET,
            SPLIT,
            Flag("--checkpoint", "checkpoint_uris", "URI", "Checkpoint to evaluate (repeatable).", repeat=True),
            Flag("--out", "out_uri", "URI", "Output folder: <store>/runs/<run-id>/evaluator."),
        ),
    ),
}


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
    for name, component in COMPONENTS.items():
        p = sub.add_parser(name, help=component.help, description=component.description, epilog=params_help)
        for f in component.flags:
            p.add_argument(
                f.flag, dest=f.dest, metavar=f.metavar, required=True, help=f.help,
                action="append" if f.repeat else "store",
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
    # The promoter has flags of its own (mammo_components.promoter.cli).
    promoter = sub.add_parser("promoter", help="Promote an evaluator run's best candidate to production.",
                              add_help=False, prefix_chars="\0")
    promoter.add_argument("rest", nargs=argparse.REMAINDER)
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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    if args.component == "promoter":
        from mammo_components.promoter.cli import main as promote

        return promote(args.rest)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    component = COMPONENTS[args.component]
    kwargs = {f.dest: getattr(args, f.dest) for f in component.flags}

    def call() -> None:
        params = load_params(args.params_json, args.param_pairs)
        entrypoint = import_module(component.module)
        result = entrypoint.run(**kwargs, params=params, workdir=args.workdir, run_id=args.run_id)
        print(json.dumps(result, indent=2))

    return run_guarded(call)


if __name__ == "__main__":
    sys.exit(main())
