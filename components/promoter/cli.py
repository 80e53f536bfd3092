"""``mammo component promoter``: promote the best candidate of an evaluator run by hand.

Reads the evaluator's published ``result.json`` (best checkpoint URI, its sha256, metrics) from
``--evaluation`` and applies the same rule as the pipeline's promoter step. The result is
printed as JSON; ``promoted`` says whether production changed.
"""

from __future__ import annotations

import argparse
import json
import logging

from mammo import storage
from mammo.cli import run_guarded
from mammo_components.promoter.entrypoint import run

RESULT_NAME = "result.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mammo component promoter",
        description="Replace <store>/models/<name>/production/ with the best candidate of an "
        "evaluator run when it beats the production model on --metric by more than --margin "
        "(or nothing is in production yet).",
    )
    p.add_argument("--evaluation", required=True, metavar="URI",
                   help="The evaluator's output folder: <store>/runs/<run-id>/evaluator.")
    p.add_argument("--store", required=True, metavar="URI", help="Storage root, e.g. s3://mammo.")
    p.add_argument("--model-name", default="mammo", metavar="NAME", help="models/<name>/ (default: %(default)s).")
    p.add_argument("--metric", default="test.breast.auc", help="<split>.<level>.<metric> (default: %(default)s).")
    p.add_argument("--margin", type=float, default=0.005, help="Required improvement (default: %(default)s).")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def call() -> None:
        manifest = storage.read_manifest(args.evaluation)
        if RESULT_NAME not in manifest.objects:
            raise storage.ArtifactNotFoundError(
                f"artifact not found: {storage.join(args.evaluation, RESULT_NAME)} (not an evaluator output folder?)"
            )
        evaluation = storage.get_json(storage.join(args.evaluation, RESULT_NAME), sha256=manifest.objects[RESULT_NAME].sha256)
        result = run(
            candidate_uri=evaluation["best_uri"], candidate_sha256=evaluation["best_sha256"],
            candidate_metrics=evaluation["metrics"], store_uri=args.store, model_name=args.model_name,
            metric=args.metric, margin=args.margin,
            provenance={"evaluation_uri": args.evaluation, "report_uri": evaluation.get("report_uri")},
        )
        print(json.dumps(result, indent=2))

    return run_guarded(call)
