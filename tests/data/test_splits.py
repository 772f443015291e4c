"""Per-user time-ordered splits are deterministic and leak-free; histories never see the future; negatives are
never a user's positive (icg/data/splits.py and its use by the DataModule)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from icg.data import splits
from icg.data.datamodule import ICGDataModule
from icg.data.splits import TEST, TRAIN, VAL, InteractionLog, NegativeSampler, row_rng, split_parts, time_order
from tests.helpers.data import make_dataset


def test_split_parts_last_k_held_out():
    user = np.array([0] * 7 + [1] * 4 + [2] * 5)
    part, train_end = split_parts(user, 3, holdout=2)
    assert part[:7].tolist() == [TRAIN, TRAIN, TRAIN, VAL, VAL, TEST, TEST]
    assert part[7:11].tolist() == [TRAIN] * 4  # 4 < 2*2+1: stays in train
    assert part[11:].tolist() == [TRAIN, VAL, VAL, TEST, TEST]
    assert train_end.tolist() == [3, 11, 12]


@pytest.mark.parametrize("parts", [1, 2, 3, 8])
@pytest.mark.parametrize("span", [(0, 3), (1_600_000_000, 1_600_000_050), (-(2**62), 2**62)])
def test_time_order_equals_lexsort(span, parts, monkeypatch):
    # many ties in every key (few users, items, timestamps) and, in the last case, timestamps over 2**32 apart;
    # keys are built in chunks of 999 rows here so that the chunk boundaries are crossed; the rows are split into
    # `parts` user ranges ordered in threads, which must not change the result
    monkeypatch.setattr(splits, "CHUNK", 999)
    rng = np.random.default_rng(1)
    for rows in (0, 1, 2, 50, 20_000):
        user = rng.integers(0, 40, rows).astype(np.int32)
        item = rng.integers(0, 6, rows).astype(np.int32)
        timestamp = rng.integers(*span, rows)
        expected = np.lexsort((item, timestamp, user))
        order, users, times = splits.time_order_columns(user, timestamp, item, parts=parts)
        assert order.tolist() == expected.tolist()
        assert users.tolist() == user[expected].tolist() and times.tolist() == timestamp[expected].tolist()
    assert time_order(user, timestamp, item).tolist() == expected.tolist()


def test_time_order_user_ranges_cover_every_row_once():
    # one user holding most rows cannot be split: fewer ranges, still every row exactly once, users ascending
    user = np.array([3] * 90 + [0, 1, 2, 5, 5, 7, 9, 9, 9, 9], np.int32)
    np.random.default_rng(0).shuffle(user)
    bounds, below = splits.user_bounds(user, 4)
    assert 1 <= len(bounds) <= 3 and below == [int((user < b).sum()) for b in bounds]
    cuts = [None, *bounds, None]
    ranges = [splits.rows_of_users(user, lo, hi) for lo, hi in itertools.pairwise(cuts)]
    assert sorted(np.concatenate(ranges).tolist()) == list(range(len(user)))
    assert all(user[a].max() < user[b].min() for a, b in itertools.pairwise(ranges))
    assert splits.user_bounds(np.zeros(10, np.int32), 2) == ([], [])
    # from a million rows on, the cuts come from every 16th row; the counts below them stay exact
    user = np.random.default_rng(2).integers(0, 1000, 1 << 20).astype(np.int32)
    bounds, below = splits.user_bounds(user, 3)
    assert len(bounds) == 2 and below == [int((user < b).sum()) for b in bounds]
    assert all(abs(size - len(user) / 3) < 0.02 * len(user) for size in np.diff([0, *below, len(user)]))


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
def test_sorted_pairs_in_parts_equal_one_sort(cores, monkeypatch):
    # the negative sampler's (user, item) keys are built and sorted in one part per core, cut where the user changes;
    # a log in user order (with one user spanning the would-be cuts) and one in file order both come out sorted
    monkeypatch.setattr(splits, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(splits, "cores", lambda: cores)
    rng = np.random.default_rng(3)
    user = np.sort(np.concatenate([rng.integers(0, 30, 500), np.full(400, 7)])).astype(np.int32)
    item = rng.integers(0, 50, len(user)).astype(np.int32)
    expected = np.sort(user.astype(np.int64) * 50 + item)
    assert splits.sorted_pairs(user, item, 50).tolist() == expected.tolist()
    shuffled = rng.permutation(len(user))
    assert splits.sorted_pairs(user[shuffled], item[shuffled], 50).tolist() == expected.tolist()
    assert splits.sorted_pairs(user[:0], item[:0], 50).tolist() == []


def _toy_log(holdout=1):
    # user 0 clicks items 5, 3, 5, 7, 2 in time order; user 1: 1, 4, 6
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int32)
    item = np.array([5, 3, 5, 7, 2, 1, 4, 6], np.int32)
    click = np.ones(8, np.int8)
    return InteractionLog(user, item, click, np.arange(8, dtype=np.int64), 2, holdout)


def test_history_is_causal_and_excludes_target():
    log = _toy_log()
    assert log.part.tolist() == [TRAIN, TRAIN, TRAIN, VAL, TEST, TRAIN, VAL, TEST]
    assert log.history(0, 5, 3).tolist() == [-1, -1, -1]  # nothing before the first click
    assert log.history(1, 3, 3).tolist() == [5, -1, -1]
    assert log.history(2, 5, 3).tolist() == [3, -1, -1]  # the earlier click on 5 is the target: dropped
    # held-out rows see all train clicks (newest first) and nothing held out
    assert log.history(3, 7, 4).tolist() == [5, 3, 5, -1]
    assert log.history(4, 2, 4).tolist() == [5, 3, 5, -1]  # not the val click on 7
    assert log.history(7, 6, 2).tolist() == [1, -1]


def test_negative_sampler_never_returns_positives():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 50, 2000)
    item = rng.integers(0, 60, 2000)
    for distribution in ("uniform", "popularity"):
        sampler = NegativeSampler(user, item, 60, distribution, popularity_items=item)
        for u in range(50):
            negatives = sampler.sample(u, 8, row_rng(0, 0, 0, u), distinct=True)
            assert len(set(negatives.tolist())) == 8
            assert not sampler.is_positive(np.full(8, u), negatives).any()
            own = set(item[user == u].tolist())
            assert not own & set(negatives.tolist())
    again = NegativeSampler(user, item, 60).sample(3, 5, row_rng(0, 0, 0, 3))
    assert again.tolist() == NegativeSampler(user, item, 60).sample(3, 5, row_rng(0, 0, 0, 3)).tolist()


def test_datamodule_split_deterministic_and_leak_free(tmp_path):
    make_dataset(tmp_path, users=8, items=30, per_user=9)
    a, b = ICGDataModule(tmp_path, holdout=2, eval_candidates=5), ICGDataModule(tmp_path, holdout=2, eval_candidates=5)
    a.setup("fit")
    b.setup("fit")
    for name in ("user", "item", "timestamp", "part"):
        assert np.array_equal(getattr(a.log, name), getattr(b.log, name))
    log = a.log
    assert (np.bincount(log.user[log.part == TEST]) == 2).all() and (np.bincount(log.user[log.part == VAL]) == 2).all()
    for u in range(a.num_users):
        mine = log.user == u
        train_ts = log.timestamp[mine & (log.part == TRAIN)]
        val_ts = log.timestamp[mine & (log.part == VAL)]
        test_ts = log.timestamp[mine & (log.part == TEST)]
        assert train_ts.max() <= val_ts.min() and val_ts.max() <= test_ts.min()
    # no held-out (user, item, timestamp) row appears in train
    frame = pd.DataFrame({"u": log.user, "i": log.item, "t": log.timestamp, "p": log.part})
    train = frame[frame.p == TRAIN]
    held = frame[frame.p != TRAIN]
    assert held.merge(train, on=["u", "i", "t"]).empty
    # every history of every row holds only train clicks from before it, never its own item
    for position in range(len(log)):
        history = log.history(position, int(log.item[position]), 10)
        history = history[history >= 0]
        u = log.user[position]
        earlier = (log.user == u) & (log.part == TRAIN) & (log.timestamp < log.timestamp[position])
        assert set(history.tolist()) <= set(log.item[earlier].tolist())
        assert int(log.item[position]) not in history.tolist()


def test_ties_broken_by_item_then_file_row(tmp_path):
    make_dataset(tmp_path, users=1, items=6, per_user=1)
    inter = pd.DataFrame(
        {"user_id": ["u0"] * 4, "item_id": ["i03", "i01", "i02", "i00"], "click": 1, "timestamp": [5, 5, 5, 1]}
    )
    inter.to_parquet(tmp_path / "interactions.parquet", index=False)
    dm = ICGDataModule(tmp_path, holdout=1, eval_candidates=1)
    dm.setup()
    assert dm.item_ids[dm.log.item].tolist() == ["i00", "i01", "i02", "i03"]
    assert dm.log.part.tolist() == [TRAIN, TRAIN, VAL, TEST]
