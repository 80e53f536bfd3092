"""Join a stored split with the dataset on disk and build the loaders a run needs."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader

from mammo.config import RunConfig
from mammo.data.cache import DecodedCache, open_cache, resolve_cache_root
from mammo.data.dataset import MammoImages, balanced_weights, make_loader
from mammo.data.layout import open_dataset
from mammo.data.table import breast_ids, table_path
from mammo.engine.distributed import EpochSampler, ShardSampler, local_batch_size
from mammo.engine.runtime import Runtime
from mammo.errors import ConfigError, DataError
from mammo.imagesize import image_hw
from mammo.split import SPLIT_CSV, read_split

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """The dataset rows a split refers to, with their split name and image path."""

    frame: pd.DataFrame  # patient_id, image_id, laterality, cancer, split, breast_id, path, cache_row
    summary: dict[str, Any]
    fingerprint: str  # sha256 of split.csv: identifies the exact assignment a model saw
    #: Every image of the dataset, in table order: the rows of its decoded cache.
    dataset_paths: list[str] = field(default_factory=list)
    _caches: dict[tuple[int, int], DecodedCache | None] = field(default_factory=dict, repr=False)

    def decoded_cache(self, config: RunConfig, size: int | None = None) -> DecodedCache | None:
        """The dataset's decoded cache at ``size`` (default the config's), per ``data.cache``;
        opened (and made) once per size. The first process of a node verifies it."""
        root = resolve_cache_root(config.data.cache)
        if root is None:
            return None
        hw = image_hw(size or config.data.image_size)
        if hw not in self._caches:
            verify = os.environ.get("LOCAL_RANK", "0") == "0"
            self._caches[hw] = open_cache(root, self.dataset_paths, hw, verify=verify)
        return self._caches[hw]

    def rows(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def warmup_rows(self) -> pd.DataFrame:
        keep = set(self.summary["warmup"]["breasts"])
        train = self.rows("train")
        return train[train["breast_id"].isin(keep)].reset_index(drop=True)


def require(value: Any, flag: str) -> Any:
    if value in (None, "", []):
        raise ConfigError(f"{flag} is required")
    return value


def load_split_data(config: RunConfig) -> SplitData:
    """Read the split and the dataset; every image of the split must exist in the dataset."""
    root = require(config.data.root, "--data (data.root)")
    split_dir = require(config.split, "--split (split)")
    table, paths = open_dataset(root, config.data.images)
    assignments, summary = read_split(split_dir)
    table = table.assign(path=paths)
    merged = assignments[["image_id", "split", "cancer"]].merge(
        table[["patient_id", "image_id", "laterality", "cancer", "path"]],
        on="image_id",
        how="left",
        suffixes=("_split", ""),
    )
    absent = merged["path"].isna()
    if absent.any():
        example = merged.loc[absent, "image_id"].iloc[0]
        raise DataError(
            f"{split_dir}: {int(absent.sum())} image(s) of the split are not in "
            f"{table_path(root)} (e.g. image_id {example}); rebuild the split for this dataset"
        )
    changed = merged["cancer_split"].astype(int) != merged["cancer"].astype(int)
    if changed.any():
        example = merged.loc[changed, "image_id"].iloc[0]
        raise DataError(
            f"{split_dir}: cancer label of image_id {example} differs from {table_path(root)}; "
            "rebuild the split for this dataset"
        )
    merged["cache_row"] = merged["image_id"].map(pd.Series(range(len(table)), index=table["image_id"]))
    frame = merged.drop(columns="cancer_split")
    frame["cancer"] = frame["cancer"].astype(int)
    frame["breast_id"] = breast_ids(frame)
    unused = len(table) - len(frame)
    if unused:
        log.info("%d dataset image(s) are not in the split and are not used", unused)
    digest = hashlib.sha256((Path(split_dir) / SPLIT_CSV).read_bytes()).hexdigest()
    return SplitData(frame=frame, summary=summary, fingerprint=digest, dataset_paths=[str(p) for p in paths])


def _images(rows: pd.DataFrame, config: RunConfig, cache: DecodedCache | None) -> MammoImages:
    return MammoImages(
        rows["path"].tolist(), rows["cancer"].tolist(), config.data.image_size, bad_images=config.data.bad_images,
        cache=cache, cache_rows=rows["cache_row"].tolist() if cache is not None else None,
        max_pixels=config.data.max_pixels,
    )


def train_loader(
    rows: pd.DataFrame, config: RunConfig, runtime: Runtime, *, seed: int, cache: DecodedCache | None = None
) -> DataLoader:
    """This process's share of each training step, in an order drawn from the epoch's seed
    (class-balanced draws with ``data.balanced_sampler``); see ``engine.distributed``.
    Images come from ``cache`` (filled on first use) when given."""
    weights = balanced_weights(rows["cancer"].tolist()) if config.data.balanced_sampler else None
    sampler = EpochSampler(
        len(rows), config.data.batch_size, rank=runtime.rank, world_size=runtime.world_size,
        weights=weights, seed=seed,
    )
    return make_loader(
        _images(rows, config, cache), batch_size=sampler.per_rank_batch(), workers=config.data.workers,
        sampler=sampler, device=runtime.device, seed=seed,
    )


def eval_loader(rows: pd.DataFrame, config: RunConfig, runtime: Runtime, cache: DecodedCache | None = None) -> DataLoader:
    """Rows in order; in a distributed run this process's shard of them (no padding)."""
    return make_loader(
        _images(rows, config, cache),
        batch_size=local_batch_size(config.data.batch_size, runtime.world_size),
        workers=config.data.workers,
        sampler=ShardSampler(len(rows), runtime.rank, runtime.world_size),
        device=runtime.device,
        seed=config.seed,
    )


def reseed_loader(loader: DataLoader, seed: int) -> None:
    """Make this epoch's order and worker seeds a function of ``seed`` only (resume
    reproduces the run)."""
    loader.generator.manual_seed(seed)
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_seed(seed)
