"""``mammo component promoter``: promote the best candidate of an evaluator run by hand.

Reads the evaluator's published ``result.json`` (best checkpoint URI, its sha256, metrics and
its promotion verdict, ``decision``) from ``--evaluation`` and applies the same rule as the
pipeline's promoter step: the verdict is decided again from its figures under this command's
rule (which must be the one the evaluation used) and must still hold against production. An
evaluation without a verdict is refused. The result is printed as JSON; ``promoted`` says
whether production changed.
"""

from __future__ import annotations

import argparse
import json

from mammo.config import (
    DEFAULT_MODEL_NAME,
    DEFAULT_PROMOTION_MARGIN,
    DEFAULT_PROMOTION_METRIC,
    DEFAULT_PROMOTION_MIN,
    DEFAULT_PROMOTION_MIN_CANCERS,
    DEFAULT_PROMOTION_RULE,
)
from mammo.console import parse_command_line, run_guarded, setup_logging
from mammo.errors import ConfigError
from mammo.promotion import RULES
from mammo_components.promoter.entrypoint import run
from mammo_components.publishing import read_result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mammo component promoter",
        description="Replace <store>/models/<name>/production/ with the best candidate of an "
        "evaluator run when the evaluator's promotion verdict, decided again under this rule, "
        "says so and production is still the model it compared with.",
    )
    p.add_argument("--evaluation", required=True, metavar="URI",
                   help="The evaluator's output folder: <store>/runs/<run-id>/evaluator.")
    p.add_argument("--store", required=True, metavar="URI", help="Storage root, e.g. s3://mammo.")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, metavar="NAME",
                   help="models/<name>/ (default: %(default)s).")
    p.add_argument("--metric", default=DEFAULT_PROMOTION_METRIC,
                   help="<split>.<level>.<metric> (default: %(default)s).")
    p.add_argument("--margin", type=float, default=DEFAULT_PROMOTION_MARGIN,
                   help="Required improvement (default: %(default)s).")
    p.add_argument("--rule", default=DEFAULT_PROMOTION_RULE, choices=RULES,
                   help="promotion_rule (default: %(default)s).")
    p.add_argument("--promotion-min", type=float, default=DEFAULT_PROMOTION_MIN, metavar="X",
                   help="The floor promotion_min (default: %(default)s).")
    p.add_argument("--min-cancers", type=int, default=DEFAULT_PROMOTION_MIN_CANCERS, metavar="N",
                   help="promotion_min_cancers (default: %(default)s).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging()

    def call() -> None:
        evaluation = read_result(args.evaluation)
        if not isinstance(evaluation.get("decision"), dict):
            raise ConfigError(f"--evaluation {args.evaluation}: result.json has no promotion verdict (decision); "
                              "evaluate with the evaluator component first")
        result = run(
            candidate_uri=evaluation["best_uri"], candidate_sha256=evaluation["best_sha256"],
            candidate_metrics=evaluation["metrics"], store_uri=args.store, model_name=args.model_name,
            metric=args.metric, margin=args.margin, rule=args.rule, floor=args.promotion_min,
            min_cancers=args.min_cancers, verdict=evaluation["decision"],
            provenance={"evaluation_uri": args.evaluation, "report_uri": evaluation.get("report_uri")},
        )
        print(json.dumps(result, indent=2))

    return run_guarded(call)
