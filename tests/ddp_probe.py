"""A worker for the distributed tests, started by torchrun: trains one stage with the config
given as JSON and saves this rank's final weights as ``<weights_dir>/rank<R>.pt``, so a test can
check that every rank ends with the same model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from mammo.config import TrainConfig, UnfreezeConfig
from mammo.config_files import load_config
from mammo.engine.baseline import BaselineTrainer
from mammo.engine.unfreeze import UnfreezeTrainer


def main() -> None:
    stage, overrides, weights_dir = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    config_type, trainer_type = {
        "baseline": (TrainConfig, BaselineTrainer), "unfreeze": (UnfreezeConfig, UnfreezeTrainer),
    }[stage]
    trainer = trainer_type(load_config(config_type, overrides=overrides))
    trainer.run(resume=bool(os.environ.get("PROBE_RESUME")))
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.model.state_dict(), weights_dir / f"rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    main()
