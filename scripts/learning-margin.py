#!/usr/bin/env python3
"""How far above their thresholds the test suite's learning assertions land, across training
seeds, thread counts and PyTorch's CPU instruction sets. Prints one JSON object.

The learning tests (tests/test_engine.py: best validation image AUC > 0.8 and test breast AUC
> 0.75 after 8 epochs; tests/test_distributed.py: test image AUC > 0.75 after 8 epochs on two
processes) use ``tests/data_support.LEARNABLE``. This script runs the same configurations, built
by the tests' own helpers, with ``seed`` 0..N-1 and 42 (the tests' own), under ``OMP_NUM_THREADS=1``, ``=2`` and
``ATEN_CPU_CAPABILITY=default`` (each setting in a fresh process, as they act at import), and
reports every figure and the smallest margin. Usage: .venv/bin/python scripts/learning-margin.py
[--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
SETTINGS = {"threads1": {"OMP_NUM_THREADS": "1"}, "threads2": {"OMP_NUM_THREADS": "2"},
            "aten_default": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"}}
#: The seed the tests train with (the configuration's default).
TESTS_SEED = 42
THRESHOLDS = {"engine_best_val_image_auc": 0.8, "engine_test_breast_auc": 0.75, "ddp_test_image_auc": 0.75}


def one(seed: int, root: Path) -> dict[str, float]:
    """The three figures for one seed, in this process's environment."""
    os.environ["MAMMO_CACHE_DIR"] = str(root / "cache")  # decoded caches stay in the temp folder
    sys.path.insert(0, str(TESTS))
    import test_distributed
    import test_engine
    from data_support import LEARNABLE, write_learnable

    from mammo.config import EvalConfig
    from mammo.config_files import load_config
    from mammo.engine.baseline import train_baseline
    from mammo.evaluate import run_evaluation

    data = test_engine.Data(*write_learnable(root / "data"), LEARNABLE["image_size"])
    out = root / "engine"
    train_baseline(test_engine.baseline_config(data, out, seed=seed))
    history = json.loads((out / "history.json").read_text())

    def evaluate(checkpoint: Path, where: Path) -> dict:
        return run_evaluation(load_config(EvalConfig, overrides={
            **test_engine.EVAL_COMMON, "data.root": str(data.root), "split": str(data.split), "out": str(where),
            "checkpoints": [str(checkpoint)],
        })).metrics["candidates"][0]

    engine = evaluate(out / "best_auc.pt", root / "engine-eval")
    ddp = root / "ddp"
    settings = test_distributed.overrides((data.root, data.split), ddp, size=LEARNABLE["image_size"],
                                          epochs=test_distributed.DDP_EPOCHS,
                                          seed=seed, **{"data.batch_size": 32, "optimizer.lr": 0.01})
    test_distributed.probe(2, "baseline", settings, root / "weights", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return {
        "engine_best_val_image_auc": max(h["val"]["image"]["auc"] for h in history),
        "engine_test_breast_auc": engine["test"]["breast"]["auc"],
        "ddp_test_image_auc": evaluate(ddp / "last.pt", root / "ddp-eval")["test"]["image"]["auc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5,
                        help=f"Training seeds 0..N-1, plus the tests' own seed {TESTS_SEED} (default: %(default)s).")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        with tempfile.TemporaryDirectory() as root:
            print(json.dumps(one(args.one, Path(root))))
        return
    runs = []
    for name, env in SETTINGS.items():
        for seed in [TESTS_SEED, *range(args.seeds)]:
            done = subprocess.run([sys.executable, __file__, "--one", str(seed)], capture_output=True, text=True,
                                  env={**os.environ, **env}, check=False)
            if done.returncode != 0:
                sys.exit(f"learning-margin: {name} seed {seed} failed:\n{done.stderr[-3000:]}")
            runs.append({"setting": name, "seed": seed, **json.loads(done.stdout.strip().splitlines()[-1])})
    smallest = {key: min(run[key] for run in runs) for key in THRESHOLDS}
    print(json.dumps({
        "runs": runs, "thresholds": THRESHOLDS, "smallest": smallest,
        "smallest_margin": {key: round(smallest[key] - THRESHOLDS[key], 4) for key in THRESHOLDS},
    }, indent=1))


if __name__ == "__main__":
    main()
