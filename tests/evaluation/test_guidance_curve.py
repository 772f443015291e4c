"""The user-guidance curve (issue 20): true click probability and title match per scale, on tiny models, fast."""

import pytest
import torch

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.errors import ConfigError
from icg.evaluation.guidance_curve import guidance_curve
from icg.evaluation.metrics import title_match_accuracy
from icg.evaluation.sample import pairs_batch
from icg.generation import UserTable
from icg.models.rewards.base import RewardContext
from icg.models.rewards.standins import TitleCoverRelevance
from tests.helpers.generation import tiny_generator


@pytest.fixture(scope="module")
def parts(tiny_platform):
    dm = ICGDataModule(str(tiny_platform), image_size=32)
    dm.setup("test")
    torch.manual_seed(2)
    users = [str(u) for u in dm.user_ids[:20]]  # the last users are strangers to the export: the cold-start row
    gen = tiny_generator(UserTable(users, 3 * torch.randn(len(users) + 1, 8)))
    torch.manual_seed(0)
    relevance = TitleCoverRelevance(num_buckets=64, embed_dim=8, channels=[8], image_size=16)  # untrained: a score

    def title_score(images, titles):
        return relevance(images, RewardContext(titles=list(titles)))

    pairs = [(u, (7 * u) % len(dm.catalogue.item_ids)) for u in range(0, 30, 3)]  # 10 pairs, 10 items
    return gen, dm, pairs, Oracle.from_dataset(tiny_platform), title_score


def test_each_point_is_the_covers_of_that_scale_scored_by_the_oracle_and_the_title_match(parts):
    gen, dm, pairs, oracle, title_score = parts
    rows = guidance_curve(gen, dm, pairs, oracle, title_score, scales=[1, 4], seed=3)
    assert [r["user_guidance"] for r in rows] == [1.0, 4.0]
    batch = pairs_batch(dm, pairs)
    for row in rows:  # separately: CoverGenerator's covers at that scale, scored the same way
        covers = gen(batch["user_id"], batch["title"], batch["image"], item_ids=batch["item_id"], output_type="pt",
                     user_guidance=row["user_guidance"]).images  # fmt: skip
        truth = oracle(covers, oracle.user_index(batch["user_id"], "fallback")).mean()
        assert row["true_click_prob"] == pytest.approx(float(truth), abs=1e-6)
        with torch.no_grad():
            acc = title_match_accuracy(title_score, covers, batch["title"], seed=3)
        assert row["title_match_acc"] == pytest.approx(acc)
        assert 0 < row["true_click_prob"] < 1 and 0 <= row["title_match_acc"] <= 1
    assert rows[0]["true_click_prob"] != rows[1]["true_click_prob"]  # the scale changes the covers


def test_bad_scales_and_pairs_are_refused(parts):
    gen, dm, pairs, oracle, title_score = parts
    with pytest.raises(ConfigError, match=r"^scales=-1: expected a finite number >= 0"):
        guidance_curve(gen, dm, pairs, oracle, title_score, scales=[1, -1])
    with pytest.raises(ValueError, match="at least two distinct titles"):
        guidance_curve(gen, dm, [pairs[0], (pairs[1][0], pairs[0][1])], oracle, title_score)
    with pytest.raises(ValueError, match="pairs is empty"):
        guidance_curve(gen, dm, [], oracle, title_score)
