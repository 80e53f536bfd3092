"""The ``mammo`` command line.

Each subcommand imports its implementation lazily, so ``mammo --help`` and the pipeline commands
stay fast and torch-free. User mistakes (``MammoError``) print one line and exit non-zero.
``run``, ``component`` and ``pipeline`` come from the upper packages through entry points: this
package knows nothing of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from mammo import __version__, defaults
from mammo.console import add_command_family, add_config_args, run_guarded, setup_logging
from mammo.errors import ConfigError
from mammo.imagesize import image_size_arg
from mammo.launch import add_launch_args, launch, wants_launch
from mammo.summaries import evaluation_table, split_table, training_table

#: Entry-point group through which the upper packages add sub-commands (``mammo run``,
#: ``mammo component ...``, ``mammo pipeline ...``): each entry point is ``register(subparsers)``.
COMMAND_GROUP = "mammo.commands"


def _default(model: type, dotted: str) -> Any:
    """A config default by dotted key (e.g. ``data.batch_size``), read from the config models,
    so that ``--help`` shows the value a run really gets."""
    for part in dotted.split(".")[:-1]:
        model = model.model_fields[part].default_factory().__class__
    value = model.model_fields[dotted.rsplit(".", 1)[-1]].get_default(call_default_factory=True)
    return "none" if value is None else value


def _add_common_run_args(
    p: argparse.ArgumentParser, model: type, *, out_help: str, trains: bool, size_default: str | None = None
) -> None:
    """The flags every stage has; ``size_default`` says what ``--image-size`` defaults to where it
    is not the config's default (evaluate: each checkpoint's own; unfreeze: the init's)."""
    from mammo.backbones import BACKBONES

    def shown(text: str, key: str) -> str:
        return f"{text} (default: {_default(model, key)})"

    p.add_argument("--data", metavar="DIR", help="Dataset directory holding train.csv and the PNGs.")
    p.add_argument("--images", metavar="DIR", help="Image directory (default: detected under --data).")
    p.add_argument("--split", metavar="DIR", help="Split directory written by `mammo split`.")
    p.add_argument("--out", metavar="DIR", help=out_help)
    size_help = (f"Input size in pixels, S or HxW (default: {size_default})" if size_default
                 else shown("Input size in pixels, S or HxW", "data.image_size"))
    p.add_argument("--image-size", type=image_size_arg, metavar="S|HxW", help=size_help)
    if trains:  # evaluation takes the backbone and weights from the checkpoint
        p.add_argument("--backbone", choices=BACKBONES, metavar="NAME",
                       help=shown(f"One of {', '.join(BACKBONES)}", "model.backbone"))
        p.add_argument("--weights", help=shown("none, a torchvision weights name, or a state_dict file path", "model.weights"))
    p.add_argument("--batch-size", type=int, metavar="N", help=shown("Images per step", "data.batch_size"))
    p.add_argument("--workers", type=int, metavar="N", help=shown("DataLoader worker processes (0 = main process)", "data.workers"))
    p.add_argument("--device", help=shown("auto, cpu, cuda, cuda:N or mps", "device"))
    p.add_argument("--seed", type=int, help=shown("Seed of sampling, augmentation and initialisation", "seed"))
    add_config_args(p)
    _add_json_flag(p)


def local_paths(args: argparse.Namespace, *flags: str) -> None:
    """Stage commands work on local files; a storage URI gets one line naming the command
    that reads object storage."""
    for flag in flags:
        values = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and "://" in value:
                raise ConfigError(
                    f"{flag} {value}: `mammo {args.command}` reads and writes local paths; for object "
                    "storage use `mammo component ...` (see components/README.md)"
                )


def _common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    local_paths(args, "--data", "--images", "--split", "--out", "--weights", "--init", "--checkpoint")
    weights = getattr(args, "weights", None)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    overrides = {
        "data.root": args.data,
        "data.images": args.images,
        "split": args.split,
        "out": args.out,
        "data.image_size": args.image_size,
        "model.backbone": getattr(args, "backbone", None),
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


def _print_result(args: argparse.Namespace, result: dict[str, Any], table: Callable[[dict[str, Any]], str]) -> None:
    """The command's result: a short table for people, the whole result with ``--json``."""
    if args.json:
        _print_json(result)
    else:
        print(table(result))


def _add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="Print the full result as JSON instead of a table.")


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
        lesion_contrast=args.lesion_contrast,
        occult=args.occult,
        view_miss=args.view_miss,
    )
    _print_json(summary)


def _cmd_data_cache(args: argparse.Namespace) -> None:
    from mammo.data.prefill import fill_cache

    local_paths(args, "--data", "--images", "--cache")
    _print_json(fill_cache(args.data, args.images, args.image_size, args.cache,
                           workers=args.workers, bad_images=args.bad_images))


def _cmd_split(args: argparse.Namespace) -> None:
    from mammo.split import run_split

    local_paths(args, "--data", "--out", "--previous")
    summary = run_split(
        data=args.data,
        out=args.out,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        warmup_ratio=args.warmup_ratio,
        previous=args.previous,
    )
    _print_result(args, summary, lambda result: split_table(result, args.out))


def _cmd_train(args: argparse.Namespace) -> None:
    from mammo.config import TrainConfig
    from mammo.config_files import load_config
    from mammo.engine.baseline import train_baseline

    overrides = _common_overrides(args)
    overrides["warmup_epochs"] = args.warmup_epochs
    config = load_config(TrainConfig, args.config, args.sets, overrides)
    _print_result(args, train_baseline(config, resume=args.resume), training_table)


def _cmd_unfreeze(args: argparse.Namespace) -> None:
    from mammo.config import UnfreezeConfig
    from mammo.config_files import load_config
    from mammo.engine.unfreeze import train_unfreeze

    overrides = _common_overrides(args)
    overrides["init"] = args.init
    config = load_config(UnfreezeConfig, args.config, args.sets, overrides)
    _print_result(args, train_unfreeze(config, resume=args.resume), training_table)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from mammo.config import EvalConfig
    from mammo.config_files import load_config
    from mammo.evaluate import evaluate

    overrides = _common_overrides(args)
    if args.checkpoint:
        overrides["checkpoints"] = args.checkpoint
    overrides["threshold_metric"] = args.threshold_metric
    config = load_config(EvalConfig, args.config, args.sets, overrides)
    _print_result(args, evaluate(config), evaluation_table)


def _cmd_stats(args: argparse.Namespace) -> None:
    from mammo.config import EvalConfig
    from mammo.config_files import load_config
    from mammo.prediction_stats import run_stats, stats_table
    from mammo.promotion import PromotionRule

    given = {"threshold_metric": args.threshold_metric, "seed": args.seed, "data.breast_aggregation": args.aggregation,
             "stats.resamples": args.resamples, "stats.subgroup_resamples": args.subgroup_resamples,
             "stats.level": args.level}
    config = load_config(EvalConfig, args.config, args.sets, {k: v for k, v in given.items() if v is not None})
    rule = PromotionRule(metric=args.promotion_metric, rule=args.promotion_rule, margin=args.promotion_margin,
                         floor=args.promotion_min, min_cancers=args.promotion_min_cancers)
    _print_result(args, run_stats(args.predictions, config, rule, val=args.val, baseline=args.baseline), stats_table)


def _add_stats_command(sub: argparse._SubParsersAction) -> None:
    """``mammo stats``: the evaluator's figures for prediction CSVs from anywhere."""
    from mammo import config as cfg

    def shown(text: str, key: str) -> str:
        return f"{text} (default: {_default(cfg.EvalConfig, key)})".replace("%", "%%")

    stats = sub.add_parser(
        "stats",
        help="Patient-level intervals, operating points, calibration, subgroups and the promotion verdict of prediction CSVs.",
        description="The evaluator's figures (the same code) for prediction files from anywhere: another model, a "
        "commercial system, a reader study. A file has patient_id, laterality (L/R), cancer (0/1) and probability "
        "([0, 1]); image_id (one row per image; without it every row is a unit) and metadata columns (site_id, "
        "machine_id, view, density, age, implant, manufacturer, ...: the subgroups) are optional. Each file is "
        "scored as a test split, one result per file.",
    )
    stats.add_argument("--predictions", action="append", required=True, metavar="FILE",
                       help="Prediction CSV to score (repeatable; one result each).")
    stats.add_argument("--val", metavar="FILE",
                       help="Val predictions on which the operating threshold is chosen by --threshold-metric "
                       "(default: none; the threshold is then chosen on each file itself, which is optimistic).")
    stats.add_argument("--baseline", metavar="FILE",
                       help="Predictions of the model in use on the same cases: paired comparison and the promotion "
                       "verdict under the rule below (default: none; the first-model verdict, the floor alone).")
    stats.add_argument("--threshold-metric", metavar="RULE",
                       help=shown(f"{cfg.THRESHOLD_METRIC_HELP} E.g. specificity:0.95", "threshold_metric"))
    stats.add_argument("--aggregation", choices=("mean", "max"),
                       help=shown("Breast score from its images' scores", "data.breast_aggregation"))
    stats.add_argument("--resamples", type=int, metavar="N", help=shown("Bootstrap resamples of patients", "stats.resamples"))
    stats.add_argument("--subgroup-resamples", type=int, metavar="N",
                       help=shown("Resamples per subgroup interval (0: no subgroup table)", "stats.subgroup_resamples"))
    stats.add_argument("--level", type=float, metavar="P", help=shown("Confidence level of the intervals", "stats.level"))
    stats.add_argument("--seed", type=int, help=shown("Seed of the resampling", "seed"))
    rule_defaults = cfg.PipelineParams.model_fields
    for flag, field, kind, extra in (
        ("--promotion-metric", "promotion_metric", str, {"metavar": "KEY"}),
        ("--promotion-rule", "promotion_rule", str, {"choices": cfg.PROMOTION_RULES}),
        ("--promotion-margin", "promotion_margin", float, {"metavar": "X"}),
        ("--promotion-min", "promotion_min", float, {"metavar": "X"}),
        ("--promotion-min-cancers", "promotion_min_cancers", int, {"metavar": "N"}),
    ):
        info = rule_defaults[field]
        stats.add_argument(flag, type=kind, default=info.default,
                           help=f"{info.description} (default: {info.default}, the pipeline's)".replace("%", "%%"), **extra)
    add_config_args(stats)
    _add_json_flag(stats)
    stats.set_defaults(handler=_cmd_stats)


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


def _cmd_bench_train(args: argparse.Namespace) -> None:
    from mammo.bench_train import bench_train

    result = bench_train(
        args.data, processes=args.nproc, image_size=args.image_size, backbone=args.backbone,
        batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, workers=args.workers,
        device=args.device, threads_per_process=args.threads,
    )
    print(json.dumps(result, sort_keys=False))


def _cmd_bench_predict(args: argparse.Namespace) -> None:
    from mammo.bench import bench_predict

    result = bench_predict(scale=args.scale, threads=tuple(args.threads), batch_size=args.batch_size,
                           batches=args.batches, workdir=args.workdir)
    print(json.dumps(result, sort_keys=False), flush=True)


def _cmd_bench_gpu(args: argparse.Namespace) -> None:
    from mammo.gpu_check import check_gpu

    print(json.dumps(check_gpu(device=args.device, scale=args.scale, workdir=args.workdir), sort_keys=False), flush=True)


def _cmd_data_dicom(args: argparse.Namespace) -> None:
    from mammo.dicom.options import options_from_args
    from mammo.dicom.preprocess import available_cpus, preprocess

    from mammo.dicom.identity import load_key

    options = options_from_args(args)
    workers = available_cpus() if args.workers is None else args.workers
    key = None if options.keep_identifiers else load_key(args.pseudonym_key_file)
    _print_json(preprocess(args.source, args.out, options, csv=args.csv, workers=workers, workdir=args.workdir,
                           key=key, identifier_map=args.identifier_map))


def _cmd_bench_dicom(args: argparse.Namespace) -> None:
    from mammo.dicom.bench import bench_dicom

    if args.generate:
        from mammo.dicom.synth import write_synthetic_dicoms
        from mammo.imagesize import image_hw

        write_synthetic_dicoms(args.data, count=args.generate, size=image_hw(args.source_size), bits=args.source_bits)
    result = bench_dicom(args.data, image_size=args.image_size, files=args.files, repeats=args.repeats)
    print(json.dumps(result, sort_keys=False))


def _cmd_bench_stats(args: argparse.Namespace) -> None:
    from mammo.stats import bench

    print(json.dumps(bench(images=args.images, patients=args.patients, resamples=args.resamples), sort_keys=False))


def _cmd_bench_coverage(args: argparse.Namespace) -> None:
    from mammo.coverage import bench_coverage

    print(json.dumps(bench_coverage(trials=args.trials, promotion_trials=args.promotion_trials,
                                    production_trials=args.production_trials, seed=args.seed), sort_keys=False))


def _cmd_predict(args: argparse.Namespace) -> None:
    from mammo.predict import run_predict

    result = run_predict(
        model=args.model, data=args.data, out=args.out, device=args.device, batch_size=args.batch_size,
        workers=args.workers, table=args.table, images=args.images, threshold=args.threshold, workdir=args.workdir,
        runtime=args.runtime,
    )
    if args.json:
        _print_json(result)
        return
    m = result["model"]
    threshold = "none recorded: no flags" if m["threshold"] is None else f"{m['threshold']:.4f}"
    flagged = "" if result["flagged_breasts"] is None else f", {result['flagged_breasts']} flagged"
    print(f"model: {m['uri']} ({m['kind']}, {m['backbone']}, {m['image_size']} px, sha256 {str(m['sha256'])[:12]})")
    print(f"threshold: {threshold}")
    print(f"runtime: {result['runtime']}")
    print(f"scored {result['scored_images']} of {result['images']} images, {result['breasts']} breasts of "
          f"{result['patients']} patients{flagged}")
    print(f"written: {result['out']} (breasts), {result['images_out']} (images)")


def _cmd_export(args: argparse.Namespace) -> None:
    from mammo.export import ensemble_payload, is_ensemble_file, is_export, is_program, save_export, write_program
    from mammo.outputs import check_output
    from mammo.predict import EnsembleModel, resolve_model

    local_paths(args, "--out", "--program")
    check_output(args.out, flag="--out", inputs=[args.model], what="weights export",
                 ours=lambda path: is_export(path) or is_ensemble_file(path))
    if args.program:
        check_output(args.program, flag="--program", inputs=[args.model, args.out], what="torch.export program",
                     ours=is_program)
    model = resolve_model(args.model, args.workdir, args.threshold)
    if isinstance(model, EnsembleModel):  # one file of every member's export, the ensemble's threshold and rule
        if args.program:
            raise ConfigError(f"--program: {args.model} is an ensemble of {len(model.members)} networks; a "
                              "torch.export program holds one (export the ensemble without --program)")
        exports = [{**m.export, "source": {**m.export["source"], "sha256": m.export["source"].get("sha256") or m.sha256}}
                   for m in model.members]
        payload = ensemble_payload(exports, threshold=model.threshold,
                                   breast_aggregation=model.breast_aggregation)
        _print_json({"model": model.describe(), "members": len(model.members), "export": save_export(payload, args.out)})
        return
    export = {**model.export, "threshold": model.threshold}
    export["source"] = {**export.get("source", {}), "sha256": export.get("source", {}).get("sha256") or model.sha256}
    result = {"model": model.describe(), "export": save_export(export, args.out)}
    if args.program:
        result["program"] = write_program(export, args.program)
    _print_json(result)


def _cmd_config_show(args: argparse.Namespace) -> None:
    from mammo import config as cfg
    from mammo.config_files import dump_config, load_config

    model = {
        "train": cfg.TrainConfig,
        "unfreeze": cfg.UnfreezeConfig,
        "evaluate": cfg.EvalConfig,
        "pipeline": cfg.PipelineParams,
    }[args.stage]
    print(dump_config(load_config(model, args.config, args.sets)), end="")


# --- parser ---------------------------------------------------------------------------------


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """``mammo data synth|dicom|cache``: datasets."""
    from mammo.dicom.options import add_arguments as add_dicom_arguments

    data = sub.add_parser("data", help="Dataset utilities.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    synth = data_sub.add_parser(
        "synth",
        help="Write a synthetic RSNA-layout dataset with a learnable cancer signal.",
        description="Write train.csv (full RSNA column set) and PNGs whose cancer images carry "
        "a learnable signal, for demos and tests.",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="Directory to write train.csv and the PNGs to.")
    synth.add_argument("--patients", type=int, default=200, metavar="N", help="Number of patients (default: %(default)s).")
    synth.add_argument("--image-size", type=int, default=512, metavar="PX", help="Square image size (default: %(default)s).")
    synth.add_argument("--prevalence", type=float, default=0.1, metavar="P",
                       help="Fraction of patients with cancer (default: %(default)s).")
    synth.add_argument("--layout", choices=["nested", "flat"], default="nested",
                       help="nested: <dir>/{patient_id}/{image_id}.png; flat: {image_id}.png (default: %(default)s).")
    synth.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    synth.add_argument("--lesion-contrast", type=float, default=1.0, metavar="C",
                       help="Lesion brightness relative to the plainly visible default, e.g. 0.6 for subtle "
                       "lesions (default: %(default)s).")
    synth.add_argument("--occult", type=float, default=0.0, metavar="F",
                       help="Share of cancer breasts whose lesion shows in no image (default: %(default)s).")
    synth.add_argument("--view-miss", type=float, default=0.0, metavar="F",
                       help="Chance that an image of another cancer breast does not show its lesion (default: %(default)s).")
    synth.set_defaults(handler=_cmd_synth)

    dicom = data_sub.add_parser(
        "dicom",
        help="Convert DICOM mammograms to the PNG dataset the pipeline trains on (windowing, breast crop, HxW).",
        description="Reads the RSNA layout (train_images/{patient_id}/{image_id}.dcm + train.csv) or any folder "
        "of DICOM files (table built from the tags); writes {patient_id}/{image_id}.png at --image-size with the "
        "aspect ratio kept, train.csv (input columns kept, crop box and source size added), preprocess.json and "
        "manifest.json. A rerun converts only new or changed files. Local paths or s3:// URIs.",
    )
    dicom.add_argument("--in", dest="source", required=True, metavar="DIR_OR_URI", help="Folder or prefix holding the DICOM files.")
    dicom.add_argument("--out", required=True, metavar="DIR_OR_URI", help="Folder or prefix of the PNG dataset.")
    dicom.add_argument("--csv", metavar="FILE_OR_URI", help="Table of the images (default: <in>/train.csv when present, else built from the tags).")
    dicom.add_argument("--workers", type=int, metavar="N", help="Processes converting in parallel (default: one per core; 0 = this process).")
    dicom.add_argument("--workdir", metavar="DIR", help="Scratch folder for files fetched from object storage (default: the system's temp).")
    add_dicom_arguments(dicom)
    dicom.set_defaults(handler=_cmd_data_dicom)

    cache = data_sub.add_parser(
        "cache",
        help="Decode a dataset's images once into the decoded cache, ahead of training.",
        description="Training fills the cache during its first epoch anyway; this does it ahead "
        "(e.g. in a step of its own, or before timing a run). Prints one JSON line.",
    )
    cache.add_argument("--data", required=True, metavar="DIR", help="Dataset directory holding train.csv and the PNGs.")
    cache.add_argument("--images", metavar="DIR", help="Image directory (default: detected under --data).")
    cache.add_argument("--image-size", type=image_size_arg, default=512, metavar="S|HxW", help="Input size (default: %(default)s).")
    cache.add_argument("--cache", default="auto", metavar="DIR",
                       help="auto ($MAMMO_CACHE_DIR/decoded, else ~/.cache/mammo/decoded) or a directory (default: %(default)s).")
    cache.add_argument("--workers", type=int, default=2, metavar="N", help="Decoding processes (default: %(default)s).")
    cache.add_argument("--bad-images", choices=["fail", "skip"], default="fail",
                       help="Unreadable images: stop, or mark and count them (default: %(default)s).")
    cache.set_defaults(handler=_cmd_data_cache)


def _add_split_command(sub: argparse._SubParsersAction) -> None:
    """``mammo split``: the patient-level split."""
    split = sub.add_parser(
        "split",
        help="Build a patient-level, prevalence-stratified train/val/test split.",
        description="All images of a patient land in one split; writes split.csv and split.json.",
    )
    split.add_argument("--data", required=True, metavar="DIR", help="Dataset directory or train.csv.")
    split.add_argument("--out", required=True, metavar="DIR", help="Directory for split.csv and split.json.")
    split.add_argument("--val-frac", type=float, default=defaults.VAL_FRAC, metavar="F",
                       help="Fraction of patients in the validation split (default: %(default)s).")
    split.add_argument("--test-frac", type=float, default=defaults.TEST_FRAC, metavar="F",
                       help="Fraction of patients in the test split (default: %(default)s).")
    split.add_argument("--seed", type=int, default=defaults.SEED, help="Seed of the assignment (default: %(default)s).")
    split.add_argument("--warmup-ratio", type=int, default=defaults.WARMUP_RATIO, metavar="K",
                       help="Warm-up subset: all positive train breasts + K times as many negatives "
                       "(default: %(default)s).")
    split.add_argument("--previous", metavar="DIR",
                       help="An earlier split: its patients keep their assignment.")
    _add_json_flag(split)
    split.set_defaults(handler=_cmd_split)


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """``mammo train``, ``mammo unfreeze``, ``mammo evaluate``: the stages of a run."""
    from mammo import config as cfg

    train = sub.add_parser(
        "train",
        help="Baseline training (subset warm-up, then full data; early stopping).",
        description="Baseline training. Checkpoints best_loss/best_auc/best_pr_auc/best_pf1/last "
        "and top-k go to --out.",
    )
    _add_common_run_args(train, cfg.TrainConfig, out_help="Run directory for checkpoints, metrics and config.", trains=True)
    train.add_argument("--epochs", type=int, metavar="N",
                       help=f"Upper bound on epochs, warm-up included (default: {_default(cfg.TrainConfig, 'epochs')}).")
    train.add_argument("--warmup-epochs", type=int, metavar="N",
                       help="Leading epochs on the warm-up subset; cut to epochs - 1 when larger "
                       f"(default: {_default(cfg.TrainConfig, 'warmup_epochs')}).")
    train.add_argument("--resume", action="store_true", help="Continue from --out/last.pt.")
    add_launch_args(train)
    train.set_defaults(handler=_cmd_train)

    unfreeze = sub.add_parser(
        "unfreeze",
        help="Gradual unfreezing from a trained checkpoint.",
        description="Head first, then the backbone's blocks deepest first (ResNet: layer4 -> layer3 -> "
        "layer2 -> layer1 -> conv1) on validation triggers, each with its own learning rate; "
        "frozen BatchNorm stays frozen.",
    )
    _add_common_run_args(unfreeze, cfg.UnfreezeConfig, out_help="Run directory for checkpoints, metrics and config.", trains=True,
                         size_default="the size the --init checkpoint was trained at; a different size is refused")
    unfreeze.add_argument("--init", metavar="CKPT", help="Starting checkpoint (e.g. best_auc.pt).")
    unfreeze.add_argument("--epochs", type=int, metavar="N",
                          help=f"Upper bound on epochs (default: {_default(cfg.UnfreezeConfig, 'epochs')}).")
    unfreeze.add_argument("--resume", action="store_true", help="Continue from --out/last.pt.")
    add_launch_args(unfreeze)
    unfreeze.set_defaults(handler=_cmd_unfreeze)

    evaluate = sub.add_parser(
        "evaluate",
        help="Evaluate checkpoints on val and test; write metrics, predictions, plots, report.",
        description="The operating threshold is chosen on val and applied unchanged to test. "
        "Backbone and weights come from each checkpoint.",
    )
    _add_common_run_args(evaluate, cfg.EvalConfig, out_help="Output directory for the evaluation report.", trains=False,
                         size_default="each checkpoint's own, the size it was trained at; another is used with a warning")
    evaluate.add_argument("--checkpoint", action="append", metavar="CKPT",
                          help="Checkpoint to evaluate (repeatable; several are ranked).")
    evaluate.add_argument("--threshold-metric", metavar="RULE",
                          help=f"{cfg.THRESHOLD_METRIC_HELP} E.g. specificity:0.95 "
                          f"(default: {_default(cfg.EvalConfig, 'threshold_metric')}).")
    add_launch_args(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)


def _add_config_commands(sub: argparse._SubParsersAction) -> None:
    """``mammo config show``: defaults and resolved configs."""
    config = sub.add_parser("config", help="Show configuration defaults and resolved configs.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_sub.add_parser(
        "show",
        help="Print a stage's resolved configuration as YAML (defaults < --config < --set).",
        description="The output is a valid --config file: save it, edit it, pass it back.",
    )
    show.add_argument("stage", choices=["train", "unfreeze", "evaluate", "pipeline"])
    add_config_args(show)
    show.set_defaults(handler=_cmd_config_show)


def _add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """``mammo bench ...``: benchmarks that print JSON figures."""
    bench = sub.add_parser("bench", help="Benchmarks that print figures.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    bench_data = bench_sub.add_parser(
        "data",
        help="Images/s of the training data path vs. the research code's PIL path.",
    )
    bench_data.add_argument("--data", required=True, metavar="DIR", help="Dataset directory (e.g. from `mammo data synth`).")
    bench_data.add_argument("--image-size", type=image_size_arg, default=512, metavar="S|HxW", help="Input size (default: %(default)s).")
    bench_data.add_argument("--workers", type=int, default=0, metavar="N",
                            help="DataLoader workers; 0 = main process only, one core (default: %(default)s).")
    bench_data.add_argument("--batches", type=int, default=20, metavar="N", help="Batches timed (default: %(default)s).")
    bench_data.add_argument("--batch-size", type=int, default=16, metavar="N", help="Images per batch (default: %(default)s).")
    bench_data.add_argument("--device", default="auto", help="Device of the batch transform (default: %(default)s).")
    bench_data.set_defaults(handler=_cmd_bench_data)
    bench_train = bench_sub.add_parser(
        "train",
        help="Images/s of the training step with 1 and N processes, scaling efficiency, data stall.",
        description="Runs the training step (loader, augmentation, forward/backward under DDP, "
        "optimiser) as real distributed jobs of 1 and N processes on the same data and global batch.",
    )
    bench_train.add_argument("--data", required=True, metavar="DIR", help="Dataset directory (e.g. from `mammo data synth`).")
    bench_train.add_argument("--nproc", type=int, default=2, metavar="N", help="Processes of the second run (default: %(default)s).")
    bench_train.add_argument("--image-size", type=image_size_arg, default=64, metavar="S|HxW", help="Input size (default: %(default)s).")
    bench_train.add_argument("--backbone", default="resnet18", metavar="NAME", help="Backbone (default: %(default)s).")
    bench_train.add_argument("--batch-size", type=int, default=16, metavar="N", help="Global batch (default: %(default)s).")
    bench_train.add_argument("--steps", type=int, default=10, metavar="N", help="Timed steps (default: %(default)s).")
    bench_train.add_argument("--warmup", type=int, default=2, metavar="N", help="Untimed first steps (default: %(default)s).")
    bench_train.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader workers per process (default: %(default)s).")
    bench_train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s).")
    bench_train.add_argument("--threads", type=int, default=1, metavar="N",
                             help="Torch threads per process (default: %(default)s).")
    bench_train.set_defaults(handler=_cmd_bench_train)
    bench_predict = bench_sub.add_parser(
        "predict",
        help="CPU scoring: eager fp32 against channels_last, ONNX Runtime and bf16 (with native bf16), images/s and agreement.",
        description="Images/s of each path on the CPU at each thread count, measured side by side in one run, and "
        "each path's probabilities against eager (largest difference; AUC on a small synthetic demo split), "
        "printed as JSON. The evidence for mammo predict --runtime.",
    )
    bench_predict.add_argument("--scale", choices=["full", "tiny"], default="full",
                               help="full: ResNet-50 and EfficientNet-B0 at 512 px; tiny: tinynet at 32 px, for "
                               "checking the mechanics only (default: %(default)s).")
    bench_predict.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                               help="Thread counts measured (default: 1 2).")
    bench_predict.add_argument("--batch-size", type=int, default=4, metavar="N", help="Images per batch (default: %(default)s).")
    bench_predict.add_argument("--batches", type=int, default=3, metavar="N",
                               help="Timed batches per path and thread count (default: %(default)s).")
    bench_predict.add_argument("--workdir", metavar="DIR",
                               help="Parent of the scratch folder of the ONNX files (default: the system's temp).")
    bench_predict.set_defaults(handler=_cmd_bench_predict)
    bench_gpu = bench_sub.add_parser(
        "gpu",
        help="The GPU check (make gpu-check): CUDA, NCCL, bf16, training and evaluation images/s, GPU DICOM decode.",
        description="Every GPU path measured in one run, printed as JSON (mammo.gpu_check); exits 2 in one "
        "line without a CUDA device.",
    )
    bench_gpu.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                           help="cpu runs the same code on CPU, for checking the mechanics only (default: %(default)s).")
    bench_gpu.add_argument("--scale", choices=["full", "tiny"], default="full",
                           help="full: ResNet-50 at 512 px and ConvNeXt-small at 1024x512 on 1,024 synthetic images; "
                           "tiny: toy sizes (default: %(default)s).")
    bench_gpu.add_argument("--workdir", metavar="DIR",
                           help="Parent of the run's scratch folder, removed at the end (default: the system's temp).")
    bench_gpu.set_defaults(handler=_cmd_bench_gpu)
    bench_dicom = bench_sub.add_parser(
        "dicom",
        help="Files/s per core of DICOM preprocessing vs. the raw decode alone (JSON).",
        description="On the same files in one process: the whole conversion (decode, windowing, crop, resize, "
        "PNG) and the decode alone, in process CPU time (per core).",
    )
    bench_dicom.add_argument("--data", required=True, metavar="DIR", help="Folder of DICOM files.")
    bench_dicom.add_argument("--image-size", type=image_size_arg, default="1024x512", metavar="HxW", help="Output size (default: %(default)s).")
    bench_dicom.add_argument("--files", type=int, metavar="N", help="Use the first N files (default: all).")
    bench_dicom.add_argument("--repeats", type=int, default=1, metavar="N", help="Passes over the files (default: %(default)s).")
    bench_dicom.add_argument("--generate", type=int, default=0, metavar="N",
                             help="First write N synthetic JPEG 2000 mammograms (RSNA layout) into --data.")
    bench_dicom.add_argument("--source-size", default="2000x1600", metavar="HxW",
                             help="Size of the generated files (default: %(default)s).")
    bench_dicom.add_argument("--source-bits", type=int, default=12, choices=[12, 16],
                             help="Bits stored of the generated files (default: %(default)s).")
    bench_dicom.set_defaults(handler=_cmd_bench_dicom)

    bench_stats = bench_sub.add_parser(
        "stats",
        help="Seconds the evaluation's bootstrap intervals take on a split of a given size (JSON).",
        description="Synthetic scores of --images images of --patients patients (~2%% cancer breasts): "
        "image- and breast-level intervals with operating points, a paired comparison, DeLong, "
        "calibration and the subgroup table.",
    )
    bench_stats.add_argument("--images", type=int, default=8000, metavar="N", help="Images (default: %(default)s, RSNA's test size).")
    bench_stats.add_argument("--patients", type=int, default=1800, metavar="N", help="Patients (default: %(default)s).")
    bench_stats.add_argument("--resamples", type=int, default=2000, metavar="N", help="Bootstrap resamples (default: %(default)s).")
    bench_stats.set_defaults(handler=_cmd_bench_stats)
    bench_coverage = bench_sub.add_parser(
        "coverage", help="Coverage of the 95%% intervals and chance-level promotion rate, simulated (JSON).",
        description="Simulated test splits (500 patients, 10/20/40 cancer breasts, true breast AUC 0.85): the share "
        "of trials whose 95%% interval holds the true AUC, sensitivity and specificity; and how often a "
        "chance-level model is promoted under each rule, first and against production. One JSON line.",
    )
    bench_coverage.add_argument("--trials", type=int, default=2000, metavar="N", help="Coverage trials per size (default: %(default)s).")
    bench_coverage.add_argument("--promotion-trials", type=int, default=2000, metavar="N",
                                help="Chance-level first-model trials per size and rule (default: %(default)s).")
    bench_coverage.add_argument("--production-trials", type=int, default=200, metavar="N",
                                help="Chance-level trials against production per size and rule (default: %(default)s).")
    bench_coverage.add_argument("--seed", type=int, default=0, metavar="N", help="Seed (default: %(default)s).")
    bench_coverage.set_defaults(handler=_cmd_bench_coverage)


def _add_predict_command(sub: argparse._SubParsersAction) -> None:
    """``mammo predict``: score studies with a model."""
    from mammo.runtimes import DEFAULT_RUNTIME, RUNTIMES

    predict = sub.add_parser(
        "predict",
        help="Score studies without labels with a model (production pointer, checkpoint or export).",
        description="Writes one CSV per breast (probability, flag at the model's threshold) to --out and one "
        "per image beside it (<stem>_images.csv). --model, --data and --out take local paths or s3:// URIs; "
        "the model is verified by sha256 before it is loaded.",
    )
    predict.add_argument("--model", required=True, metavar="URI_OR_PATH",
                         help="A production pointer (s3://bucket/models/NAME/production), a checkpoint or a weights export.")
    predict.add_argument("--data", required=True, metavar="DIR_OR_URI",
                         help="Folder with test.csv or train.csv (patient_id, image_id, laterality[, view]) and the PNGs, "
                         "the CSV, or a folder of DICOM files (converted at the model's input size for this run; the "
                         "outputs carry their patient/image ids, study and SOP instance UIDs, accession numbers).")
    predict.add_argument("--out", required=True, metavar="FILE_OR_URI", help="Breast-level CSV; the image-level one goes beside it.")
    predict.add_argument("--table", metavar="NAME", help="The CSV in --data to score (default: the one of test.csv and train.csv there).")
    predict.add_argument("--images", metavar="DIR", help="Image directory (default: detected under --data).")
    predict.add_argument("--threshold", type=float, metavar="P", help="Flag threshold (default: the one the model records).")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s).")
    predict.add_argument(
        "--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
        help="How the network runs (default: %(default)s, the computation evaluation chose the threshold on). "
        "onnx: ONNX Runtime on the CPU, faster on CPU nodes (README: Scoring on CPU nodes); "
        "probabilities within 1e-4 of eager (checked when the ONNX file is written), not bit for bit, so "
        "a breast within that of the threshold could flip: hence not the default. Uses the ONNX file the "
        "production manifest lists (sha256 checked before loading), else exports one for the run.")
    predict.add_argument("--batch-size", type=int, default=32, metavar="N", help="Images per batch (default: %(default)s).")
    predict.add_argument("--workers", type=int, default=2, metavar="N", help="DataLoader workers (default: %(default)s).")
    predict.add_argument("--workdir", metavar="DIR", help="Where remote models and data are cached (default: a temporary folder).")
    _add_json_flag(predict)
    predict.set_defaults(handler=_cmd_predict)


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    """``mammo export``: a model's weights-only export."""
    export = sub.add_parser(
        "export",
        help="Write a model's slim weights-only export (and optionally a torch.export program).",
        description="The export holds the weights, input size, preprocessing and threshold, and loads with "
        "torch.load(..., weights_only=True); --program adds a torch.export program (uint8 images in, "
        "probabilities out), checked to give the model's outputs. An ensemble (ensemble.json, ensemble.pt or a "
        "production ensemble) is exported as one file of its members' exports with its threshold and breast rule "
        "(no --program).",
    )
    export.add_argument("--model", required=True, metavar="URI_OR_PATH",
                        help="Production pointer, checkpoint, export or ensemble.")
    export.add_argument("--out", required=True, metavar="FILE", help="The weights-only export to write.")
    export.add_argument("--program", metavar="FILE", help="Also write a torch.export program (.pt2).")
    export.add_argument("--threshold", type=float, metavar="P", help="Threshold to record (default: the model's).")
    export.add_argument("--workdir", metavar="DIR", help="Where a remote model is cached (default: a temporary folder).")
    export.set_defaults(handler=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo",
        description="Train and evaluate breast-cancer classifiers on screening mammograms.",
    )
    parser.add_argument("--version", action="version", version=f"mammo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data_commands(sub)
    _add_split_command(sub)
    _add_training_commands(sub)
    _add_stats_command(sub)
    _add_config_commands(sub)
    _add_bench_commands(sub)
    _add_predict_command(sub)
    _add_export_command(sub)
    add_command_family(sub, "models", "Production versions: list, show, rollback, freeze, unfreeze, retention.",
                       "mammo.model_versions")

    for plugin in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        plugin.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if getattr(args, "nproc_per_node", None) is not None and wants_launch(args):
        return run_guarded(lambda: launch(args, argv))
    return run_guarded(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
