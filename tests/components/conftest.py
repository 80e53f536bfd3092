"""Fixtures of the component tests: a tiny synthetic dataset, and that dataset uploaded to the
S3 test server and split by the split builder, as a pipeline run would find it. The S3 server
and Pushgateway fixtures are in ``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo import storage
from mammo_components.split_builder import entrypoint as split_builder

from component_support import PARAMS, Staged
from servers import S3Env


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 patients (160 images) at 32 px: val and test hold both classes."""
    from mammo.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("component-data") / "data"
    write_synthetic_dataset(root, patients=36, image_size=32, prevalence=0.3, seed=0)
    return root


@pytest.fixture
def staged(s3_env: S3Env, synth_data: Path, tmp_path: Path) -> Staged:
    """The dataset uploaded with ``mammo.storage`` (objects carry their sha256, no manifest)
    and split by the split builder."""
    dataset_uri = f"{s3_env.uri}/datasets/synth"
    storage.upload_dir(synth_data, dataset_uri)
    split = split_builder.run(
        dataset_uri=dataset_uri, store_uri=s3_env.uri, params=PARAMS, workdir=str(tmp_path / "split-pod")
    )
    return Staged(s3_env, dataset_uri, split["split_uri"])
