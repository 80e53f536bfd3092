"""``mammo data cache``: fill a dataset's decoded cache ahead of training, with the same
loader (and worker processes) the first epoch would fill it with."""

from __future__ import annotations

import time

from mammo.data.cache import BAD, open_cache, resolve_cache_root
from mammo.data.dataset import MammoImages, make_loader
from mammo.data.layout import open_dataset
from mammo.errors import ConfigError
from mammo.imagesize import ImageSize, image_hw
from mammo.progress import track


def fill_cache(
    data: str, images: str | None, image_size: ImageSize, setting: str = "auto",
    *, workers: int = 2, bad_images: str = "fail",
) -> dict:
    """``mammo data cache``: decode every image of the dataset into its cache (what the first
    epoch would do), with ``workers`` DataLoader processes; returns counts and the folder."""
    root = resolve_cache_root(setting)
    if root is None:
        raise ConfigError("data.cache=off: nothing to fill")
    table, paths = open_dataset(data, images)
    hw = image_hw(image_size)
    cache = open_cache(root, [str(p) for p in paths], hw)
    before = cache.count()
    dataset = MammoImages([str(p) for p in paths], [0] * len(paths), image_size,
                          bad_images=bad_images, cache=cache, cache_rows=range(len(paths)))
    started = time.perf_counter()
    for _ in track(make_loader(dataset, batch_size=32, workers=workers), desc="decoding into the cache"):
        pass
    return {
        "cache": str(cache.info.folder),
        "images": len(paths),
        "already_stored": before,
        "decoded": cache.count() - before,
        "unreadable": cache.count(BAD),
        "size": f"{hw[0]}x{hw[1]}",
        "bytes": len(paths) * hw[0] * hw[1],
        "seconds": round(time.perf_counter() - started, 2),
    }
