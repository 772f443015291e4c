"""ICGDataModule: setup() + a batch of every unit with the right fields, shapes and dtypes; stage-driven units;
per-epoch negatives; eval groups; explicit data; the DDP batch-size check."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from icg.data.datamodule import ICGDataModule
from tests.helpers.data import RecordingStage, datamodule_for, make_dataset


@pytest.fixture
def implicit_root(tmp_path):
    return make_dataset(tmp_path / "implicit", users=6, items=16, per_user=6)


def test_init_does_no_io(tmp_path):
    dm = ICGDataModule(tmp_path / "does-not-exist")  # only setup() reads
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.num_users


def test_vocab_and_unknown_ids(implicit_root):
    dm = datamodule_for(implicit_root)
    assert list(dm.user_ids) == sorted(f"u{u}" for u in range(6)) and dm.num_users == 6
    assert list(dm.item_ids) == [f"i{i:02d}" for i in range(16)] and dm.num_items == 16
    assert dm.user_index(["u3", "nobody"]).tolist() == [3, -1]
    assert dm.item_index(["i15", "zzz", "i00"]).tolist() == [15, -1, 0]


def test_interactions_batches(implicit_root):
    dm = datamodule_for(implicit_root, history_length=5)
    batch = next(iter(dm.dataloader("train", "interactions")))
    assert set(batch) == {"user_idx", "item_idx", "click", "image", "title", "history", "group"}
    assert batch["user_idx"].dtype == torch.long and batch["item_idx"].dtype == torch.long
    assert batch["click"].dtype == torch.float32 and batch["click"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["history"].shape == (4, 5) and batch["history"].dtype == torch.long
    assert isinstance(batch["title"], list) and batch["title"][0].startswith("title ")
    # 4 train clicks per user x (1 positive + 2 negatives)
    assert len(dm.dataset("train", "interactions")) == 6 * 4 * 3
    val = dm.dataset("val", "interactions")
    assert len(val) == 6 * (1 + 3)
    rows = [val[i] for i in range(len(val))]
    groups = np.array([r["group"] for r in rows])
    assert np.bincount(groups).tolist() == [4] * 6  # each held-out positive with its 3 candidates
    for g in range(6):
        members = [r for r in rows if r["group"] == g]
        assert [r["click"].item() for r in members] == [1.0, 0.0, 0.0, 0.0]
        assert len({r["user_idx"] for r in members}) == 1 and len({r["item_idx"] for r in members}) == 4
        own = set(dm.log.item[dm.log.user == members[0]["user_idx"]].tolist())
        assert not own & {r["item_idx"] for r in members[1:]}  # candidates are never the user's positives


def test_fields_select_and_unknown_field(implicit_root):
    dm = datamodule_for(implicit_root)
    batch = next(iter(dm.dataloader("test", "interactions", fields=("user_idx", "item_idx", "click"))))
    assert set(batch) == {"user_idx", "item_idx", "click"}
    with pytest.raises(ValueError, match=r"\['colour'\] are not fields of unit 'items'"):
        dm.dataloader("train", "items", fields=("item_idx", "colour"))


def test_items_and_pairs_batches(implicit_root):
    dm = datamodule_for(implicit_root)
    items = next(iter(dm.dataloader("val", "items", batch_size=16)))
    assert items["item_idx"].tolist() == list(range(16)) and items["item_id"][3] == "i03"
    assert items["image"].shape == (16, 3, 16, 16)
    pairs = next(iter(dm.dataloader("predict", "pairs", batch_size=6)))
    assert set(pairs) == {"user_idx", "user_id", "item_idx", "item_id", "title", "image"}
    assert len(dm.dataset("predict", "pairs")) == 6 and len(dm.dataset("train", "pairs")) == 24
    test_rows = dm.log.positions(2)
    assert sorted(zip(pairs["user_idx"].tolist(), pairs["item_idx"].tolist(), strict=True)) == sorted(
        zip(dm.log.user[test_rows].tolist(), dm.log.item[test_rows].tolist(), strict=True)
    )
    assert [dm.user_ids[u] for u in pairs["user_idx"].tolist()] == pairs["user_id"]


def test_train_negatives_change_with_epoch_and_are_seeded(implicit_root):
    dm = datamodule_for(implicit_root, negatives_per_positive=4)
    data = dm.dataset("train", "interactions", fields=("user_idx", "item_idx"))
    epoch0 = [data[i]["item_idx"] for i in range(len(data))]
    assert epoch0 == [data[i]["item_idx"] for i in range(len(data))]
    assert epoch0 != [data[len(data) + i]["item_idx"] for i in range(len(data))]
    other = datamodule_for(implicit_root, negatives_per_positive=4).dataset(
        "train", "interactions", fields=("item_idx",)
    )
    assert epoch0 == [other[i]["item_idx"] for i in range(len(other))]
    for i in range(len(data)):
        if i % 5:  # negatives are never the user's positives
            row = data[3 * len(data) + i]
            assert not dm.sampler.is_positive(row["user_idx"], row["item_idx"])


def test_popularity_sampling_favours_clicked_items(tmp_path):
    make_dataset(tmp_path, users=40, items=40, per_user=3)
    dm = datamodule_for(tmp_path, negative_sampling="popularity", negatives_per_positive=30, eval_candidates=1)
    data = dm.dataset("train", "interactions", fields=("item_idx", "click"))
    rows = [data[i] for i in range(len(data))]
    negatives = np.array([row["item_idx"] for row in rows if row["click"] == 0])
    train_counts = np.bincount(dm.log.item[dm.log.part == 0], minlength=40)
    popular, rare = train_counts >= np.quantile(train_counts, 0.75), train_counts == 0
    per_item = np.bincount(negatives, minlength=40) / len(negatives)
    assert per_item[popular].mean() > 2 * per_item[rare].mean()


def test_explicit_data_uses_real_non_clicks(tmp_path):
    make_dataset(tmp_path, users=5, items=12, per_user=7, implicit=False)
    dm = datamodule_for(tmp_path)
    assert dm.sampler is None
    train = dm.dataset("train", "interactions")
    assert len(train) == int((dm.log.part == 0).sum())  # no sampled rows
    clicks = [train[i]["click"].item() for i in range(len(train))]
    assert clicks == dm.log.click[dm.log.part == 0].astype(float).tolist()
    test = dm.dataset("test", "interactions", fields=("user_idx", "group"))
    assert all(test[i]["group"] == test[i]["user_idx"] for i in range(len(test)))  # groups are users (GAUC)


def test_trainer_reads_unit_fields_and_resamples_per_epoch(implicit_root):
    dm = ICGDataModule(implicit_root, image_size=8, batch_size=8, eval_candidates=3)
    stage = RecordingStage()
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(stage, datamodule=dm)
    assert len(stage.seen[0]) == len(stage.seen[1]) == 6 * 4 * 5
    assert sorted(stage.seen[0]) != sorted(stage.seen[1])  # new negatives in epoch 1


def test_batch_times_world_size_checked(implicit_root):
    dm = ICGDataModule(implicit_root, batch_size=100, eval_candidates=3)
    dm.setup("fit")

    class _Trainer:
        lightning_module = RecordingStage()
        world_size = 2

    dm.trainer = _Trainer()
    with pytest.raises(
        ValueError, match=r"batch_size 100 x world size 2 = 200 is larger than the train set \(120 rows"
    ):
        dm.train_dataloader()


def test_missing_data_unit_is_named(implicit_root):
    dm = datamodule_for(implicit_root)

    class _NoUnit:
        lightning_module = torch.nn.Linear(1, 1)
        world_size = 1

    dm.trainer = _NoUnit()
    with pytest.raises(ValueError, match="Linear has no class attribute data_unit"):
        dm.val_dataloader()
