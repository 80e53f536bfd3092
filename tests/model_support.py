"""Models for tests that need one but not a trained one: a real (untrained) network saved as a
mammo checkpoint in a fraction of a second, and a production pointer holding it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

import torch

from mammo import storage
from mammo.config import ModelConfig
from mammo.engine.checkpoint import FORMAT, library_versions
from mammo.export import export_name, write_export
from mammo.models import build_model


def fake_checkpoint(path: Path, *, epoch: int = 1, image_size: int = 32, seed: int = 0) -> Path:
    """An untrained tinynet checkpoint (``epoch`` and ``seed`` make different files)."""
    torch.manual_seed(seed)
    config = ModelConfig(backbone="tinynet")
    payload = {
        "format": FORMAT, "model": build_model(config).state_dict(), "model_config": config.model_dump(mode="json"),
        "image_size": image_size, "stage": "baseline", "epoch": epoch, "split_fingerprint": "f" * 64,
        "versions": library_versions(), "history": [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def publish_production(prefix: str, checkpoint: Path, *, threshold: float, work: Path) -> str:
    """A production pointer at ``prefix`` as the promoter leaves it: the checkpoint, its
    weights-only export and the threshold in the manifest; returns the checkpoint's sha256."""
    from mammo.storage.integrity import sha256_file

    digest = sha256_file(checkpoint)
    export = write_export(checkpoint, work / "export.pt", threshold=threshold, source_sha256=digest)
    key = f"model-{digest[:12]}.pt"
    storage.publish(
        {key: checkpoint, export_name(digest): Path(export["path"])}, prefix,
        metadata={"checkpoint": key, "sha256": digest, "export": export_name(digest), "threshold": threshold},
    )
    return digest


def unlabelled(tiny_dataset: Path, target: Path) -> Path:
    """The tiny dataset as new studies: test.csv without the cancer column."""
    shutil.copytree(tiny_dataset, target)
    table = pd.read_csv(target / "train.csv", dtype=str)
    (target / "train.csv").unlink()
    table.drop(columns=["cancer"]).to_csv(target / "test.csv", index=False)
    return target
