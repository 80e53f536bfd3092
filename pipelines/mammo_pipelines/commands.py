"""``mammo run`` and the ``mammo pipeline ...`` family, registered with ``mammo`` through the
``mammo.commands`` entry point (see pyproject.toml). Nothing heavy is imported until a command
runs: ``mammo`` loads this module on every start."""

from __future__ import annotations

import argparse

from mammo.console import add_command_family, add_config_args


def _cmd_run(args: argparse.Namespace) -> None:
    from mammo_pipelines.local_run import run_local

    run_local(
        workdir=args.workdir,
        data=args.data,
        preset=args.preset,
        config_file=args.config,
        sets=args.sets,
        store=args.store,
        verbose=args.verbose,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="The whole job on this machine: the Kubeflow pipeline (split -> baseline -> "
        "unfreeze -> evaluate -> promote) through kfp.local, on synthetic data or --data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--data", metavar="DIR", help="Real RSNA-layout dataset (default: the synthetic demo data).")
    run.add_argument("--workdir", default=".mammo", metavar="DIR",
                     help="Local store for data, splits, runs and models.")
    run.add_argument("--store", metavar="URI",
                     help="Store instead of --workdir, e.g. s3://mammo (default: $MAMMO_STORE_URI; "
                     "s3://mammo when MINIO_ENDPOINT is set).")
    run.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="Show every step's full log (also: mammo -v run).")
    from mammo_pipelines.parameters import preset_names

    run.add_argument("--preset", choices=preset_names(), default="demo",
                     help="demo: small CPU-friendly settings and data; kind: the kind cluster's; full: the "
                     "research defaults (pipelines/mammo_pipelines/presets/).")
    add_config_args(run)
    run.set_defaults(handler=_cmd_run)
    add_command_family(
        subparsers, "pipeline", "Compile, submit and schedule the Kubeflow pipeline.", "mammo_pipelines.cli"
    )
