"""PNG decoding, the dataset, collation and the loaders training uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import write_png

from mammo.data.dataset import MammoImages, balanced_weights, collate_batch, make_loader
from mammo.engine.distributed import EpochSampler
from mammo.data.decode import read_png
from mammo.data.layout import open_dataset
from mammo.errors import DataError


def _write_gray(path, pixels: torch.Tensor) -> str:
    write_png(pixels.to(torch.uint8).unsqueeze(0), str(path))
    return str(path)


def _garbage_png(path) -> str:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 10)
    return str(path)


def test_8bit_png_decodes_unchanged(tmp_path) -> None:
    pixels = torch.arange(32 * 32).reshape(32, 32) % 256
    image = read_png(_write_gray(tmp_path / "a.png", pixels), 32)
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32)
    assert torch.equal(image[0], pixels.to(torch.uint8))


def test_16bit_png_scales_to_the_full_uint8_range(tmp_path) -> None:
    pixels = np.zeros((16, 16), dtype=np.uint16)
    pixels[0, :4] = [0, 256, 32896, 65535]
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_png(str(path), 16)
    assert image.dtype == torch.uint8 and image.shape == (1, 16, 16)
    assert image[0, 0, :4].tolist() == [0, 1, 128, 255]


def test_rgb_png_becomes_one_channel(tmp_path) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(np.full((20, 20, 3), 200, dtype=np.uint8)).save(path)
    image = read_png(str(path), 20)
    assert image.shape == (1, 20, 20) and int(image.min()) == int(image.max()) == 200


def test_resized_only_when_the_stored_size_differs(tmp_path) -> None:
    pixels = torch.zeros(64, 64)
    pixels[:, 32:] = 200
    image = read_png(_write_gray(tmp_path / "big.png", pixels), 32)
    assert image.shape == (1, 32, 32)
    assert image[0, :, :15].max() == 0 and image[0, :, 17:].min() == 200
    assert 0 < image[0, 0, 15:17].float().mean() < 200  # antialiased edge


def test_corrupted_png_raises_one_line_naming_the_file(tmp_path) -> None:
    path = _garbage_png(tmp_path / "broken.png")
    with pytest.raises(DataError, match="broken.png: not a readable PNG") as err:
        read_png(path, 32)
    assert "\n" not in str(err.value) and ".cpp" not in str(err.value)
    with pytest.raises(DataError, match="empty.png"):
        (tmp_path / "empty.png").write_bytes(b"")
        read_png(str(tmp_path / "empty.png"), 32)


def test_dataset_items_and_collate(tiny_dataset) -> None:
    table, paths = open_dataset(tiny_dataset)
    dataset = MammoImages(paths, table["cancer"].tolist(), 32)
    assert len(dataset) == len(table)
    image, label, index = dataset[3]
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32)
    assert label == float(table["cancer"][3]) and index == 3
    batch = collate_batch([dataset[0], None, dataset[1]])
    assert batch["images"].shape == (2, 1, 32, 32) and batch["images"].dtype == torch.uint8
    assert batch["labels"].dtype == torch.float32 and batch["index"].dtype == torch.int64
    assert batch["index"].tolist() == [0, 1] and batch["skipped"] == 1
    empty = collate_batch([None, None])
    assert empty["images"].shape[0] == 0 and empty["skipped"] == 2


def test_dataset_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError):
        MammoImages(["a.png", "b.png"], [0], 32)


def _with_bad_image(tiny_dataset, tmp_path) -> tuple[list[str], list[int]]:
    table, paths = open_dataset(tiny_dataset)
    paths, labels = paths[:10], table["cancer"].tolist()[:10]
    paths[4] = _garbage_png(tmp_path / "corrupt.png")
    return paths, labels


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_fails_the_loader_with_one_line(tiny_dataset, tmp_path, workers: int) -> None:
    paths, labels = _with_bad_image(tiny_dataset, tmp_path)
    loader = make_loader(MammoImages(paths, labels, 32), batch_size=4, workers=workers)
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(err.value).startswith(f"{paths[4]}: not a readable PNG")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_is_skipped_and_counted(tiny_dataset, tmp_path, caplog, workers: int) -> None:
    paths, labels = _with_bad_image(tiny_dataset, tmp_path)
    loader = make_loader(MammoImages(paths, labels, 32, bad_images="skip"), batch_size=4, workers=workers)
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 1
    seen = torch.cat([b["index"] for b in batches]).tolist()
    assert seen == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert [len(b["images"]) for b in batches] == [4, 3, 2]
    if workers == 0:  # worker processes log to their own stderr
        assert "corrupt.png" in caplog.text


def test_loader_settings_and_seeded_order(tiny_dataset) -> None:
    table, paths = open_dataset(tiny_dataset)
    dataset = MammoImages(paths, table["cancer"].tolist(), 32)

    def order(seed: int) -> list[int]:
        loader = make_loader(dataset, batch_size=8, workers=0, shuffle=True, seed=seed)
        return torch.cat([b["index"] for b in loader]).tolist()

    assert order(1) == order(1) != order(2)
    assert sorted(order(1)) == list(range(len(dataset)))
    threaded = make_loader(dataset, batch_size=8, workers=2, device="cuda", drop_last=True)
    assert threaded.pin_memory and threaded.persistent_workers and threaded.prefetch_factor >= 2
    assert threaded.drop_last and len(threaded) == len(dataset) // 8
    assert not make_loader(dataset, batch_size=8, workers=0).pin_memory


@pytest.mark.slow
def test_workers_deliver_the_same_batches(tiny_dataset) -> None:
    table, paths = open_dataset(tiny_dataset)
    dataset = MammoImages(paths, table["cancer"].tolist(), 32)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(dataset, batch_size=16, workers=workers, shuffle=True, seed=5)
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])


def test_balanced_sampler_draws_both_classes_equally() -> None:
    labels = [1] * 50 + [0] * 950

    def draw(seed: int) -> list[int]:
        return list(EpochSampler(len(labels), 10, weights=balanced_weights(labels), seed=seed))

    drawn = draw(3)
    assert len(drawn) == len(labels)
    positives = sum(labels[i] for i in drawn)
    assert 400 < positives < 600
    assert drawn == draw(3)
    assert drawn != draw(4)
