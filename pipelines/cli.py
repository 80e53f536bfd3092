"""``mammo pipeline ...``: compile, submit and schedule the ``mammo-training`` pipeline.

    mammo pipeline compile --profile gpu|kind [--out FILE]
    mammo pipeline params [--profile gpu|kind]
    mammo pipeline submit --host URL [--experiment NAME] [--param key=value ...] [--wait]
    mammo pipeline schedule --host URL --name NAME --cron "0 0 3 * * 0" [--param ...]
    mammo pipeline schedules --host URL
    mammo pipeline unschedule --host URL --name NAME

The host may also come from ``KF_PIPELINES_ENDPOINT``, a bearer token from ``--token`` or
``KF_PIPELINES_TOKEN`` (in a pod: the projected token at ``KF_PIPELINES_SA_TOKEN_PATH``).
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mammo.console import run_guarded
from mammo.errors import ConfigError
from mammo_pipelines import remote
from mammo_pipelines.parameters import check_arguments, describe, parse_params
from mammo_pipelines.pipeline import PIPELINE_NAME, compile_pipeline, parameters_for
from mammo_pipelines.profiles import PROFILES, Profile, Toleration, get_profile

DEFAULT_EXPERIMENT = "mammo"
#: The ServiceAccount k8s/base/kubeflow creates for runs (docs/kubernetes.md).
DEFAULT_SERVICE_ACCOUNT = "mammo-pipeline"


def _key_value(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE")
    return key, value


def parse_toleration(text: str) -> Toleration:
    """``KEY[=VALUE][:EFFECT]``, e.g. ``nvidia.com/gpu:NoSchedule`` or ``dedicated=gpu``."""
    spec, _, effect = text.rpartition(":") if ":" in text else (text, "", "")
    if effect and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ConfigError(f"--toleration {text!r}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
    key, sep, value = spec.partition("=")
    if not key:
        raise ConfigError(f"--toleration {text!r}: expected KEY[=VALUE][:EFFECT]")
    return Toleration(
        key=key, operator="Equal" if sep else "Exists", value=value if sep else None,
        effect=effect or None,  # type: ignore[arg-type]
    )


def _add_profile_args(p: argparse.ArgumentParser, *, default: str | None = "gpu") -> None:
    p.add_argument("--profile", choices=PROFILES, default=default,
                   help="gpu: CUDA trainers with GPUs; kind: CPU images for the kind cluster (default: %(default)s).")
    group = p.add_argument_group("profile overrides")
    group.add_argument("--train-image", metavar="IMAGE", help="Trainers' image (default: images.env).")
    group.add_argument("--eval-image", metavar="IMAGE", help="Split builder/evaluator/promoter image (default: images.env).")
    group.add_argument("--image-pull-policy", choices=["Always", "IfNotPresent", "Never"])
    group.add_argument("--gpu-type", metavar="RESOURCE", help="GPU resource name (gpu profile; default nvidia.com/gpu).")
    group.add_argument("--evaluator-gpus", type=int, metavar="N",
                       help="GPUs for the evaluator (gpu profile; default 0 = CPU in the eval image).")
    group.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                       help="Node label the GPU steps require (repeatable).")
    group.add_argument("--toleration", action="append", metavar="KEY[=VALUE][:EFFECT]",
                       help="Toleration of the GPU steps (repeatable; replaces the profile's).")
    group.add_argument("--secret", metavar="NAME", help="Secret with MINIO_ACCESS_KEY/MINIO_SECRET_KEY (default mammo-minio).")
    group.add_argument("--config-map", metavar="NAME", help="ConfigMap with MINIO_ENDPOINT etc. (default mammo-runtime).")
    group.add_argument("--shm-size", metavar="QUANTITY",
                       help="Memory-backed /dev/shm of each trainer pod, shared by all its processes' DataLoader "
                       "workers (default: gpu 16Gi, kind 1Gi); raise it with trainer_gpus and workers, e.g. 64Gi.")


def _profile(args: argparse.Namespace) -> Profile:
    return get_profile(
        args.profile,
        train_image=args.train_image,
        eval_image=args.eval_image,
        image_pull_policy=args.image_pull_policy,
        gpu_type=args.gpu_type,
        evaluator_gpus=args.evaluator_gpus,
        node_selector=None if args.node_selector is None
        else dict(_key_value(item, "--node-selector") for item in args.node_selector),
        tolerations=None if args.toleration is None else [parse_toleration(t) for t in args.toleration],
        secret_name=args.secret,
        config_map_name=args.config_map,
        shm_size=args.shm_size,
    )


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="URL", help=f"KFP API endpoint, e.g. http://localhost:8888 (default: ${remote.HOST_ENV}).")
    p.add_argument("--token", metavar="TOKEN",
                   help=f"Bearer token (default: ${remote.TOKEN_ENV}; prefer the variable, "
                   "arguments show in process lists).")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="Pipeline parameter (repeatable; lists in YAML: --param 'baseline_set=[a=1]'). "
                   "See `mammo pipeline params`.")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help="KFP experiment, created if missing (default: %(default)s).")
    p.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT, metavar="NAME",
                   help="ServiceAccount of the run's pods; '' for KFP's default (default: %(default)s).")
    p.add_argument("--no-cache", action="store_true", help="Disable KFP caching for this run/schedule.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo pipeline",
        description=f"Compile, submit and schedule the {PIPELINE_NAME} Kubeflow pipeline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="Write the pipeline spec (YAML); needs no cluster and no torch.")
    _add_profile_args(p)
    p.add_argument("--out", metavar="FILE", help="Output file (default: mammo-training-<profile>.yaml).")
    p.set_defaults(handler=_cmd_compile)

    p = sub.add_parser("params", help="List the pipeline parameters with their types and defaults.")
    p.add_argument("--profile", choices=PROFILES, default="gpu")
    p.set_defaults(handler=_cmd_params)

    p = sub.add_parser("submit", help="Compile and start a run; prints its id and UI link.")
    _add_connection_args(p)
    _add_profile_args(p)
    _add_run_args(p)
    p.add_argument("--run-name", metavar="NAME", help="Display name (default: mammo-training <UTC time>).")
    p.add_argument("--wait", action="store_true", help="Follow the run to its end; exit non-zero unless it succeeded.")
    p.add_argument("--poll-interval", type=float, default=15.0, metavar="SECONDS", help="With --wait (default: %(default)s).")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="With --wait: give up after this long.")
    p.set_defaults(handler=_cmd_submit)

    p = sub.add_parser("schedule", help="Create or replace a recurring run (max concurrency 1, no catch-up).")
    _add_connection_args(p)
    _add_profile_args(p)
    _add_run_args(p)
    p.add_argument("--name", required=True, help="Schedule name; the same name replaces that schedule.")
    p.add_argument("--cron", required=True, help="Six fields, seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00).")
    p.set_defaults(handler=_cmd_schedule)

    p = sub.add_parser("schedules", help="List the recurring runs.")
    _add_connection_args(p)
    p.set_defaults(handler=_cmd_schedules)

    p = sub.add_parser("unschedule", help="Delete the recurring run(s) with this name.")
    _add_connection_args(p)
    p.add_argument("--name", required=True)
    p.set_defaults(handler=_cmd_unschedule)
    return parser


# --- handlers -------------------------------------------------------------------------------


def _cmd_compile(args: argparse.Namespace) -> int:
    profile = _profile(args)
    out = compile_pipeline(profile, args.out or f"{PIPELINE_NAME}-{profile.name}.yaml")
    print(f"wrote {out} (profile {profile.name}: trainers {profile.train_image}, others {profile.eval_image})")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile, train_image="-", eval_image="-")
    print(describe(parameters_for(profile)))
    return 0


def _prepared(args: argparse.Namespace, tmp: str) -> tuple[Path, dict[str, Any]]:
    """The compiled package and the checked, typed arguments."""
    profile = _profile(args)
    parameters = parameters_for(profile)
    arguments = parse_params(args.param, parameters)
    check_arguments(arguments, parameters)
    return compile_pipeline(profile, Path(tmp) / f"{PIPELINE_NAME}.yaml"), arguments


def _cmd_submit(args: argparse.Namespace) -> int:
    host = remote.resolve_host(args.host)
    with tempfile.TemporaryDirectory(prefix="mammo-pipeline-") as tmp:
        package, arguments = _prepared(args, tmp)
        client = remote.connect(host, args.token)
        run_name = args.run_name or f"{PIPELINE_NAME} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}"
        run_id = remote.submit(
            client, host, package, arguments, experiment=args.experiment, run_name=run_name,
            service_account=args.service_account, enable_caching=False if args.no_cache else None,
        )
    print(f"run id: {run_id}")
    print(f"run: {remote.run_link(host, run_id)}", flush=True)
    if not args.wait:
        return 0
    state, error = remote.wait(
        client, host, run_id, poll_seconds=args.poll_interval, timeout_seconds=args.timeout,
        echo=lambda line: print(line, flush=True),
    )
    if state != "SUCCEEDED":
        print(f"mammo: error: run {run_id} ended {state}" + (f": {error}" if error else ""), file=sys.stderr)
        return 1
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    host = remote.resolve_host(args.host)
    remote.check_cron(args.cron)
    with tempfile.TemporaryDirectory(prefix="mammo-pipeline-") as tmp:
        package, arguments = _prepared(args, tmp)
        client = remote.connect(host, args.token)
        created, replaced = remote.schedule(
            client, host, package, arguments, name=args.name, cron=args.cron,
            experiment=args.experiment, service_account=args.service_account,
            enable_caching=False if args.no_cache else None,
        )
    action = f"replaced {replaced} earlier schedule(s) of that name" if replaced else "new"
    print(f"schedule {created.name!r}: cron '{created.cron}', id {created.id} ({action})")
    return 0


def _cmd_schedules(args: argparse.Namespace) -> int:
    host = remote.resolve_host(args.host)
    schedules = remote.list_schedules(remote.connect(host, args.token), host)
    if not schedules:
        print("no schedules")
        return 0
    print(f"{'NAME':<28}{'CRON':<18}{'ENABLED':<9}{'ID'}")
    for s in schedules:
        print(f"{s.name:<28}{s.cron or '-':<18}{'yes' if s.enabled else 'no':<9}{s.id}")
    return 0


def _cmd_unschedule(args: argparse.Namespace) -> int:
    host = remote.resolve_host(args.host)
    removed = remote.unschedule(remote.connect(host, args.token), host, args.name)
    print(f"removed {removed} schedule(s) named {args.name!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    return run_guarded(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
