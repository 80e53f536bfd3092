"""Image layout detection: nested, flat and patient-prefixed flat files, found or given."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mammo.data.layout import open_dataset, resolve_image_paths
from mammo.data.table import read_table
from mammo.errors import DataError


def _copy_as(src: Path, dst_root: Path, image_dir: str, layout: str) -> tuple[Path, Path]:
    """Copy the tiny dataset to ``dst_root`` with its images in ``image_dir`` and ``layout``."""
    dst_root.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "train.csv", dst_root / "train.csv")
    table = read_table(src)
    images = dst_root / image_dir
    for patient, image in zip(table["patient_id"], table["image_id"], strict=True):
        name = {
            "nested": Path(patient) / f"{image}.png",
            "flat": Path(f"{image}.png"),
            "flat_patient": Path(f"{patient}_{image}.png"),
        }[layout]
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "train_images" / patient / f"{image}.png", images / name)
    return dst_root, images


def _expected(images: Path, table: pd.DataFrame, layout: str) -> list[str]:
    out = []
    for patient, image in zip(table["patient_id"], table["image_id"], strict=True):
        name = {"nested": f"{patient}/{image}.png", "flat": f"{image}.png", "flat_patient": f"{patient}_{image}.png"}
        out.append(str(images / name[layout]))
    return out


@pytest.mark.parametrize("layout", ["nested", "flat", "flat_patient"])
@pytest.mark.parametrize("image_dir", [".", "train_images_processed_512"])
def test_layouts_are_detected_in_the_dataset_dir_or_a_subdirectory(
    tiny_dataset: Path, tmp_path: Path, layout: str, image_dir: str
) -> None:
    root, images = _copy_as(tiny_dataset, tmp_path / "ds", image_dir, layout)
    (root / "notes").mkdir()  # an unrelated subdirectory must not confuse detection
    table, paths = open_dataset(root)
    assert [Path(p) for p in paths] == [Path(p) for p in _expected(images, table, layout)]


def test_dataset_root_may_name_the_csv_file(tiny_dataset: Path) -> None:
    table, paths = open_dataset(tiny_dataset / "train.csv")
    assert len(paths) == len(table)
    assert Path(paths[0]) == tiny_dataset / "train_images" / table["patient_id"][0] / f"{table['image_id'][0]}.png"


def test_explicit_image_directory_elsewhere(tiny_dataset: Path, tmp_path: Path) -> None:
    _, images = _copy_as(tiny_dataset, tmp_path / "elsewhere", "pngs", "flat_patient")
    table = read_table(tiny_dataset)
    paths = resolve_image_paths(tiny_dataset, table, images=images)
    assert paths == _expected(images, table, "flat_patient")


def test_explicit_image_directory_must_exist(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image directory not found"):
        open_dataset(tiny_dataset, images=tmp_path / "nope")


def test_missing_image_names_row_id_path_and_count(tiny_dataset: Path, tmp_path: Path) -> None:
    root, images = _copy_as(tiny_dataset, tmp_path / "ds", "train_images", "nested")
    table = read_table(root)
    for row in (11, 17):
        (images / table["patient_id"][row] / f"{table['image_id'][row]}.png").unlink()
    with pytest.raises(DataError) as err:
        open_dataset(root)
    message = str(err.value)
    assert "\n" not in message
    assert f"row {11 + 2}" in message
    assert table["image_id"][11] in message
    assert str(images / table["patient_id"][11] / f"{table['image_id'][11]}.png") in message
    assert f"2 of {len(table)} images missing" in message


def test_missing_first_images_still_detects_the_layout(tiny_dataset: Path, tmp_path: Path) -> None:
    root, images = _copy_as(tiny_dataset, tmp_path / "ds", "train_images", "flat")
    table = read_table(root)
    (images / f"{table['image_id'][0]}.png").unlink()
    with pytest.raises(DataError, match=rf"row 2: image_id {table['image_id'][0]}: .*{images}"):
        open_dataset(root)


def test_no_images_anywhere(tiny_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    shutil.copy(tiny_dataset / "train.csv", tmp_path / "ds" / "train.csv")
    with pytest.raises(DataError, match="no images found for the first rows"):
        open_dataset(tmp_path / "ds")


@pytest.mark.parametrize(
    ("column", "value"),
    [("image_id", "../../../outside/evil"), ("image_id", "/ABS/outside/evil"), ("patient_id", ".."),
     ("patient_id", "../outside"), ("image_id", "sub\\evil")],
)
def test_ids_that_are_paths_never_reach_a_file_outside_the_dataset(
    tiny_dataset: Path, tmp_path: Path, column: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's repro: an image_id of ../../../outside/evil (or an absolute path) made the
    local data path read a PNG outside the dataset directory. Now: one line naming the row, for
    the library and for the commands (real files: the outside PNG exists)."""
    from mammo.cli import main

    root, _ = _copy_as(tiny_dataset, tmp_path / "ds" / "a" / "b", "train_images", "nested")
    outside = tmp_path / "ds" / "outside"
    outside.mkdir(parents=True)
    shutil.copy(next((root / "train_images").rglob("*.png")), outside / "evil.png")
    value = value.replace("/ABS", str(tmp_path / "ds"))
    table = pd.read_csv(root / "train.csv", dtype=str)
    table.loc[1, column] = value
    table.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=rf"row 3: {column} .* is not a plain name"):
        open_dataset(root)
    assert main(["split", "--data", str(root), "--out", str(tmp_path / "split")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a plain name" in err and not (tmp_path / "split").exists()


def test_a_resolved_image_path_outside_the_image_directory_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """Defence in depth below the table check: resolution itself refuses to leave the folder."""
    root, images = _copy_as(tiny_dataset, tmp_path / "ds", "train_images", "flat")
    table = read_table(root)
    table.loc[0, "image_id"] = "../train"  # bypassing read_table's check
    with pytest.raises(DataError, match=r"row 2: image_id '../train' resolves outside"):
        resolve_image_paths(root, table, images=images)


def test_links_inside_the_image_directory_must_stay_inside_it(tiny_dataset: Path, tmp_path: Path) -> None:
    """A whole image directory linked from elsewhere (data on another disk) and links between
    its own files are read; a PNG or a patient folder linked to somewhere else is refused,
    naming the row, the link and its target."""
    outside = tmp_path / "outside"
    shutil.copytree(tiny_dataset / "train_images", outside)
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(tiny_dataset / "train.csv", linked / "train.csv")
    (linked / "train_images").symlink_to(outside, target_is_directory=True)
    _, paths = open_dataset(linked)  # the image directory itself is a link: fine
    assert len(paths) == len(read_table(linked))

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    table = read_table(root)
    patient, image = str(table["patient_id"][0]), str(table["image_id"][0])
    png = root / "train_images" / patient / f"{image}.png"
    sibling = next(p for p in png.parent.iterdir() if p != png)
    png.unlink()
    png.symlink_to(sibling)  # a link to a file inside: fine
    assert open_dataset(root)[1][0] == str(png)
    png.unlink()
    png.symlink_to(outside / patient / f"{image}.png")
    with pytest.raises(DataError, match=rf"row 2: image_id {image}: {png} is a link to {outside}/.*, outside the image directory"):
        open_dataset(root)
    png.unlink()
    shutil.copy(sibling, png)
    folder = root / "train_images" / patient
    shutil.rmtree(folder)
    folder.symlink_to(outside / patient, target_is_directory=True)
    with pytest.raises(DataError, match=r"row 2: .* is a link to .*, outside the image directory"):
        open_dataset(root)
