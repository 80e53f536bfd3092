"""``mammo component preprocessor``: the preprocessor from the command line, with the options of
``mammo data dicom`` plus ``--shard K --shards N`` (convert one share) and ``--merge-only``."""

from __future__ import annotations

import argparse
import json

from mammo.console import parse_command_line, run_guarded, setup_logging
from mammo.dicom.options import add_arguments, options_from_args
from mammo_components.preprocessor.entrypoint import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mammo component preprocessor",
        description="Convert the DICOM files below --dataset to the PNG dataset at --out (train.csv, "
        "{patient_id}/{image_id}.png, preprocess.json, manifest.json last); only new or changed files "
        "are converted. With --shard K --shards N only a share is converted (the pipeline's parallel "
        "pods); --merge-only then writes table and manifest.",
    )
    p.add_argument("--dataset", required=True, metavar="URI", help="Folder or prefix of the DICOM files.")
    p.add_argument("--out", required=True, metavar="URI", help="Folder or prefix of the PNG dataset.")
    p.add_argument("--csv", metavar="URI", help="Table of the images (default: <dataset>/train.csv when present).")
    p.add_argument("--shard", type=int, metavar="K", help="Convert only shard K (0-based) of --shards.")
    p.add_argument("--shards", type=int, default=1, metavar="N", help="Number of shards (default: %(default)s).")
    p.add_argument("--merge-only", action="store_true", help="Only write table, record and manifest.")
    p.add_argument("--workers", type=int, metavar="N", help="Converting processes (default: the CPUs this pod may use).")
    p.add_argument("--workdir", metavar="DIR", help="Scratch folder (default: $MAMMO_CACHE_DIR or the system's temp).")
    p.add_argument("--run-id", metavar="ID", help="Run id for telemetry.")
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging()

    def call() -> None:
        result = run(
            dataset_uri=args.dataset, out_uri=args.out, options=options_from_args(args), csv_uri=args.csv,
            shard=args.shard, shards=args.shards, merge_only=args.merge_only, workers=args.workers,
            workdir=args.workdir, run_id=args.run_id, pseudonym_key_file=args.pseudonym_key_file,
            identifier_map=args.identifier_map,
        )
        print(json.dumps(result, indent=2, default=str))

    return run_guarded(call)
