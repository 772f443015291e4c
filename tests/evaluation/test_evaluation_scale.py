"""`icg evaluate` at scale: seeded user and pair samples, the click-model comparison on a sample, and a device.

At Pixel1M size (1.0M users, 19.9M rows) evaluation scores a seeded sample of users and trains its evaluator on
those users' clicks (benchmarks/evaluation_scale.py measures it); on a dataset below the bounds every user and
every click is used exactly as before, so the demo's numbers do not move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg.cli import main
from icg.data.datamodule import ICGDataModule
from icg.evaluation.evaluator import train_rows
from icg.evaluation.sample import sample_users
from icg.lit.preference import compare_click_models


@pytest.fixture(scope="module")
def dm(tiny_platform) -> ICGDataModule:
    data = ICGDataModule(tiny_platform, image_size=32, eval_candidates=5, batch_size=16)
    data.setup("test")
    return data


def test_user_sample_is_seeded_and_none_below_the_bound(dm):
    assert sample_users(dm, "test", None, seed=0) is None
    assert sample_users(dm, "test", dm.num_users, seed=0) is None
    first, again, other = (sample_users(dm, "test", 7, seed=s) for s in (0, 0, 1))
    assert len(first) == 7 and np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.array_equal(first, np.unique(first)) and set(first) <= set(range(dm.num_users))


def test_comparison_on_every_user_equals_the_whole_split(dm):
    whole = compare_click_models(dm)
    sampled = compare_click_models(dm, users=np.arange(dm.num_users))
    assert sampled == whole


def test_comparison_on_a_user_sample_scores_only_their_rows(dm):
    from icg.lit.metrics import ClickMetrics

    users = sample_users(dm, "test", 5, seed=0)
    table = compare_click_models(dm, users=users)["popularity"]
    # the reference: popularity = train clicks per item, scored on those users' held-out rows only
    test = dm.dataset("test", "interactions")  # (datasets keyed by epoch * len + i never end: index them)
    rows = [test[i] for i in range(len(test)) if test[i]["user_idx"] in set(users.tolist())]
    train = dm.dataset("train", "interactions", fields=("item_idx", "click"))
    clicks = torch.zeros(dm.num_items)
    for i in range(len(train)):
        clicks[train[i]["item_idx"]] += train[i]["click"]
    metrics = ClickMetrics(10)
    items, labels = torch.tensor([r["item_idx"] for r in rows]), torch.stack([r["click"] for r in rows])
    groups = (torch.tensor([r["user_idx"] for r in rows]), torch.tensor([r["group"] for r in rows]))
    metrics.update(torch.log1p(clicks[items]), labels, *groups)
    assert table == pytest.approx({k: float(v) for k, v in metrics.compute().items()}, rel=1e-6)  # batch sums


def test_evaluator_rows_of_sampled_users_and_at_most_max_pairs(dm):
    dataset = dm.dataset("train", "interactions", fields=("user_idx",))
    whole = train_rows(dm, None, None, seed=0, batch_size=64)
    assert len(whole.dataset) == len(dataset)  # the DataModule's own train rows, unchanged
    users = np.array([0, 3, 5])
    loader = train_rows(dm, users, None, seed=0, batch_size=64)
    seen = torch.cat([batch["user_idx"] for batch in loader])
    positives = int(np.isin(dm.log.user[dataset.positions], users).sum())
    assert set(seen.tolist()) == set(users.tolist()) and len(seen) == positives * dataset.per_row
    bounded = train_rows(dm, users, 4, seed=0, batch_size=64)
    assert len(bounded.dataset) == 4 * dataset.per_row
    loader.sampler.set_epoch(1)  # negatives are resampled per epoch through the sample too
    again = torch.cat([batch["user_idx"] for batch in loader])
    assert sorted(again.tolist()) == sorted(seen.tolist())


def test_device_that_is_not_there_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    words = ["evaluate", "--data_root", str(tmp_path), "--stage1_ckpt", "a.ckpt", "--stage3_ckpt", "b.ckpt",
             "--base_model", str(tmp_path), "--device", "cuda"]  # fmt: skip
    assert main(words) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("icg evaluate: --device cuda: torch ") and "sees no CUDA GPU" in err[-1]


def test_evaluator_of_sampled_users_holds_them_alone(dm):
    from icg.evaluation.evaluator import compact_users, train_evaluator

    users = np.array([1, 4, 6])
    rows = compact_users(users, dm.num_users)
    assert rows[users].tolist() == [0, 1, 2] and int((rows >= 0).sum()) == 3  # the rest: the fallback row
    assert torch.equal(compact_users(None, dm.num_users), torch.arange(dm.num_users))
    evaluator = train_evaluator(dm, epochs=1, users=users)
    assert evaluator.num_users == 3  # not a row per dataset user: each optimizer step updates the whole table
    table = compare_click_models(dm, evaluator, users=users, user_rows=rows)["model"]
    assert 0.0 <= table["auc"] <= 1.0
