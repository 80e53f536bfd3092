"""Constants and helpers shared by the component tests (conftest.py holds the fixtures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mammo import storage
from mammo.storage import MANIFEST_NAME, Manifest

from servers import S3Env

#: Tiny and fast: 32 px, tinynet, two batches per epoch, CPU in the main process, one
#: baseline epoch. Top-k by validation loss (it falls from epoch to epoch, so a second epoch
#: evicts the first).
PARAMS = {
    "backbone": "tinynet",
    "image_size": 32,
    "batch_size": 64,
    "workers": 0,
    "device": "cpu",
    "augment": False,
    "val_frac": 0.25,
    "test_frac": 0.25,
    "baseline_epochs": 1,
    "warmup_epochs": 0,
    "unfreeze_epochs": 1,
    "baseline_set": ["checkpoint.top_k=1", "checkpoint.primary=image.loss"],
}
#: What a trainer publishes besides its checkpoints.
TRAINER_FILES = {"config.yaml", "history.json", "summary.json", "result.json"}


@dataclass(frozen=True)
class Staged:
    """A bucket holding an uploaded dataset and its published split."""

    s3: S3Env
    dataset_uri: str
    split_uri: str


def assert_published(prefix: str, keys: set[str]) -> Manifest:
    """The manifest lists exactly ``keys`` and the prefix holds exactly those (and the
    manifest): no half-written or stale object beside a publication."""
    manifest = storage.read_manifest(prefix)
    assert set(manifest.objects) == keys
    stored = {uri[len(prefix) + 1 :] for uri in storage.list_objects(prefix)}
    assert stored == keys | {MANIFEST_NAME}
    return manifest


def packaged(project: Path, pyproject: Path) -> list[str]:
    """The packages a build of ``project`` holds: setuptools' own discovery with the include
    pattern of ``pyproject`` (components/pyproject.toml) (no list of folders anywhere)."""
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads(pyproject.read_text())
    return sorted(find_packages(where=str(project), **config["tool"]["setuptools"]["packages"]["find"]))
