"""Which stored objects hold a dataset's images: the RSNA layout rules of ``mammo.data.layout``
applied to a listing (``match_image_keys``), as the components fetch a dataset from storage."""

from __future__ import annotations

import pandas as pd
import pytest

from mammo.data.layout import LAYOUTS, image_stems, match_image_keys
from mammo.errors import ArtifactNotFoundError
from mammo.storage.cache import Wanted
from mammo_components.inputs import _image_objects


def test_every_layout_names_a_file_the_listing_rule_finds() -> None:
    for name, layout in LAYOUTS.items():
        key = f"train_images_512/{layout('p1', 'i1')}".replace("\\", "/")
        keys, missing = match_image_keys([key, "train.csv"], [("p1", "i1")])
        assert (keys, missing) == ([key], []), name
    assert image_stems("p1", "i1") == ["i1", "p1_i1"]


def test_matching_prefers_the_image_name_and_reports_missing_images() -> None:
    keys = ["a/p1/i1.png", "b/p1_i1.png", "p2_i2.PNG", "notes/i3.txt"]
    found, missing = match_image_keys(keys, [("p1", "i1"), ("p2", "i2"), ("p3", "i3"), ("p1", "i1")])
    assert found == ["a/p1/i1.png", "p2_i2.PNG"]
    assert missing == ["i3"]


def test_image_objects_name_the_dataset_and_the_first_missing_image() -> None:
    table = pd.DataFrame({"patient_id": ["1", "2"], "image_id": ["10", "20"]})
    objects = {key: Wanted(f"s3://b/ds/{key}", key) for key in ("train.csv", "1/10.png")}
    with pytest.raises(ArtifactNotFoundError, match=r"s3://b/ds: no PNG for image_id 20 \(1 of 2 images"):
        _image_objects("s3://b/ds", table, objects)
    objects["x/2_20.png"] = Wanted("s3://b/ds/x/2_20.png", "x/2_20.png")
    assert [w.rel for w in _image_objects("s3://b/ds", table, objects)] == ["1/10.png", "x/2_20.png"]
