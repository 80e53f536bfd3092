"""``mammo pipeline ...``: compile, submit and schedule the ``mammo-training`` pipeline (and,
with ``--pipeline scoring``, the ``mammo-scoring`` pipeline: ``mammo_pipelines.scoring``).

    mammo pipeline compile --profile gpu|kind [--pipeline training|scoring] [--out FILE]
    mammo pipeline params [--profile gpu|kind] [--pipeline training|scoring]
    mammo pipeline upload --host URL [--namespace NS]
    mammo pipeline submit --host URL [--experiment NAME] [--param key=value ...] [--wait]
    mammo pipeline schedule --host URL --name NAME --cron "0 0 3 * * 0" [--param ...]
    mammo pipeline schedules --host URL
    mammo pipeline unschedule --host URL --name NAME

``submit`` and ``schedule`` upload the compiled pipeline first (as ``upload`` does: a named
pipeline with one version per distinct compiled package) and run that version. The host may also
come from ``KF_PIPELINES_ENDPOINT``, the namespace (multi-user Kubeflow: your profile's) from
``KF_PIPELINES_NAMESPACE``, a bearer token from ``--token`` or ``KF_PIPELINES_TOKEN`` (in a pod:
the projected token at ``KF_PIPELINES_SA_TOKEN_PATH``), a Dex/OIDC session cookie from
``KF_PIPELINES_COOKIE``. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo.console import parse_command_line, run_guarded
from mammo.errors import ConfigError
from mammo_pipelines import remote, scoring
from mammo_pipelines.parameters import (
    PipelineParameter,
    check_arguments,
    config_arguments,
    describe,
    parse_param_flags,
    preset_names,
)
from mammo_pipelines.pipeline import DESCRIPTION, PIPELINE_NAME, compile_pipeline, parameters_for
from mammo_pipelines.profiles import PROFILES, Profile, Toleration, get_profile, parse_duration

DEFAULT_EXPERIMENT = "mammo"


@dataclass(frozen=True)
class Kind:
    """One of the project's pipelines, as the commands handle it."""

    name: str
    description: str
    compile: Callable[[Profile, Any], Path]
    parameters: Callable[[Profile], list[PipelineParameter]]
    check: Callable[[dict[str, Any], list[PipelineParameter]], Any]


#: ``--pipeline``: training (split, train, evaluate, promote) or scoring (the production model on new studies).
PIPELINES = {
    "training": Kind(PIPELINE_NAME, DESCRIPTION, compile_pipeline, parameters_for, check_arguments),
    "scoring": Kind(scoring.PIPELINE_NAME, scoring.DESCRIPTION, scoring.compile_pipeline, scoring.parameters_for,
                    scoring.check_arguments),
}


def _add_pipeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", choices=PIPELINES, default="training",
                   help="training: split, train, evaluate, promote; scoring: score a dataset of studies with the "
                   "production model (default: %(default)s).")
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
    group.add_argument("--preset", choices=preset_names(),
                       help="Parameter defaults of the compiled pipeline (pipelines/mammo_pipelines/presets/): full, the research "
                       "defaults; kind, sized for the kind profile's pods (default: gpu full, kind kind).")
    group.add_argument("--train-image", metavar="IMAGE", help="Trainers' image (default: images.env).")
    group.add_argument("--eval-image", metavar="IMAGE", help="Split builder/evaluator/promoter image (default: images.env).")
    group.add_argument("--image-pull-policy", choices=["Always", "IfNotPresent", "Never"])
    group.add_argument("--gpu-type", metavar="RESOURCE", help="GPU resource name (gpu profile; default nvidia.com/gpu).")
    group.add_argument("--evaluator-gpus", type=int, metavar="N",
                       help="GPUs for the evaluator (gpu profile; default 1, in the train image; 0 = CPU in the "
                       "eval image).")
    group.add_argument("--queue", metavar="NAME",
                       help="Kueue LocalQueue of the GPU steps and TrainJobs (label kueue.x-k8s.io/queue-name; "
                       "gpu profile; default: none).")
    group.add_argument("--priority-class", metavar="NAME",
                       help="Kueue WorkloadPriorityClass of the GPU steps and TrainJobs (label "
                       "kueue.x-k8s.io/priority-class; gpu profile; default: none).")
    group.add_argument("--pod-label", action="append", metavar="KEY=VALUE",
                       help="Label of every step's pod and of TrainJobs (repeatable; default: none).")
    group.add_argument("--pod-annotation", action="append", metavar="KEY=VALUE",
                       help="Annotation of every step's pod (repeatable; default: none).")
    group.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                       help="Node label the GPU steps require (repeatable).")
    group.add_argument("--toleration", action="append", metavar="KEY[=VALUE][:EFFECT]",
                       help="Toleration of the GPU steps (repeatable; replaces the profile's).")
    group.add_argument("--secret", metavar="NAME", help="Secret with MINIO_ACCESS_KEY/MINIO_SECRET_KEY (default mammo-minio).")
    group.add_argument("--promoter-secret", metavar="NAME",
                       help="Secret with the promoter's MINIO_ACCESS_KEY/MINIO_SECRET_KEY, the only keys that may write "
                       "models/ (default mammo-minio-promoter).")
    group.add_argument("--pseudonym-secret", metavar="NAME",
                       help="Secret with MAMMO_PSEUDONYM_KEY, the site key the DICOM preprocessor pseudonymises "
                       "patient and image ids with (default mammo-pseudonym-key; optional Secret).")
    group.add_argument("--config-map", metavar="NAME", help="ConfigMap with MINIO_ENDPOINT etc. (default mammo-runtime).")
    group.add_argument("--shm-size", metavar="QUANTITY",
                       help="Memory-backed /dev/shm of each trainer pod, shared by all its processes' DataLoader "
                       "workers (default: gpu 16Gi, kind 1Gi); raise it with trainer_gpus and workers, e.g. 64Gi.")
    group.add_argument("--image-pull-secret", action="append", metavar="NAME",
                       help="Secret (kubernetes.io/dockerconfigjson) every step pulls its image with, for private "
                       "registries (repeatable; default none).")
    group.add_argument("--trainer-timeout", metavar="DURATION",
                       help="Deadline of each trainer pod and TrainJob launcher, e.g. 48h (default: gpu 48h, kind 4h).")
    group.add_argument("--step-timeout", metavar="DURATION",
                       help="Deadline of every other step, e.g. 6h (default: gpu 6h, kind 1h).")
    group.add_argument("--ttl", metavar="DURATION",
                       help="Delete the run's pods this long after it finished, e.g. 7d (default: gpu 7d, kind 1d).")
    group.add_argument("--data-volume-size", metavar="QUANTITY",
                       help="Disk of each trainer's and the evaluator's data volume: dataset copy plus decoded "
                       "cache (default: gpu 200Gi, kind 5Gi; RSNA needs ~30Gi at 512 px, ~60Gi at 1024x512).")
    group.add_argument("--data-storage-class", metavar="NAME",
                       help="Make the data volume a generic ephemeral volume of this storage class (default: an "
                       "emptyDir on the node's disk; the class must provision volumes writable by uid 10001).")
    group.add_argument("--data-pvc", metavar="NAME",
                       help="Keep the data on this PersistentVolumeClaim instead (shared by steps, retries and "
                       "runs; owned by uid 10001).")


def _profile(args: argparse.Namespace) -> Profile:
    return get_profile(
        args.profile,
        train_image=args.train_image,
        eval_image=args.eval_image,
        image_pull_policy=args.image_pull_policy,
        gpu_type=args.gpu_type,
        evaluator_gpus=args.evaluator_gpus,
        node_selector=_key_values(args.node_selector, "--node-selector"),
        tolerations=None if args.toleration is None else [parse_toleration(t) for t in args.toleration],
        secret_name=args.secret,
        promoter_secret=args.promoter_secret,
        pseudonym_secret=args.pseudonym_secret,
        config_map_name=args.config_map,
        shm_size=args.shm_size,
        image_pull_secrets=args.image_pull_secret,
        trainer_timeout=None if args.trainer_timeout is None else parse_duration(args.trainer_timeout, "--trainer-timeout"),
        step_timeout=None if args.step_timeout is None else parse_duration(args.step_timeout, "--step-timeout"),
        ttl_seconds=None if args.ttl is None else parse_duration(args.ttl, "--ttl"),
        data_volume_size=args.data_volume_size,
        data_pvc=args.data_pvc,
        data_storage_class=args.data_storage_class,
        queue=args.queue,
        priority_class=args.priority_class,
        pod_labels=_key_values(args.pod_label, "--pod-label"),
        pod_annotations=_key_values(args.pod_annotation, "--pod-annotation"),
        preset=args.preset,
    )


def _key_values(items: list[str] | None, flag: str) -> dict[str, str] | None:
    return None if items is None else dict(_key_value(item, flag) for item in items)


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="URL", help=f"KFP API endpoint, e.g. http://localhost:8888 (default: ${remote.HOST_ENV}).")
    p.add_argument("--namespace", metavar="NS",
                   help=f"Namespace (multi-user Kubeflow: your profile's namespace; default: ${remote.NAMESPACE_ENV}, "
                   "else single-user KFP).")
    p.add_argument("--token", metavar="TOKEN",
                   help=f"Bearer token (default: ${remote.TOKEN_ENV}; prefer the variable, "
                   f"arguments show in process lists). Behind Dex/OIDC: the session cookie in ${remote.COOKIE_ENV}.")


def _connect(args: argparse.Namespace) -> remote.Connection:
    host = remote.resolve_host(args.host)
    return remote.connect(host, args.token, remote.resolve_namespace(args.namespace))


def _add_upload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline-name", metavar="NAME",
                   help=f"Name of the uploaded pipeline in KFP (default: {PIPELINE_NAME}, or "
                   f"{scoring.PIPELINE_NAME} with --pipeline scoring).")
    p.add_argument("--version", metavar="NAME",
                   help="Version name (default: <profile>-<sha256 of the compiled pipeline>, so the same "
                   "pipeline is uploaded once).")


def _add_argument_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of pipeline parameters for the run (as `mammo run --config`; `data` or "
                   "dataset_uri); below --param, above the preset (default: none).")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="Pipeline parameter (repeatable; lists in YAML: --param 'baseline_set=[a=1]'). "
                   "See `mammo pipeline params`.")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    _add_argument_args(p)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help="KFP experiment, created if missing (default: %(default)s).")
    p.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT, metavar="NAME",
                   help="ServiceAccount of the run's pods; '' for KFP's default (default: %(default)s).")
    p.add_argument("--no-cache", action="store_true",
                   help="Disable KFP caching for this run/schedule (a version of its own, compiled without caching).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo pipeline",
        description=f"Compile, submit and schedule the {PIPELINE_NAME} Kubeflow pipeline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="Write the pipeline spec (YAML); needs no cluster and no torch.")
    _add_profile_args(p)
    _add_pipeline_arg(p)
    p.add_argument("--out", metavar="FILE", help="Output file (default: <pipeline name>-<profile>.yaml).")
    p.set_defaults(handler=_cmd_compile)

    p = sub.add_parser("params", help="List the pipeline parameters with their types and defaults (with "
                       "--preset/--config/--param: the values a run would get).")
    p.add_argument("--profile", choices=PROFILES, default="gpu", help="Compile profile (default: %(default)s).")
    p.add_argument("--preset", choices=preset_names(),
                   help="Parameter defaults (default: the profile's: gpu full, kind kind).")
    _add_argument_args(p)
    _add_pipeline_arg(p)
    p.set_defaults(handler=_cmd_params)

    p = sub.add_parser("upload", help="Compile and upload as a version of the named pipeline (idempotent).")
    _add_connection_args(p)
    _add_profile_args(p)
    _add_pipeline_arg(p)
    _add_upload_args(p)
    p.set_defaults(handler=_cmd_upload, no_cache=False)

    p = sub.add_parser("submit", help="Compile, upload (as `upload`) and start a run of that version; prints its id and UI link.")
    _add_connection_args(p)
    _add_profile_args(p)
    _add_run_args(p)
    _add_pipeline_arg(p)
    _add_upload_args(p)
    p.add_argument("--run-name", metavar="NAME", help="Display name (default: mammo-training <UTC time>).")
    p.add_argument("--wait", action="store_true", help="Follow the run to its end; exit non-zero unless it succeeded.")
    p.add_argument("--poll-interval", type=float, default=15.0, metavar="SECONDS", help="With --wait (default: %(default)s).")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="With --wait: give up after this long.")
    p.set_defaults(handler=_cmd_submit)

    p = sub.add_parser("schedule", help="Upload (as `upload`) and create or replace a recurring run of that version "
                       "(max concurrency 1, no catch-up).")
    _add_connection_args(p)
    _add_profile_args(p)
    _add_run_args(p)
    _add_pipeline_arg(p)
    _add_upload_args(p)
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
    kind = PIPELINES[args.pipeline]
    out = kind.compile(profile, args.out or f"{kind.name}-{profile.name}.yaml")
    print(f"wrote {out} (profile {profile.name}: trainers {profile.train_image}, others {profile.eval_image})")
    _warn_unpinned(profile)
    return 0


def _warn_unpinned(profile: Profile) -> None:
    if profile.name == "gpu" and not profile.pinned:
        print(
            "note: images are not pinned by digest: a tag pushed again is not seen by the run id, so cached "
            "results of the old image come back (make images-push pins them in images.env)",
            file=sys.stderr,
        )


def _cmd_params(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile, train_image="-", eval_image="-", preset=args.preset)
    kind = PIPELINES[args.pipeline]
    parameters = kind.parameters(profile)
    arguments = _arguments(args, parameters)
    kind.check(arguments, parameters)
    print(describe([dataclasses.replace(p, default=arguments.get(p.name, p.default)) for p in parameters]))
    return 0


def _arguments(args: argparse.Namespace, parameters: list[PipelineParameter]) -> dict[str, Any]:
    """The run's arguments: the --config file's, then --param's."""
    return {**config_arguments(args.config, parameters), **parse_param_flags(args.param, parameters)}


def _prepared(args: argparse.Namespace, tmp: str) -> tuple[Profile, Path, dict[str, Any]]:
    """The profile, the compiled package (caching off everywhere with --no-cache) and the
    checked, typed arguments."""
    profile = _profile(args)
    kind = PIPELINES[args.pipeline]
    parameters = kind.parameters(profile)
    arguments = _arguments(args, parameters) if hasattr(args, "param") else {}
    kind.check(arguments, parameters)
    package = kind.compile(profile, Path(tmp) / f"{kind.name}.yaml")
    if args.no_cache:
        _disable_caching(package)
    _warn_unpinned(profile)
    return profile, package, arguments


def _disable_caching(package: Path) -> None:
    """Every task of the compiled package with caching off (what kfp.Client does to a package
    sent with a run; a version has to carry it itself)."""
    import yaml

    documents = list(yaml.safe_load_all(package.read_text()))
    spec = documents[0]
    for dag in [spec["root"].get("dag", {}), *(c.get("dag", {}) for c in spec.get("components", {}).values())]:
        for task in dag.get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": False}
    package.write_text(yaml.safe_dump_all(documents, sort_keys=True))


def _upload(args: argparse.Namespace, conn: remote.Connection, profile: Profile, package: Path) -> remote.PipelineVersion:
    kind = PIPELINES[args.pipeline]
    version = remote.upload(
        conn, package, pipeline_name=args.pipeline_name or kind.name,
        version=args.version or remote.version_name(package, profile.name + ("-nocache" if args.no_cache else "")),
        description=kind.description,
    )
    state = "uploaded" if version.uploaded else "already there"
    print(f"pipeline {version.pipeline_name!r} version {version.version_name!r} ({state}): "
          f"{remote.pipeline_link(conn.host, version)}", flush=True)
    return version


def _cmd_upload(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mammo-pipeline-") as tmp:
        profile, package, _ = _prepared(args, tmp)
        conn = _connect(args)
        version = _upload(args, conn, profile, package)
    print(f"pipeline id: {version.pipeline_id}")
    print(f"version id: {version.version_id}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mammo-pipeline-") as tmp:
        profile, package, arguments = _prepared(args, tmp)
        conn = _connect(args)
        version = _upload(args, conn, profile, package)
        run_name = args.run_name or f"{PIPELINES[args.pipeline].name} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}"
        run_id = remote.submit(
            conn, version, arguments, experiment=args.experiment, run_name=run_name,
            service_account=args.service_account,
        )
    print(f"run id: {run_id}")
    print(f"run: {remote.run_link(conn.host, run_id)}", flush=True)
    if not args.wait:
        return 0
    state, error = remote.wait(
        conn, run_id, poll_seconds=args.poll_interval, timeout_seconds=args.timeout,
        echo=lambda line: print(line, flush=True),
    )
    if state != "SUCCEEDED":
        print(f"mammo: error: run {run_id} ended {state}" + (f": {error}" if error else ""), file=sys.stderr)
        return 1
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    remote.check_cron(args.cron)
    with tempfile.TemporaryDirectory(prefix="mammo-pipeline-") as tmp:
        profile, package, arguments = _prepared(args, tmp)
        conn = _connect(args)
        version = _upload(args, conn, profile, package)
        created, replaced = remote.schedule(
            conn, version, arguments, name=args.name, cron=args.cron,
            experiment=args.experiment, service_account=args.service_account,
        )
    action = f"replaced {replaced} earlier schedule(s) of that name" if replaced else "new"
    print(f"schedule {created.name!r}: cron '{created.cron}', id {created.id} ({action})")
    return 0


def _cmd_schedules(args: argparse.Namespace) -> int:
    schedules = remote.list_schedules(_connect(args))
    if not schedules:
        print("no schedules")
        return 0
    print(f"{'NAME':<28}{'CRON':<18}{'ENABLED':<9}{'ID'}")
    for s in schedules:
        print(f"{s.name:<28}{s.cron or '-':<18}{'yes' if s.enabled else 'no':<9}{s.id}")
    return 0


def _cmd_unschedule(args: argparse.Namespace) -> int:
    conn = _connect(args)
    removed = remote.unschedule(conn, args.name)
    print(f"removed {removed} schedule(s) named {args.name!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    return run_guarded(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
