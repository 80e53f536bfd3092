"""``mammo run``: the whole job on one machine, as the same Kubeflow pipeline the cluster runs.

The ``mammo-training`` pipeline (split builder -> baseline trainer -> unfreeze trainer ->
evaluator -> promoter) runs through kfp.local, each step a subprocess of this Python
environment. Its store is a local directory (``--workdir``, the embedded default) laid out like
the cluster's bucket - ``splits/``, ``runs/<run-id>/<component>/``, ``models/<name>/production/``
- or, when ``MINIO_ENDPOINT`` is set, MinIO (``s3://mammo``, or ``--store``/``MAMMO_STORE_URI``).
Without ``--data`` it generates (once) and uses the synthetic demo dataset.

Parameters: preset < ``--config`` file < ``--set key=value`` < ``--data``; keys are pipeline
parameters (``mammo pipeline params``). kfp is imported only when the run starts.
"""

from __future__ import annotations

import hashlib
import json
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


from mammo.config import PipelineParams
from mammo.config_files import load_config
from mammo.data.layout import holds_dicoms
from mammo.errors import ConfigError, MammoError
from mammo.summaries import metric_columns
from mammo_pipelines.parameters import load_preset

DEFAULT_BUCKET_URI = "s3://mammo"
#: The work directory's lock (``workdir_lock``).
LOCK_NAME = ".mammo-run.lock"


def resolve_params(
    preset: str, config_file: str | None, sets: list[str], data: str | None
) -> tuple[PipelineParams, dict[str, Any]]:
    """Preset (``presets/``) < config file < --set < --data. Returns the parameters and the demo-data recipe."""
    chosen = load_preset(preset)
    params = load_config(
        PipelineParams, config_file, sets, {"data": data}, base=dict(chosen.get("params") or {})
    )
    return params, dict(chosen.get("synth") or {})


def demo_dataset(workdir: Path, recipe: dict[str, Any]) -> Path:
    """Generate the synthetic demo dataset once; later runs reuse it."""
    from mammo.data.synth import write_synthetic_dataset

    # The whole recipe names the folder: a changed recipe (prevalence, lesion difficulty) gets
    # a dataset of its own instead of an earlier one of the same size.
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    name = f"demo-{recipe.get('patients', 200)}p-{recipe.get('image_size', 512)}px-s{recipe.get('seed', 0)}-{digest}"
    target = workdir / "datasets" / name
    if not (target / "train.csv").exists():
        print(f"generating the synthetic demo dataset in {target}", flush=True)
        write_synthetic_dataset(target, **recipe)
    return target


def choose_store(workdir: Path, store: str | None) -> tuple[str, str]:
    """The store URI and how to describe it: ``--store``, ``MAMMO_STORE_URI``, MinIO's bucket
    ``mammo`` when ``MINIO_ENDPOINT`` is set, else the local work directory."""
    chosen = store or os.environ.get("MAMMO_STORE_URI")
    endpoint = os.environ.get("MINIO_ENDPOINT")
    if chosen is None and endpoint:
        chosen = DEFAULT_BUCKET_URI
    if chosen is None:
        return str(workdir), "local directory"
    if chosen.startswith("s3://"):
        if not endpoint:
            raise ConfigError(f"store {chosen}: set MINIO_ENDPOINT (and MINIO_ACCESS_KEY/MINIO_SECRET_KEY) to use S3")
        return chosen, f"S3 at {endpoint}"
    return str(Path(chosen).resolve()), "local directory"


def pipeline_arguments(params: PipelineParams, store_uri: str) -> dict[str, Any]:
    """PipelineParams as the pipeline's arguments."""
    values = params.model_dump(mode="json")
    values["dataset_uri"] = values.pop("data")
    values["weights"] = values["weights"] or ""
    return {**values, "store_uri": store_uri}


def run_local(
    workdir: str,
    data: str | None,
    preset: str,
    config_file: str | None,
    sets: list[str],
    store: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the pipeline locally and print a summary; returns what the summary shows."""
    try:
        import mammo_components  # noqa: F401 (the steps run its entrypoints in this environment)
    except ModuleNotFoundError:
        raise MammoError("mammo_components is not installed: run `make venv` (or pip install -e components)") from None
    from mammo_pipelines.local import run_locally

    root = Path(workdir).resolve()
    params, recipe = resolve_params(preset, config_file, sets, data)
    with workdir_lock(root):
        return _run_locked(root, params, recipe, store, verbose, run_locally)


def workdir_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """One ``mammo run`` per work directory at a time: its kfp-local folder, caches, logs and
    (the default) local store are not made for two writers. An exclusive ``flock`` on
    ``<workdir>/.mammo-run.lock``, released by the kernel when the process ends however it
    ends; a second run fails at once with one line naming the holder, before writing anything."""

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        try:
            root.mkdir(parents=True, exist_ok=True)
            handle = open(root / LOCK_NAME, "a+")
        except OSError as exc:
            raise ConfigError(f"--workdir {root}: cannot be used ({exc.strerror or exc})") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise MammoError(
                    f"another mammo run holds {root} ({holder}): wait for it to finish, or use another --workdir"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                handle.flush()

    return held()


def _run_locked(
    root: Path, params: PipelineParams, recipe: dict[str, Any], store: str | None, verbose: bool, run_locally: Any
) -> dict[str, Any]:
    if params.data is None:
        params.data = str(demo_dataset(root, recipe))
    elif not params.data.startswith("s3://"):
        if not Path(params.data).exists():
            raise ConfigError(f"--data: {params.data} does not exist")
        params.data = str(Path(params.data).resolve())
        if "dataset_format" not in params.model_fields_set and holds_dicoms(Path(params.data)):
            params.dataset_format = "dicom"
            print(f"mammo run: {params.data} holds DICOM files: dataset_format dicom (the preprocessor runs first)", flush=True)
    store_uri, kind = choose_store(root, store)
    arguments = pipeline_arguments(params, store_uri)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_file = root / "logs" / f"run-{stamp}-{os.getpid()}.log"
    print(f"mammo run: store {store_uri} ({kind}); data {params.data}", flush=True)
    print(f"mammo run: pipeline mammo-training through kfp.local; full log {log_file}", flush=True)
    started = time.monotonic()
    outcome = run_locally(
        arguments, pipeline_root=root / "kfp-local", log_file=log_file,
        cache_dir=root / "cache", verbose=verbose,
    )
    summary = summarize(outcome, store_uri, params.model_name, log_file)
    print_summary(summary, time.monotonic() - started)
    return summary


def summarize(outcome: dict[str, Any], store_uri: str, model_name: str, log_file: Path) -> dict[str, Any]:
    """What happened: metrics, whether production now holds this run's best model, locations."""
    from mammo.storage import ArtifactNotFoundError, join, production_model_uri, read_manifest

    production = production_model_uri(store_uri, model_name)
    try:
        current = read_manifest(production).metadata.get("sha256")
    except ArtifactNotFoundError:
        current = None
    decision = outcome["decision"]
    run_prefix = join(store_uri, "runs", outcome["run_id"])
    return {
        "best": outcome["name"],
        "best_uri": outcome["uri"],
        "threshold": outcome["threshold"],
        "metrics": outcome["metrics"],
        "promoted": bool(decision["promote"]) and current == outcome["sha256"],
        "reason": decision["reason"],
        "decision": decision,
        "warnings": list(outcome.get("warnings") or []),
        "bootstrap": outcome.get("bootstrap"),
        "production_uri": production,
        "report_uri": outcome["report_uri"],
        "checkpoints": [join(run_prefix, "baseline_trainer"), join(run_prefix, "unfreeze_trainer")],
        "run_id": outcome["run_id"],
        "kfp_run_id": outcome.get("kfp_run_id") or None,
        "ensemble": outcome.get("ensemble"),
        "log": str(log_file),
    }


def _cell(value: Any) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def _interval(figure: Any) -> str:
    """``[0.712, 0.873]`` from ``{"low": ..., "high": ...}``, blank when there is none."""
    if not isinstance(figure, dict) or figure.get("low") is None or figure.get("high") is None:
        return ""
    return f"[{figure['low']:.3f}, {figure['high']:.3f}]"


def print_ensemble(ensemble: dict[str, Any]) -> None:
    """folds > 1: the full-data models', each fold model's and the ensemble's figures with
    intervals (each at its own threshold), and the paired comparison of the ensemble with the
    best single fold model."""
    names = [*ensemble.get("full_data", []), *ensemble["members"], "ensemble"]
    width = max(len(name) for name in names) + 2
    print(f"\nk-fold, {ensemble['split']} {ensemble['level']} level (each model at its own threshold):")
    print(f"{'model':<{width}}{'AUC':>7} {'95% interval':<16}{'sens':>7}{'spec':>7}")
    for name in names:
        figures = ensemble["figures"][name]
        print(f"{name:<{width}}{_cell(figures['auc']['value']):>7} {_interval(figures['auc']):<16}"
              f"{_cell(figures['sensitivity']['value']):>7}{_cell(figures['specificity']['value']):>7}")
    paired = ensemble["ensemble_vs_best_single"]
    difference = paired["difference"]
    print(f"ensemble - best single fold ({ensemble['best_single']}): {paired['metric'].upper()} "
          f"{_cell(difference['value']).strip()} {_interval(difference)} (paired bootstrap over "
          f"{int(paired['n_patients'])} patients; share of resamples where the ensemble is not better: "
          f"{_cell(paired['p_not_better']).strip()})")


def print_summary(summary: dict[str, Any], seconds: float) -> None:
    print(f"\nbest model: {summary['best']} (threshold {_cell(summary['threshold']).strip()})")
    # The first column (the registry's first, AUC) with its interval, then the others.
    (first_title, first), *others = metric_columns()
    print(f"{'split':<6}{'level':<8}{first_title:>7} {'95% interval':<16}" + "".join(f"{title:>7}" for title, _ in others))
    for split in ("val", "test"):
        for level in ("image", "breast"):
            m = summary["metrics"][split][level]
            ci = (m.get("ci") or {}).get(first)
            print(f"{split:<6}{level:<8}{_cell(m.get(first)):>7} {_interval(ci):<16}"
                  + "".join(f"{_cell(m.get(key)):>7}" for _, key in others))
    boot = summary.get("bootstrap") or {}
    if boot.get("resamples"):
        print(f"intervals: {int(boot['resamples'])} bootstrap resamples of patients (seed {int(boot.get('seed') or 0)}); "
              "every figure's interval is in the report")
    for warning in summary.get("warnings") or []:
        print(f"warning: {warning}")
    if summary.get("ensemble"):
        print_ensemble(summary["ensemble"])
    decision = summary.get("decision") or {}
    if decision.get("rule"):
        print(f"\npromotion rule: {decision['rule']} on {decision.get('metric')}, margin {decision.get('margin')}, "
              f"floor promotion_min={decision.get('floor')}")
    verdict = "promoted to" if summary["promoted"] else "not promoted; production stays"
    print(f"model: {verdict} {summary['production_uri']} ({summary['reason']})")
    print(f"report:      {summary['report_uri']}")
    print(f"checkpoints: {summary['checkpoints'][0]}/")
    print(f"             {summary['checkpoints'][1]}/")
    print(f"finished in {seconds / 60:.1f} min (run {summary['run_id']})")
