"""The lazily shuffled, DDP-sharded row sampler (icg/data/samplers.py) and how ICGDataModule and Lightning use it:
shards disjoint and covering, a new order each epoch, world size 1 = the single-process order, O(1) memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import SequentialSampler

from icg.data.datamodule import ICGDataModule
from icg.data.samplers import EpochSampler, FeistelPermutation, epoch_permutation
from tests.helpers.data import RecordingStage, datamodule_for, make_dataset


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 9, 1000, 65_537, 300_007])
def test_permutation_is_a_bijection(length):
    permutation = FeistelPermutation(length, (0, 1))
    rows = permutation(np.arange(length))
    assert np.array_equal(np.sort(rows), np.arange(length))
    assert np.array_equal(rows[123 % length :], permutation(np.arange(123 % length, length)))  # any slice, same rows
    assert np.array_equal(rows, FeistelPermutation(length, (0, 1))(np.arange(length)))  # seeded
    if length >= 8:
        assert not np.array_equal(rows, FeistelPermutation(length, (0, 2))(np.arange(length)))


def test_small_lengths_use_an_exact_shuffle():
    rows = epoch_permutation(10, (4, 2))(np.arange(10))
    assert rows.tolist() == np.random.default_rng((4, 2)).permutation(10).tolist()
    assert isinstance(epoch_permutation(70_000, (4, 2)), FeistelPermutation)


def test_permutation_mixes_positions():
    # position -> row is close to uniform: each row lands in each tenth of the order about equally often
    length, seeds = 1000, 300
    counts = np.zeros((10, 10))
    for seed in range(seeds):
        rows = FeistelPermutation(length, (seed, 0))(np.arange(length))
        np.add.at(counts, (np.arange(length) // 100, rows // 100), 1)
    expected = seeds * length / 100
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 81 + 6 * np.sqrt(2 * 81)  # 81 degrees of freedom; an identity or a rotation gives ~1e6
    assert np.corrcoef(np.arange(length), rows)[0, 1] ** 2 < 0.01


def _shards(length, world, epoch=0, shuffle=True, pad=True, seed=7):
    shards = []
    for rank in range(world):
        sampler = EpochSampler(length, seed, shuffle, rank, world, pad)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler)
    return shards


@pytest.mark.parametrize("length", [1, 5, 12, 1000, 70_001])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_disjoint_and_cover_every_row(length, world):
    single = _shards(length, 1)[0]
    assert sorted(single) == list(range(length))
    shards = _shards(length, world)
    per_rank = -(-length // world)
    assert [len(s) for s in shards] == [per_rank] * world
    # rank r holds positions r, r + world, ... of the single-process order; padding repeats its first rows
    padded = single + single * (world * per_rank // length)
    for rank, shard in enumerate(shards):
        assert shard == padded[rank : world * per_rank : world]
    rows = np.concatenate(shards)
    assert set(rows.tolist()) == set(range(length))
    assert len(rows) - len(set(rows.tolist())) == world * per_rank - length  # duplicates = Lightning's padding


@pytest.mark.parametrize("world", [2, 3, 5])
def test_unpadded_shards_for_prediction(world):
    shards = _shards(11, world, shuffle=False, pad=False)
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))
    assert [len(s) for s in shards] == [len(range(rank, 11, world)) for rank in range(world)]
    assert shards[0][:2] == [0, world]  # no shuffle: plain rows in order


def test_epoch_reshuffles_and_rides_in_the_index():
    length = 70_001  # beyond the explicit-table size: the Feistel path
    first, second = _shards(length, 2, epoch=0), _shards(length, 2, epoch=1)
    assert first != second
    assert set(np.concatenate(second).tolist()) == set((np.concatenate(first) + length).tolist())  # the next epoch
    assert first == _shards(length, 2, epoch=0)  # same (seed, epoch): same shards


def test_memory_is_constant_in_the_length():
    length = 10**12  # an index array would be 8 TB
    tracemalloc.start()
    try:
        sampler = EpochSampler(length, seed=3, rank=5, world_size=8)
        sampler.set_epoch(2)
        rows = [row for _, row in zip(range(300_000), sampler, strict=False)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == 300_000 and len(set(rows)) == 300_000
    assert all(2 * length <= row < 3 * length for row in rows[:1000])
    assert peak < 64 * 2**20  # the 300k Python ints kept above are most of it; one block of positions is ~0.5 MB


def test_datamodule_loaders_shard_under_ddp(tmp_path):
    root = make_dataset(tmp_path / "data", users=6, items=16, per_user=6)
    dm = datamodule_for(root)

    class _Trainer:
        lightning_module = RecordingStage()
        world_size = 3

        def __init__(self, rank):
            self.global_rank = rank

    seen = {}
    for split in ("train", "val", "predict"):
        loaders = []
        for rank in range(3):
            dm.trainer = _Trainer(rank)
            loaders.append(getattr(dm, f"{split}_dataloader")())
        samplers = [loader.sampler for loader in loaders]
        assert all(isinstance(s, EpochSampler) and s.num_replicas == 3 for s in samplers)
        assert [s.rank for s in samplers] == [0, 1, 2]
        seen[split] = [list(s) for s in samplers]
    train_rows = len(dm.dataset("train", "interactions"))
    assert sorted(set(np.concatenate(seen["train"]).tolist())) == list(range(train_rows))
    assert not set(seen["train"][0]) & set(seen["train"][1])
    assert seen["val"][0][:2] == [0, 3]  # evaluation keeps file order, sharded like torch's DistributedSampler
    assert not samplers[0].pad and sum(map(len, seen["predict"])) == len(dm.dataset("predict", "interactions"))
    # one process: the same rows as a one-rank shard, and evaluation keeps the DataLoader's plain order
    dm.trainer = _Trainer(0)
    dm.trainer.world_size = 1
    assert list(dm.train_dataloader().sampler) == _shards(train_rows, 1, seed=dm.seed)[0]
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)


def test_lightning_keeps_our_sampler_under_ddp(tmp_path):
    root = make_dataset(tmp_path / "data", users=6, items=16, per_user=6)
    dm = datamodule_for(root)
    trainer = pl.Trainer(accelerator="cpu", devices=3, strategy="ddp", logger=False, enable_progress_bar=False)
    assert trainer.world_size == 3 and trainer._accelerator_connector.is_distributed  # nothing launched yet
    connector = trainer._data_connector
    train = dm.dataloader("train", "interactions", shuffle=True, rank=1, world_size=3)
    assert connector._prepare_dataloader(train, shuffle=True, mode=RunningStage.TRAINING) is train  # not wrapped
    val = dm.dataloader("val", "interactions", rank=1, world_size=3)
    assert connector._prepare_dataloader(val, shuffle=False, mode=RunningStage.VALIDATING) is val
    predict = dm.dataloader("predict", "pairs", rank=1, world_size=3)
    rebuilt = connector._prepare_dataloader(predict, shuffle=False, mode=RunningStage.PREDICTING)
    assert rebuilt.batch_sampler.sampler is predict.sampler  # Lightning only records the indices it yields


class _Recorder(pl.LightningModule):
    """Writes every (user, item, click) row its rank trained on, per epoch, to ``out/rank{r}-epoch{e}.json``."""

    data_unit = "interactions"
    data_fields = ("user_idx", "item_idx", "click")

    def __init__(self, out: str):
        super().__init__()
        self.out, self.rows = out, []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        columns = (batch["user_idx"].tolist(), batch["item_idx"].tolist(), batch["click"].tolist())
        self.rows += list(zip(*columns, strict=True))
        return (self.weight * batch["click"]).sum()

    def on_train_epoch_end(self):
        sampler = self.trainer.train_dataloader.sampler
        record = {"sampler": type(sampler).__name__, "rows": self.rows}
        (Path(self.out) / f"rank{self.global_rank}-epoch{self.current_epoch}.json").write_text(json.dumps(record))
        self.rows = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_two_process_ddp_trains_on_disjoint_shards(tmp_path):
    """A real two-process DDP fit (gloo, spawned): Lightning keeps our sampler, each epoch's shards are disjoint and
    together are exactly the rows (with their sampled negatives) a single process sees in that epoch."""
    root = make_dataset(tmp_path / "data", users=6, items=16, per_user=6)
    dm = ICGDataModule(root, image_size=8, batch_size=4, negatives_per_positive=2, eval_candidates=3)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(_Recorder(str(tmp_path)), datamodule=dm)
    dm.setup("fit")
    train = dm.dataset("train", "interactions", _Recorder.data_fields)
    n = len(train)
    for epoch in range(2):
        ranks = [json.loads((tmp_path / f"rank{r}-epoch{epoch}.json").read_text()) for r in range(2)]
        assert [r["sampler"] for r in ranks] == ["EpochSampler", "EpochSampler"]
        expected = sorted(
            (row["user_idx"], row["item_idx"], row["click"].item()) for row in (train[epoch * n + i] for i in range(n))
        )
        seen = sorted(tuple(row) for r in ranks for row in r["rows"])
        assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) == n // 2  # 72 rows: no padding needed
        assert seen == expected
