"""ICGDataModule: the one DataModule of (user, item, title, reference image, click) records for all three stages.

ICG (Bian et al., EMNLP 2025) trains a personalized click model (stage 1), wraps reward models (stage 2) and
aligns the cover generator (stage 3) on the same records. The attached LightningModule says which *unit* it
consumes with a class attribute ``data_unit`` and optionally which fields with ``data_fields``:

- ``interactions``: positives + sampled negatives (implicit data; resampled every epoch, seeded by seed+epoch) or
  the real clicks/non-clicks (explicit data), with the user's click ``history``; val/test rows carry ``group``.
- ``items``: one row per item.
- ``pairs``: (user, item) pairs; train = train positives, val/test = held-out positives; predict = test pairs.

Batches are dicts (see docs/architecture.md). Nothing is read in ``__init__``; ``setup()`` reads, validates
(icg.data.validation) and splits (icg.data.splits) with vectorised numpy, optionally through a binary cache of the
parsed table (icg.data.table_cache, written by ``prepare_data``); docs/performance.md has the set-up time and memory
from Pixel1M to Pixel8M size. Rows are served by icg.data.samplers.EpochSampler, which shards them across DDP ranks
itself, in O(1) memory, so Lightning does not wrap it. Images are decoded on demand (PIL, then torch) and kept in a
bounded per-process LRU cache.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from icg.data.samplers import EpochSampler
from icg.data.schema import DatasetFormatError, read_interaction_arrays, read_meta
from icg.data.splits import PARTS, TRAIN, InteractionLog, NegativeSampler, row_rng
from icg.data.table_cache import (
    cached_interaction_arrays,
    image_ledger_path,
    read_image_ledger,
    write_image_ledger,
)
from icg.data.validation import SKIP_REPORT_NAME, DataValidationError, read_items, validate
from icg.errors import ConfigError

log = logging.getLogger(__name__)

UNITS = ("interactions", "items", "pairs")
UNIT_FIELDS = {
    "interactions": ("user_idx", "item_idx", "click", "image", "title", "history", "group"),
    "items": ("item_idx", "item_id", "title", "image"),
    "pairs": ("user_idx", "user_id", "item_idx", "item_id", "title", "image"),
}
SPLITS = ("train", "val", "test", "predict")
_TRAIN_STREAM, _EVAL_STREAM = 0, 1  # separate random streams: train negatives vs fixed eval candidates


class CoverImages:
    """Decodes covers to float tensors in [0, 1] (3 x size x size), with a bounded LRU cache of uint8 tensors.

    The cover is center-cropped to a square and resized (PIL ``ImageOps.fit``, bicubic). Covers are reused by many
    interactions, so decoded ones are kept, up to ``cache_mb`` per process (each DataLoader worker has its own).

    Args:
        root: the dataset folder the image paths are relative to.
        size: output height and width in pixels.
        cache_mb: memory bound of the cache in MiB (0 disables it).
    """

    def __init__(self, root: Path, size: int, cache_mb: float) -> None:
        self.root = Path(root)
        self.size = size
        self.capacity = int(cache_mb * 2**20 // (3 * size * size))
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _decode(self, relative: str) -> torch.Tensor:
        path = self.root / relative
        try:
            with Image.open(path) as image:
                image = ImageOps.fit(image.convert("RGB"), (self.size, self.size), Image.Resampling.BICUBIC)
                array = np.asarray(image, dtype=np.uint8)
        except Exception as err:  # noqa: BLE001 - setup() verified it; a file changed since then still gets named
            raise OSError(f"cannot decode image {path}: {err}") from err
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def __call__(self, relative: str) -> torch.Tensor:
        pixels = self._cache.get(relative)
        if pixels is None:
            pixels = self._decode(relative)
            if self.capacity > 0:
                self._cache[relative] = pixels
                if len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(relative)
        return pixels.float().div_(255.0)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # workers start with an empty cache rather than a pickled copy
        return state


class _Catalogue:
    """Item ids, titles and image paths in item-index order, plus the image decoder."""

    def __init__(self, item_ids: np.ndarray, titles: np.ndarray, images: np.ndarray, decoder: CoverImages) -> None:
        self.item_ids, self.titles, self.images, self.decoder = item_ids, titles, images, decoder

    def fill(self, out: dict, fields: frozenset[str], item: int) -> dict:
        if "item_idx" in fields:
            out["item_idx"] = item
        if "item_id" in fields:
            out["item_id"] = self.item_ids[item]
        if "title" in fields:
            out["title"] = self.titles[item]
        if "image" in fields:
            out["image"] = self.decoder(self.images[item])
        return out


class _RecordsDataset(Dataset):
    """Base: splits the sampler's keys (``epoch * len + index``, see icg.data.samplers) into (epoch, index)."""

    def _key(self, key) -> tuple[int, int]:
        return divmod(int(key), len(self)) if len(self) else (0, int(key))


class InteractionsDataset(_RecordsDataset):
    """Unit ``interactions``: each base row followed by its sampled negatives (implicit) or alone (explicit).

    Args:
        log: the split interaction log.
        catalogue: item metadata and images.
        positions: sorted positions of the base rows (positives for implicit data, all rows for explicit).
        negatives: negatives per base row (0 for explicit data).
        sampler: the negative sampler (None when ``negatives`` is 0).
        fields: fields to produce.
        seed: base seed.
        stream: random stream (train negatives are resampled per epoch; eval candidates are fixed).
        history_length: length of ``history``.
        group_by_user: ``group`` is the user (explicit val/test) instead of the base row.
    """

    def __init__(
        self,
        log: InteractionLog,
        catalogue: _Catalogue,
        positions: np.ndarray,
        negatives: int,
        sampler: NegativeSampler | None,
        fields: frozenset[str],
        seed: int,
        stream: int,
        history_length: int,
        group_by_user: bool = False,
    ) -> None:
        self.log, self.catalogue, self.positions = log, catalogue, positions
        self.per_row = 1 + negatives
        self.sampler, self.fields, self.seed, self.stream = sampler, fields, seed, stream
        self.history_length, self.group_by_user = history_length, group_by_user

    def __len__(self) -> int:
        return len(self.positions) * self.per_row

    def __getitem__(self, key) -> dict:
        epoch, index = self._key(key)
        base, slot = divmod(index, self.per_row)
        position = int(self.positions[base])
        user = int(self.log.user[position])
        if slot == 0:
            item, click = int(self.log.item[position]), float(self.log.click[position])
        else:
            # eval candidates are the same every epoch; train negatives change with it
            rng = row_rng(self.seed, self.stream, epoch if self.stream == _TRAIN_STREAM else 0, base)
            negatives = self.sampler.sample(user, self.per_row - 1, rng, distinct=self.stream == _EVAL_STREAM)
            item, click = int(negatives[slot - 1]), 0.0
        out: dict = {}
        if "user_idx" in self.fields:
            out["user_idx"] = user
        if "click" in self.fields:
            out["click"] = torch.tensor(click, dtype=torch.float32)
        if "history" in self.fields:
            target = int(self.log.item[position])  # the positive's item: its negatives share its history
            out["history"] = torch.from_numpy(self.log.history(position, target, self.history_length))
        if "group" in self.fields:
            out["group"] = user if self.group_by_user else base
        return self.catalogue.fill(out, self.fields, item)


class ItemsDataset(_RecordsDataset):
    """Unit ``items``: one row per item of the vocabulary."""

    def __init__(self, catalogue: _Catalogue, fields: frozenset[str]) -> None:
        self.catalogue, self.fields = catalogue, fields

    def __len__(self) -> int:
        return len(self.catalogue.item_ids)

    def __getitem__(self, key) -> dict:
        _, index = self._key(key)
        return self.catalogue.fill({}, self.fields, index)


class PairsDataset(_RecordsDataset):
    """Unit ``pairs``: (user, item) positive pairs of one part."""

    def __init__(
        self, log: InteractionLog, catalogue: _Catalogue, user_ids: np.ndarray, positions: np.ndarray, fields
    ) -> None:
        self.log, self.catalogue, self.user_ids, self.positions, self.fields = (
            log,
            catalogue,
            user_ids,
            positions,
            fields,
        )

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key) -> dict:
        _, index = self._key(key)
        position = int(self.positions[index])
        user = int(self.log.user[position])
        out: dict = {}
        if "user_idx" in self.fields:
            out["user_idx"] = user
        if "user_id" in self.fields:
            out["user_id"] = self.user_ids[user]
        return self.catalogue.fill(out, self.fields, int(self.log.item[position]))


class ICGDataModule(pl.LightningDataModule):
    """The shared DataModule of ICG's three stages; serves the unit and fields the attached stage declares.

    Args:
        root: dataset folder in the icg format (docs/data.md).
        image_size: height and width of decoded images in pixels.
        batch_size: batch size per device for training.
        eval_batch_size: batch size per device for val/test/predict (None: batch_size).
        num_workers: DataLoader worker processes.
        holdout: interactions per user held out for test, and again for val (the last ones in time).
        negatives_per_positive: sampled negatives per train positive (implicit data only).
        eval_candidates: sampled negatives ranked with each held-out positive (implicit data only).
        negative_sampling: ``uniform`` or ``popularity`` (by train click counts).
        history_length: clicked items in each row's ``history`` (-1 padded).
        on_bad_record: ``error`` stops with one report of all bad input; ``skip`` leaves it out and writes a report.
        skip_report: where skip mode writes its JSON report (None: ``skip_report.json`` in the trainer's
            ``default_root_dir``, or a new file in the temporary folder without a trainer; never inside ``root``).
        image_cache_mb: decoded-image cache per process in MiB.
        seed: seed of negative sampling and shuffling.
        cache_dir: folder for a binary copy of the parsed interactions table, memory-mapped by later set-ups (every
            stage, every DDP rank); keyed by the table's content, never inside the dataset. None: no cache.
    """

    def __init__(  # noqa: PLR0913  # a constructor LightningCLI reads (data.init_args)
        self,
        root: str | Path,
        image_size: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        holdout: int = 1,
        negatives_per_positive: int = 4,
        eval_candidates: int = 20,
        negative_sampling: str = "uniform",
        history_length: int = 10,
        on_bad_record: str = "error",
        skip_report: str | Path | None = None,
        image_cache_mb: float = 256.0,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        checks = {  # key: (value, ok, the rule)
            "image_size": (image_size, image_size >= 1, ">= 1"),
            "batch_size": (batch_size, batch_size >= 1, ">= 1"),
            "eval_batch_size": (eval_batch_size, eval_batch_size is None or eval_batch_size >= 1, ">= 1 or null"),
            "num_workers": (num_workers, num_workers >= 0, ">= 0"),
            "holdout": (holdout, holdout >= 1, ">= 1"),
            "negatives_per_positive": (negatives_per_positive, negatives_per_positive >= 0, ">= 0"),
            "eval_candidates": (eval_candidates, eval_candidates >= 0, ">= 0"),
            "history_length": (history_length, history_length >= 0, ">= 0"),
            "image_cache_mb": (image_cache_mb, image_cache_mb >= 0, ">= 0"),
        }
        bad = [f"data.{key}={value!r} (must be {rule})" for key, (value, ok, rule) in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid {', '.join(bad)}")
        if negative_sampling not in ("uniform", "popularity"):
            raise ConfigError(f"data.negative_sampling must be 'uniform' or 'popularity', got {negative_sampling!r}")
        if on_bad_record not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        # Recorded in checkpoints but not sent to the logger: Lightning refuses to log two values under one key, and
        # data.seed / data.image_size may legitimately differ from a stage's own seed / image_size. The CLI's
        # config.yaml beside the logs holds every setting.
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.image_size, self.batch_size, self.eval_batch_size = image_size, batch_size, eval_batch_size
        self.num_workers, self.holdout = num_workers, holdout
        self.negatives_per_positive, self.eval_candidates = negatives_per_positive, eval_candidates
        self.negative_sampling, self.history_length = negative_sampling, history_length
        self.on_bad_record, self.skip_report = on_bad_record, skip_report
        self.image_cache_mb, self.seed = image_cache_mb, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._ready = False

    def prepare_data(self) -> None:
        """Fill the parsed-table cache once per node (Lightning calls this on local rank 0 before ``setup``)."""
        if self.cache_dir is not None:
            cached_interaction_arrays(self.root, self.cache_dir, "data.cache_dir")

    def _skip_report_path(self) -> Path:
        """``skip_report``, else ``skip_report.json`` in the run folder, else a new file in the temporary folder."""
        if self.skip_report is not None:
            return Path(self.skip_report)
        if self.trainer is not None:
            return Path(self.trainer.default_root_dir) / SKIP_REPORT_NAME
        handle, name = tempfile.mkstemp(prefix="icg_skip_report_", suffix=".json")
        os.close(handle)
        return Path(name)

    def _interactions(self):
        if self.cache_dir is None:
            return read_interaction_arrays(self.root)
        return cached_interaction_arrays(self.root, self.cache_dir, "data.cache_dir")

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:  # noqa: PLR0915  # one set-up per unit; to be split (issue 22)
        """Read, validate and split the dataset (once; later calls return at once)."""
        if self._ready:
            return
        if not self.root.is_dir():
            raise DatasetFormatError(f"data.root: {self.root} is not a folder (an icg dataset, docs/data.md)")
        meta = read_meta(self.root)
        items, items_path = read_items(self.root)
        inter = self._interactions()
        ledger_path = image_ledger_path(self.cache_dir, self.root) if self.cache_dir is not None else None
        verified = read_image_ledger(ledger_path) if ledger_path is not None else None
        known = dict(verified) if verified is not None else None
        report = validate(self.root, items, items_path, inter, verified_images=verified)
        if ledger_path is not None and verified != known:
            write_image_ledger(ledger_path, verified, "data.cache_dir")
        if not report.ok:
            if self.on_bad_record == "error":
                raise DataValidationError(report.message())
            written = report.write_skip_report(items, inter, self._skip_report_path())
            log.warning("%s\nSkipped those rows; report of what was left out: %s", report.message(), written)
            if not report.interaction_keep.any():
                skipped = int((~report.item_keep).sum() + (~report.interaction_keep).sum())
                raise DataValidationError(
                    f"{self.root}: nothing left after skipping {skipped} bad rows (on_bad_record: skip); every one is "
                    f"listed in {written}. Fix the dataset (icg data validate {self.root} shows the first rows)"
                )
        self.implicit = bool(meta.implicit)

        kept_items = items[report.item_keep]
        order = np.argsort(kept_items["item_id"].to_numpy(dtype=object), kind="stable")
        kept_items = kept_items.iloc[order]
        self.item_ids = kept_items["item_id"].to_numpy(dtype=object)
        # interactions: kept rows in (user, timestamp, item, file row) order, codes mapped to the final vocabularies;
        # the columns come already sorted (validation gathered them, or the cache holds them), and each remapping is
        # skipped when it is the identity (a clean dataset): every step over 158M rows costs seconds
        every = bool(report.interaction_keep.all())
        kept = None if every else report.interaction_keep[report.time_order]
        column = {
            name: inter.sorted(name) if every else inter.sorted(name)[kept]
            for name in ("user_code", "item_code", "click", "timestamp")
        }
        user = column["user_code"]
        present = np.bincount(user, minlength=len(inter.user_values)) > 0
        self.user_ids = inter.user_values
        if not present.all():  # users whose every row was left out leave the vocabulary
            user_map = np.full(len(inter.user_values), -1, np.int32)
            user_map[present] = np.arange(int(present.sum()), dtype=np.int32)
            self.user_ids, user = inter.user_values[present], user_map[user]
        item = column["item_code"]
        item_map = pd.Index(self.item_ids).get_indexer(inter.item_values).astype(np.int32)
        if not np.array_equal(item_map, np.arange(len(item_map))):
            item = item_map[item]
        self.log = InteractionLog(
            user=user,
            item=item,
            click=column["click"],
            timestamp=column["timestamp"],
            num_users=len(self.user_ids),
            holdout=self.holdout,
        )
        del inter, kept, user, item, column  # the file-order columns go; the log keeps the sorted ones
        self._user_index = pd.Index(self.user_ids)
        self._item_index = pd.Index(self.item_ids)
        self.catalogue = _Catalogue(
            self.item_ids,
            kept_items["title"].to_numpy(dtype=object),
            kept_items["image"].to_numpy(dtype=object),
            CoverImages(self.root, self.image_size, self.image_cache_mb),
        )
        self.sampler = None
        if self.implicit:
            clicks = self.log.click.astype(bool)
            every = bool(clicks.all())  # implicit data is all clicks: no need to copy the columns
            popularity = None
            if self.negative_sampling == "popularity":
                popularity = self.log.item[(self.log.part == TRAIN) & clicks]
            self.sampler = NegativeSampler(
                self.log.user if every else self.log.user[clicks],
                self.log.item if every else self.log.item[clicks],
                len(self.item_ids),
                self.negative_sampling,
                popularity_items=popularity,
            )
            del clicks, popularity
            # eval candidates are distinct, train negatives need just one item the user never clicked
            needed = max(self.eval_candidates, min(self.negatives_per_positive, 1))
            if self.sampler.max_positives + needed > len(self.item_ids):
                raise ConfigError(
                    f"{self.root}: a user clicked {self.sampler.max_positives} of {len(self.item_ids)} items, too "
                    f"many to sample {needed} distinct negatives; lower data.eval_candidates (or "
                    "data.negatives_per_positive)"
                )
        self._ready = True
        if not self.implicit:
            self._warn_small_groups()
        log.info(
            "%s: %d users, %d items, %d interactions (%s)",
            self.root,
            len(self.user_ids),
            len(self.item_ids),
            len(self.log),
            ", ".join(f"{k} {v}" for k, v in self.log.counts().items()),
        )

    def eval_groups(self, split: str) -> tuple[int, int]:
        """``(groups, groups with both a click and a non-click)`` of the ``val`` or ``test`` interactions.

        GAUC averages over the groups that hold both classes (nan when none does), and NDCG@k / Recall@k are 1.0 for
        any group of at most k rows. Implicit data: a group is a held-out click and its ``eval_candidates`` sampled
        negatives. Explicit data: a group is a user's held-out rows (``holdout`` of them).
        """
        self._require_setup()
        part = PARTS[split]
        if self.implicit:
            groups = len(self.log.positions(part, clicks_only=True))
            return groups, groups if self.eval_candidates >= 1 else 0
        rows = self.log.positions(part)
        users = self.log.user[rows]
        clicks = np.bincount(users, weights=self.log.click[rows], minlength=self.log.num_users)
        sizes = np.bincount(users, minlength=self.log.num_users)
        return int((sizes > 0).sum()), int(((clicks > 0) & (clicks < sizes)).sum())

    def _warn_small_groups(self) -> None:
        for split in ("val", "test"):
            groups, evaluable = self.eval_groups(split)
            if evaluable < groups:
                log.warning(
                    "data.holdout=%d on explicit data (%s): %d of %d users' %s rows hold both a click and a non-click; "
                    "%s/gauc averages those only (nan when none) and NDCG@k/Recall@k are 1.0 for a group of <= k "
                    "rows. Raise data.holdout (lightning_configs/real/stage1_movielens.yaml: 10, with top_k 5)",
                    self.holdout, self.root, evaluable, groups, split, split,
                )  # fmt: skip

    def _require_setup(self) -> None:
        if not self._ready:
            raise RuntimeError("ICGDataModule: call setup() first (the Trainer does it for you)")

    @property
    def num_users(self) -> int:
        self._require_setup()
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        self._require_setup()
        return len(self.item_ids)

    def user_index(self, user_ids) -> np.ndarray:
        """Indices of string user ids in ``user_ids`` (int64); unknown ids give -1."""
        self._require_setup()
        return self._user_index.get_indexer(pd.Index(np.atleast_1d(np.asarray(user_ids, dtype=object)))).astype(
            np.int64
        )

    def item_index(self, item_ids) -> np.ndarray:
        """Indices of string item ids in ``item_ids`` (int64); unknown ids give -1."""
        self._require_setup()
        return self._item_index.get_indexer(pd.Index(np.atleast_1d(np.asarray(item_ids, dtype=object)))).astype(
            np.int64
        )

    # ----------------------------------------------------------------------------------------- datasets
    def dataset(self, split: str, unit: str, fields: tuple[str, ...] | None = None) -> Dataset:
        """The map-style dataset of ``unit`` for ``split`` (train/val/test/predict) with ``fields`` (None: all)."""
        self._require_setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if unit not in UNITS:
            raise ValueError(f"data_unit must be one of {UNITS}, got {unit!r}")
        allowed = UNIT_FIELDS[unit]
        chosen = frozenset(allowed if fields is None else fields)
        unknown = sorted(chosen - set(allowed))
        if unknown:
            raise ValueError(f"data_fields {unknown} are not fields of unit {unit!r}; it has {list(allowed)}")
        part = PARTS["test" if split == "predict" else split]
        if unit == "items":
            return ItemsDataset(self.catalogue, chosen)
        if unit == "pairs":
            return PairsDataset(self.log, self.catalogue, self.user_ids, self.log.positions(part, True), chosen)
        if not self.implicit:  # real clicks and non-clicks; eval groups are users (GAUC)
            positions = self.log.positions(part)
            return InteractionsDataset(
                self.log, self.catalogue, positions, 0, None, chosen, self.seed, _TRAIN_STREAM,
                self.history_length, group_by_user=part != TRAIN,
            )  # fmt: skip
        train = part == TRAIN
        return InteractionsDataset(
            self.log,
            self.catalogue,
            self.log.positions(part, clicks_only=True),
            self.negatives_per_positive if train else self.eval_candidates,
            self.sampler,
            chosen,
            self.seed,
            _TRAIN_STREAM if train else _EVAL_STREAM,
            self.history_length,
        )

    def dataloader(
        self,
        split: str,
        unit: str,
        fields: tuple[str, ...] | None = None,
        shuffle: bool = False,
        batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> DataLoader:
        """A DataLoader of ``unit`` for ``split``; ``shuffle`` reshuffles (and resamples negatives) per epoch.

        Args:
            split: ``train``, ``val``, ``test`` or ``predict`` (test pairs).
            unit: ``interactions``, ``items`` or ``pairs``.
            fields: the batch fields to produce (None: all of the unit's).
            shuffle: shuffle with an :class:`~icg.data.samplers.EpochSampler` (Lightning sets its epoch).
            batch_size: None: ``batch_size`` for train, ``eval_batch_size`` otherwise.
            rank: this process's rank (the Trainer's ``global_rank``).
            world_size: ranks sharing the rows (the Trainer's ``world_size``); above 1 each rank gets its own shard,
                padded to equal length except for ``predict`` (Lightning's semantics).
        """
        dataset = self.dataset(split, unit, fields)
        if batch_size is None:
            batch_size = self.batch_size if split == "train" else (self.eval_batch_size or self.batch_size)
        sampler = None  # plain order in one process: the DataLoader's SequentialSampler
        if shuffle or world_size > 1:
            sampler = EpochSampler(len(dataset), self.seed, shuffle, rank, world_size, pad=split != "predict")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=False,  # workers must see each epoch's sampler state afresh
        )

    def _stage_request(self) -> tuple[str, tuple[str, ...] | None]:
        module = self.trainer.lightning_module if self.trainer is not None else None
        unit = getattr(module, "data_unit", None)
        if unit is None:
            raise ValueError(
                f"{type(module).__name__} has no class attribute data_unit; set it to one of {UNITS} "
                "so ICGDataModule knows what to serve"
            )
        return unit, getattr(module, "data_fields", None)

    def _trainer_loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """The loader of ``split`` for the attached Trainer: its stage's unit and fields, this rank's shard."""
        unit, fields = self._stage_request()
        rank, world = getattr(self.trainer, "global_rank", 0), self.trainer.world_size
        return self.dataloader(split, unit, fields, shuffle=shuffle, rank=rank, world_size=world)

    def train_dataloader(self) -> DataLoader:
        loader = self._trainer_loader("train", shuffle=True)
        world, rows = self.trainer.world_size, len(loader.dataset)
        if self.batch_size * world > rows:
            raise ConfigError(
                f"ICGDataModule: batch_size {self.batch_size} x world size {world} = {self.batch_size * world} is "
                f"larger than the train set ({rows} rows of unit {self._stage_request()[0]!r}); lower data.batch_size"
            )
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._trainer_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._trainer_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._trainer_loader("predict")

    def stats(self) -> dict[str, int]:
        """Users, items, interactions, clicks and per-split counts."""
        self._require_setup()
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": len(self.log),
            "clicks": int(self.log.click.sum()),
            **self.log.counts(),
        }
