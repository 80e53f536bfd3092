"""``mammo run``: the whole job on one machine, on the local disk.

split -> baseline -> unfreeze -> evaluate, laid out like the object store of a cluster run:
``<workdir>/datasets/...``, ``<workdir>/splits/<fingerprint>/``, ``<workdir>/runs/<run-id>/<stage>/``.
Without ``--data`` it generates (once) and uses the synthetic demo dataset.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mammo.config import PipelineParams, load_config, stage_configs
from mammo.errors import ConfigError

log = logging.getLogger(__name__)


def load_preset(name: str) -> dict[str, Any]:
    text = resources.files("mammo").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def resolve_params(preset: str, config_file: str | None, sets: list[str], data: str | None) -> tuple[PipelineParams, dict[str, Any]]:
    """Preset < config file < --set < --data; returns the params and the demo-data recipe."""
    chosen = load_preset(preset)
    base = dict(chosen.get("params", {}))
    if config_file is not None:
        base = {**base, **load_config(PipelineParams, config_file).model_dump(exclude_unset=True)}
    params = load_config(PipelineParams, None, sets, {"data": data})
    merged = PipelineParams.model_validate({**base, **params.model_dump(exclude_unset=True)})
    return merged, dict(chosen.get("synth", {}))


def demo_dataset(workdir: Path, recipe: dict[str, Any]) -> Path:
    """Generate the synthetic demo dataset once; later runs reuse it."""
    from mammo.data.synth import write_synthetic_dataset

    name = f"demo-{recipe.get('patients', 200)}p-{recipe.get('image_size', 512)}px-s{recipe.get('seed', 0)}"
    target = workdir / "datasets" / name
    if not (target / "train.csv").exists():
        log.info("generating the synthetic demo dataset in %s", target)
        write_synthetic_dataset(target, **recipe)
    return target


def run_local(workdir: str, data: str | None, preset: str, config_file: str | None, sets: list[str]) -> dict[str, Any]:
    from mammo.engine.baseline import train_baseline
    from mammo.engine.unfreeze import train_unfreeze
    from mammo.evaluate import evaluate
    from mammo.split import run_split

    root = Path(workdir).resolve()
    params, recipe = resolve_params(preset, config_file, sets, data)
    if params.data is None:
        params.data = str(demo_dataset(root, recipe))
    elif not Path(params.data).exists():
        raise ConfigError(f"--data: {params.data} does not exist")
    print(f"mammo run: local store {root}", flush=True)
    started = time.monotonic()

    split_tmp = root / "splits" / ".incoming"
    summary = run_split(
        data=params.data, out=str(split_tmp), val_frac=params.val_frac, test_frac=params.test_frac,
        seed=params.seed, warmup_ratio=params.warmup_ratio,
    )
    split_dir = root / "splits" / summary["fingerprint"]
    if split_dir.exists():
        for f in split_tmp.iterdir():
            f.unlink()
        split_tmp.rmdir()
    else:
        split_tmp.rename(split_dir)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / "runs" / run_id
    runs = {stage: str(run_dir / stage) for stage in ("baseline", "unfreeze", "evaluate")}
    baseline_cfg, unfreeze_cfg, eval_cfg = stage_configs(params, split=str(split_dir), runs=runs)

    print(f"[1/4] split {split_dir.name[:12]}: done", flush=True)
    print(f"[2/4] baseline training ({baseline_cfg.epochs} epochs max) -> {runs['baseline']}", flush=True)
    train_baseline(baseline_cfg)
    unfreeze_cfg.init = str(Path(runs["baseline"]) / "best_auc.pt")
    print(f"[3/4] gradual unfreezing ({unfreeze_cfg.epochs} epochs max) -> {runs['unfreeze']}", flush=True)
    train_unfreeze(unfreeze_cfg)
    eval_cfg.checkpoints = [unfreeze_cfg.init, str(Path(runs["unfreeze"]) / "best_auc.pt")]
    print(f"[4/4] evaluation -> {runs['evaluate']}", flush=True)
    result = evaluate(eval_cfg)
    print_summary(result, time.monotonic() - started)
    return result


def print_summary(result: dict[str, Any], seconds: float) -> None:
    def cell(value: Any) -> str:
        return "  n/a " if value is None else f"{value:6.3f}"

    print(f"\nbest model: {result['best']} (threshold {cell(result['threshold']).strip()})")
    print(f"{'split':<6}{'level':<8}{'AUC':>7}{'PR-AUC':>8}{'pF1':>7}{'sens':>7}{'spec':>7}")
    for split in ("val", "test"):
        for level in ("image", "breast"):
            m = result[split][level]
            print(
                f"{split:<6}{level:<8}{cell(m['auc']):>7}{cell(m['pr_auc']):>8}{cell(m['pf1']):>7}"
                f"{cell(m['sensitivity']):>7}{cell(m['specificity']):>7}"
            )
    print(f"\nreport: {result['out']}/report.html")
    print(f"finished in {seconds / 60:.1f} min")
