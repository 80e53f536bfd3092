"""The split builder stores one split per dataset version and keeps patients where they were."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mammo import storage
from mammo.errors import DataError
from mammo_components.split_builder import entrypoint as split_builder

from component_support import PARAMS, Staged, assert_published
from servers import S3Env


def stored_split(split_uri: str, tmp_path: Path) -> pd.DataFrame:
    local = storage.fetch_from_manifest(split_uri, tmp_path / split_uri.rsplit("/", 1)[-1])
    return pd.read_csv(local["split.csv"], dtype=str)


def test_the_stored_split_is_reused(staged: Staged, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = storage.read_manifest(staged.split_uri)
    again = split_builder.run(
        dataset_uri=staged.dataset_uri, store_uri=staged.s3.uri,
        params={**PARAMS, "val_frac": 0.3}, workdir=str(tmp_path),
    )
    assert again["reused"] and again["split_uri"] == staged.split_uri
    assert again["split_sha256"] == before.objects["split.csv"].sha256
    assert storage.read_manifest(staged.split_uri) == before  # not written again
    assert storage.get_json(f"{staged.split_uri}/result.json")["reused"] is False  # the build's record
    assert any("val_frac=0.25 (requested 0.3)" in r.getMessage() for r in caplog.records)


def test_grown_dataset_keeps_every_earlier_patient_in_its_split(
    s3_env: S3Env, synth_data: Path, tmp_path: Path
) -> None:
    dataset_uri = f"{s3_env.uri}/datasets/growing"
    table = pd.read_csv(synth_data / "train.csv", dtype={"patient_id": str, "image_id": str})
    table.to_csv(tmp_path / "v1.csv", index=False)
    storage.put_file(tmp_path / "v1.csv", f"{dataset_uri}/train.csv")  # the split needs no images
    first = split_builder.run(dataset_uri=dataset_uri, store_uri=s3_env.uri, params=PARAMS, workdir=str(tmp_path / "a"))

    newcomers = table[table["patient_id"].isin(table["patient_id"].unique()[:8])].assign(
        patient_id=lambda t: "new" + t["patient_id"], image_id=lambda t: "new" + t["image_id"]
    )
    pd.concat([table, newcomers]).to_csv(tmp_path / "v2.csv", index=False)
    storage.put_file(tmp_path / "v2.csv", f"{dataset_uri}/train.csv")
    grown = split_builder.run(dataset_uri=dataset_uri, store_uri=s3_env.uri, params=PARAMS, workdir=str(tmp_path / "b"))

    assert not grown["reused"] and grown["split_uri"] != first["split_uri"]
    assert grown["previous"]["kept_patients"] == 36
    assert (grown["previous"]["new_patients"], grown["previous"]["dropped_patients"]) == (8, 0)
    assert grown["counts"]["all"]["patients"] == 44
    old, new = stored_split(first["split_uri"], tmp_path), stored_split(grown["split_uri"], tmp_path)
    kept = new.merge(old, on="image_id", suffixes=("", "_before"))
    assert len(kept) == len(old) and (kept["split"] == kept["split_before"]).all()
    manifest = assert_published(grown["split_uri"], {"split.csv", "split.json", "result.json"})
    assert manifest.metadata["generation"] == 2
    assert manifest.metadata["previous_split_uri"] == first["split_uri"]
    assert storage.read_manifest(first["split_uri"]).metadata["generation"] == 1  # still there


def test_invalid_table_is_named_by_its_uri(s3_env: S3Env, tmp_path: Path) -> None:
    dataset_uri = f"{s3_env.uri}/datasets/broken"
    storage.put_bytes(b"patient_id,image_id,laterality,cancer\n1,10,L,0\n1,11,R,2\n", f"{dataset_uri}/train.csv")
    with pytest.raises(DataError, match=f"^{dataset_uri}/train.csv: row 3: "):
        split_builder.run(dataset_uri=dataset_uri, store_uri=s3_env.uri, params=PARAMS, workdir=str(tmp_path))
    assert storage.list_objects(f"{s3_env.uri}/splits") == []
