"""The ``mammo`` command line.

Each subcommand imports its implementation lazily, so ``mammo --help`` and the pipeline commands
stay fast and torch-free. User mistakes (``MammoError``) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from mammo import __version__
from mammo.errors import MammoError

Handler = Callable[[argparse.Namespace], Any]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (see README: configuration).")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config value by dotted key, e.g. --set loss.name=focal (repeatable).",
    )


def _add_common_run_args(p: argparse.ArgumentParser, *, out_help: str) -> None:
    p.add_argument("--data", metavar="DIR", help="Dataset directory holding train.csv and the PNGs.")
    p.add_argument("--images", metavar="DIR", help="Image directory (default: detected under --data).")
    p.add_argument("--split", metavar="DIR", help="Split directory written by `mammo split`.")
    p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--image-size", type=int, metavar="PX", help="Input size in pixels (default 512).")
    p.add_argument("--backbone", help="resnet18|resnet34|resnet50|resnet101|resnet152 (default resnet50).")
    p.add_argument("--weights", help="none, a torchvision weights name, or a state_dict file path.")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--workers", type=int, metavar="N", help="DataLoader worker processes.")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps.")
    p.add_argument("--seed", type=int)
    _add_config_args(p)


def _common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    weights = args.weights
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    overrides = {
        "data.root": args.data,
        "data.images": args.images,
        "split": args.split,
        "out": args.out,
        "data.image_size": args.image_size,
        "model.backbone": args.backbone,
        "model.weights": weights,
        "data.batch_size": args.batch_size,
        "data.workers": args.workers,
        "device": args.device,
        "seed": args.seed,
    }
    if getattr(args, "epochs", None) is not None:
        overrides["epochs"] = args.epochs
    return overrides


def _print_json(result: Any) -> None:
    print(json.dumps(result, indent=2, sort_keys=False, default=str))


# --- handlers -------------------------------------------------------------------------------


def _cmd_synth(args: argparse.Namespace) -> None:
    from mammo.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out,
        patients=args.patients,
        image_size=args.image_size,
        prevalence=args.prevalence,
        layout=args.layout,
        seed=args.seed,
    )
    _print_json(summary)


def _cmd_split(args: argparse.Namespace) -> None:
    from mammo.split import run_split

    summary = run_split(
        data=args.data,
        out=args.out,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        warmup_ratio=args.warmup_ratio,
        previous=args.previous,
    )
    _print_json(summary)


def _cmd_train(args: argparse.Namespace) -> None:
    from mammo.config import TrainConfig, load_config
    from mammo.engine.baseline import train_baseline

    overrides = _common_overrides(args)
    overrides["warmup_epochs"] = args.warmup_epochs
    config = load_config(TrainConfig, args.config, args.sets, overrides)
    _print_json(train_baseline(config, resume=args.resume))


def _cmd_unfreeze(args: argparse.Namespace) -> None:
    from mammo.config import UnfreezeConfig, load_config
    from mammo.engine.unfreeze import train_unfreeze

    overrides = _common_overrides(args)
    overrides["init"] = args.init
    config = load_config(UnfreezeConfig, args.config, args.sets, overrides)
    _print_json(train_unfreeze(config, resume=args.resume))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from mammo.config import EvalConfig, load_config
    from mammo.evaluate import evaluate

    overrides = _common_overrides(args)
    if args.checkpoint:
        overrides["checkpoints"] = args.checkpoint
    overrides["threshold_metric"] = args.threshold_metric
    config = load_config(EvalConfig, args.config, args.sets, overrides)
    _print_json(evaluate(config))


def _cmd_bench_data(args: argparse.Namespace) -> None:
    from mammo.bench import bench_data

    result = bench_data(
        data=args.data,
        image_size=args.image_size,
        workers=args.workers,
        batches=args.batches,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(json.dumps(result, sort_keys=False))


def _cmd_config_show(args: argparse.Namespace) -> None:
    from mammo import config as cfg

    model = {
        "train": cfg.TrainConfig,
        "unfreeze": cfg.UnfreezeConfig,
        "evaluate": cfg.EvalConfig,
        "pipeline": cfg.PipelineParams,
    }[args.stage]
    print(cfg.dump_config(cfg.load_config(model, args.config, args.sets)), end="")


def _cmd_run(args: argparse.Namespace) -> None:
    from mammo.local_run import run_local

    run_local(
        workdir=args.workdir,
        data=args.data,
        preset=args.preset,
        config_file=args.config,
        sets=args.sets,
        store=args.store,
        verbose=args.verbose,
    )


def _delegate(module: str, package_dir: str) -> Handler:
    """Subcommand families that live in their own packages (components, pipelines), so that
    the training package does not depend on them: ``mammo component ...`` runs
    ``mammo_components.cli.main(argv)``."""

    def handler(args: argparse.Namespace) -> None:
        try:
            target = __import__(module, fromlist=["main"])
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                raise MammoError(f"{module} is not installed (pip install -e {package_dir})") from None
            raise
        code = target.main(args.rest)
        if code:
            raise SystemExit(code)

    return handler


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo",
        description="Train and evaluate breast-cancer classifiers on screening mammograms.",
    )
    parser.add_argument("--version", action="version", version=f"mammo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="Dataset utilities.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    synth = data_sub.add_parser(
        "synth",
        help="Write a synthetic RSNA-layout dataset with a learnable cancer signal.",
        description="Write train.csv (full RSNA column set) and PNGs whose cancer images carry "
        "a learnable signal, for demos and tests.",
    )
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--patients", type=int, default=200, metavar="N")
    synth.add_argument("--image-size", type=int, default=512, metavar="PX")
    synth.add_argument("--prevalence", type=float, default=0.1, metavar="P",
                       help="Fraction of patients with cancer (default 0.1).")
    synth.add_argument("--layout", choices=["nested", "flat"], default="nested",
                       help="nested: <dir>/{patient_id}/{image_id}.png; flat: {image_id}.png.")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_cmd_synth)

    split = sub.add_parser(
        "split",
        help="Build a patient-level, prevalence-stratified train/val/test split.",
        description="All images of a patient land in one split; writes split.csv and split.json.",
    )
    split.add_argument("--data", required=True, metavar="DIR", help="Dataset directory or train.csv.")
    split.add_argument("--out", required=True, metavar="DIR")
    split.add_argument("--val-frac", type=float, default=0.15, metavar="F")
    split.add_argument("--test-frac", type=float, default=0.15, metavar="F")
    split.add_argument("--seed", type=int, default=42)
    split.add_argument("--warmup-ratio", type=int, default=3, metavar="K",
                       help="Warm-up subset: all positive train breasts + K times as many negatives.")
    split.add_argument("--previous", metavar="DIR",
                       help="An earlier split: its patients keep their assignment.")
    split.set_defaults(handler=_cmd_split)

    train = sub.add_parser(
        "train",
        help="Baseline training (subset warm-up, then full data; early stopping).",
        description="Baseline training. Checkpoints best_loss/best_auc/best_pr_auc/best_pf1/last "
        "and top-k go to --out.",
    )
    _add_common_run_args(train, out_help="Run directory for checkpoints, metrics and config.")
    train.add_argument("--epochs", type=int, metavar="N")
    train.add_argument("--warmup-epochs", type=int, metavar="N")
    train.add_argument("--resume", action="store_true", help="Continue from --out/last.pt.")
    train.set_defaults(handler=_cmd_train)

    unfreeze = sub.add_parser(
        "unfreeze",
        help="Gradual unfreezing from a trained checkpoint.",
        description="Head first, then layer4 -> layer3 -> layer2 -> layer1 -> conv1 on validation "
        "triggers, each with its own learning rate; frozen BatchNorm stays frozen.",
    )
    _add_common_run_args(unfreeze, out_help="Run directory for checkpoints, metrics and config.")
    unfreeze.add_argument("--init", metavar="CKPT", help="Starting checkpoint (e.g. best_auc.pt).")
    unfreeze.add_argument("--epochs", type=int, metavar="N")
    unfreeze.add_argument("--resume", action="store_true", help="Continue from --out/last.pt.")
    unfreeze.set_defaults(handler=_cmd_unfreeze)

    evaluate = sub.add_parser(
        "evaluate",
        help="Evaluate checkpoints on val and test; write metrics, predictions, plots, report.",
        description="The operating threshold is chosen on val and applied unchanged to test.",
    )
    _add_common_run_args(evaluate, out_help="Output directory for the evaluation report.")
    evaluate.add_argument("--checkpoint", action="append", metavar="CKPT",
                          help="Checkpoint to evaluate (repeatable; several are ranked).")
    evaluate.add_argument("--threshold-metric", choices=["pf1", "f1"],
                          help="Breast-level metric maximised on val (default pf1).")
    evaluate.set_defaults(handler=_cmd_evaluate)

    config = sub.add_parser("config", help="Show configuration defaults and resolved configs.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_sub.add_parser(
        "show",
        help="Print a stage's resolved configuration as YAML (defaults < --config < --set).",
        description="The output is a valid --config file: save it, edit it, pass it back.",
    )
    show.add_argument("stage", choices=["train", "unfreeze", "evaluate", "pipeline"])
    _add_config_args(show)
    show.set_defaults(handler=_cmd_config_show)

    bench = sub.add_parser("bench", help="Benchmarks that print figures.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    bench_data = bench_sub.add_parser(
        "data",
        help="Images/s of the training data path vs. the research code's PIL path.",
    )
    bench_data.add_argument("--data", required=True, metavar="DIR")
    bench_data.add_argument("--image-size", type=int, default=512, metavar="PX")
    bench_data.add_argument("--workers", type=int, default=0, metavar="N",
                            help="0 = main process only (one core).")
    bench_data.add_argument("--batches", type=int, default=20, metavar="N")
    bench_data.add_argument("--batch-size", type=int, default=16, metavar="N")
    bench_data.add_argument("--device", default="auto")
    bench_data.set_defaults(handler=_cmd_bench_data)

    run = sub.add_parser(
        "run",
        help="The whole job on this machine: the Kubeflow pipeline (split -> baseline -> "
        "unfreeze -> evaluate -> promote) through kfp.local, on synthetic data or --data.",
    )
    run.add_argument("--data", metavar="DIR", help="Real RSNA-layout dataset (default: demo data).")
    run.add_argument("--workdir", default=".mammo", metavar="DIR",
                     help="Local store for data, splits, runs and models (default .mammo).")
    run.add_argument("--store", metavar="URI",
                     help="Store instead of --workdir, e.g. s3://mammo (default: $MAMMO_STORE_URI; "
                     "s3://mammo when MINIO_ENDPOINT is set).")
    run.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="Show every step's full log (also: mammo -v run).")
    run.add_argument("--preset", choices=["demo", "full"], default="demo",
                     help="demo: tiny CPU-friendly settings; full: the research defaults.")
    _add_config_args(run)
    run.set_defaults(handler=_cmd_run)

    for name, module, package_dir, text in (
        ("component", "mammo_components.cli", "components", "Run one pipeline component from the command line."),
        ("pipeline", "mammo_pipelines.cli", "pipelines", "Compile, submit and schedule the Kubeflow pipeline."),
    ):
        family = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        family.add_argument("rest", nargs=argparse.REMAINDER)
        family.set_defaults(handler=_delegate(module, package_dir))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return run_guarded(lambda: args.handler(args))


def run_guarded(call: Callable[[], int | None]) -> int:
    """Run a command; a user mistake (``MammoError``) becomes one line on stderr and its exit
    code, Ctrl-C exit 130. Shared by every ``mammo`` command family."""
    try:
        return int(call() or 0)
    except MammoError as err:
        print(f"mammo: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("mammo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
