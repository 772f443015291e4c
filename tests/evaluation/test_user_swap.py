"""The user-swap test: its measures on hand-made numbers, and the whole test on methods whose answer is known."""

import pytest
import torch

from icg.evaluation.user_swap import (
    common_seed,
    compare,
    distance_block,
    other_users,
    per_user_correlation,
    sign_agreement,
    spread,
    takes_seeds,
)
from icg.generation.seeds import pair_seed


def test_compare_counts_wins_ties_and_losses():
    own = torch.tensor([0.5, 0.4, 0.3, 0.3])
    other = torch.tensor([0.4, 0.4, 0.5, 0.3 + 1e-8])  # win, tie, loss, tie (within TIE)
    result = compare(own, other)
    assert result["wins"] == 0.25 and result["ties"] == 0.5 and result["losses"] == 0.25
    assert result["win_rate"] == pytest.approx(0.5)
    assert result["margin"] == pytest.approx((0.1 + 0 - 0.2 - 1e-8) / 4)
    assert compare(torch.ones(3), torch.ones(3))["win_rate"] == 0.5  # identical covers: all ties, not losses
    with pytest.raises(ValueError, match="no comparisons"):
        compare(torch.zeros(0), torch.zeros(0))


def test_sign_agreement_of_the_oracle_itself_its_opposite_and_all_ties():
    oracle = torch.tensor([0.2, -0.1, 0.05, 0.0])
    assert sign_agreement(oracle, oracle) == 1.0  # the oracle's own tie is left out
    assert sign_agreement(-oracle, oracle) == 0.0
    assert sign_agreement(torch.tensor([1.0, 1.0, 0.0, 5.0]), oracle) == pytest.approx((1 + 0 + 0.5) / 3)
    assert sign_agreement(oracle, torch.zeros(4)) is None


def test_per_user_correlation_removes_each_covers_mean_and_optionally_each_users():
    torch.manual_seed(0)
    oracle = torch.randn(5, 7)
    assert per_user_correlation(oracle, oracle) == pytest.approx(1.0)
    # a model that adds a cover's appeal for everyone (a column offset) has the same per-user differences
    assert per_user_correlation(oracle + torch.randn(1, 7) * 10, oracle) == pytest.approx(1.0)
    assert per_user_correlation(-oracle, oracle) == pytest.approx(-1.0)
    # a per-user offset lowers the per-user correlation; removing each user's mean too restores it
    offset = oracle + torch.randn(5, 1) * 10
    assert per_user_correlation(offset, oracle) < 0.9
    assert per_user_correlation(offset, oracle, interaction=True) == pytest.approx(
        per_user_correlation(oracle, oracle, interaction=True)
    )
    assert per_user_correlation(torch.ones(5, 7), oracle) is None  # a model blind to users


def test_other_users_are_the_next_ones_wrapping_around():
    users = [3, 5, 8, 13]
    assert other_users(users, 5, 2) == [8, 13]
    assert other_users(users, 13, 3) == [3, 5, 8]
    assert other_users(users, 3, 9) == [5, 8, 13]  # at most every other user
    assert other_users(users, 6, 2) == [8, 13]  # a user outside the list: the next ones in user_idx order
    assert other_users([4], 4, 2) == []


def test_spread_takes_every_users_first_pair_before_anyones_second():
    pairs = [(1, 10), (1, 11), (1, 12), (2, 20), (3, 30), (3, 31)]
    assert spread(pairs, 4) == [(1, 10), (1, 11), (2, 20), (3, 30)]
    assert spread(pairs, 3) == [(1, 10), (2, 20), (3, 30)]
    assert spread(pairs, None) == pairs == spread(pairs, 6)


def test_distance_block_puts_the_user_effect_beside_seed_noise():
    torch.manual_seed(0)
    a = torch.rand(4, 3, 16, 16)
    near, far = (a + 0.05).clamp(0, 1), (a + 0.3).clamp(0, 1)
    block = distance_block((a, far), (a, near))
    assert block["user_rmse"] > block["seed_rmse"] > 0 and block["rmse_ratio"] > 1
    assert block["dssim_ratio"] == pytest.approx(block["user_dssim"] / block["seed_dssim"])
    same = distance_block((a, a.clone()), None)
    assert same["user_rmse"] == pytest.approx(0.0) and same["seed_rmse"] is None and same["rmse_ratio"] is None


def test_common_seed_is_one_per_item_and_no_pairs_own():
    assert common_seed(0, "i1") == common_seed(0, "i1") != common_seed(0, "i2")
    assert common_seed(0, "i1") != pair_seed(0, "u1", "i1")
    assert takes_seeds(lambda batch, seeds=None: batch) and not takes_seeds(lambda batch: batch)


# ------------------------------------------------------------------------------------ the whole test, known answers
class OracleClickModel(torch.nn.Module):
    """A click model that *is* the oracle (``sign=-1``: its opposite); its image features are the pixels."""

    title_type = "none"

    def __init__(self, oracle, side: int, sign: float = 1.0):
        super().__init__()
        self.oracle, self.side, self.sign = oracle, side, sign
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter tells callers the device

    def encode_images(self, images):
        return images.flatten(1)

    def score_features(self, feats, rows, titles=None):
        return self.sign * self.oracle.logits(feats.view(-1, 3, self.side, self.side), rows)


class PickMethod:
    """Covers from a fixed set of flat colours: per user the one the oracle scores highest (``pick="best"``), lowest
    (``"worst"``), or the first for everyone (``"same"``), plus a little noise from each cover's seed."""

    seed = 0

    def __init__(self, oracle, pick: str):
        self.oracle, self.pick = oracle, pick
        colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.9, 0.2], [0.5, 0.5, 0.5]])
        self.candidates = colours[:, :, None, None].expand(-1, 3, 16, 16).clone()

    def __call__(self, batch, seeds=None):
        if seeds is None:
            seeds = [pair_seed(self.seed, u, i) for u, i in zip(batch["user_id"], batch["item_id"], strict=True)]
        probs = self.oracle.probability_matrix(self.candidates)[self.oracle.user_index(batch["user_id"])]
        chosen = {"best": probs.argmax(1), "worst": probs.argmin(1), "same": torch.zeros(len(seeds), dtype=int)}
        noise = torch.stack([torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])
        return (self.candidates[chosen[self.pick]] + 1e-4 * noise).clamp(0, 1)


@pytest.fixture(scope="module")
def swap_run(tiny_platform):
    """The user-swap test of the three pick methods, graded by the oracle (evaluator) and its opposite (stage 1)."""
    from icg.data.datamodule import ICGDataModule
    from icg.data.oracle import Oracle
    from icg.evaluation.covers import generate_covers
    from icg.evaluation.evaluator import ClickModel
    from icg.evaluation.sample import draw_sample
    from icg.evaluation.settings import SampleSettings, UserSwapSettings
    from icg.evaluation.user_swap import Graders, user_swap_test

    dm = ICGDataModule(str(tiny_platform), image_size=16, eval_candidates=10)
    dm.setup("test")
    oracle = Oracle.from_dataset(tiny_platform)
    chosen = draw_sample(dm, SampleSettings(num_users=6, downstream_users=3, downstream_negatives=2))
    methods = {pick: PickMethod(oracle, pick) for pick in ("best", "worst", "same")}
    methods["no_seeds"] = lambda batch: methods["same"](batch)
    covers, _ = generate_covers(methods, dm, chosen.all_pairs, batch_size=8)
    rows = torch.arange(dm.num_users)
    evaluator = ClickModel(OracleClickModel(oracle, 16), rows, "the oracle")
    stage1 = ClickModel(OracleClickModel(oracle, 16, -1.0), rows, "the oracle's opposite")
    graders = Graders(oracle, evaluator, stage1, list(map(str, dm.user_ids)))
    settings = UserSwapSettings(others=3, methods=("best", "worst", "same", "no_seeds", "absent"), gallery_items=3)
    return user_swap_test(dm, methods, covers, chosen, graders, settings), chosen


def test_user_swap_rewards_the_covers_picked_for_their_user(swap_run):
    result, chosen = swap_run
    for set_name in ("held_out", "candidates"):
        best, worst, same = (result.block[set_name][m] for m in ("best", "worst", "same"))
        assert best["comparisons"] == 3 * best["pairs"] and best["pairs"] > 0
        # the own cover is the user's favourite: it never loses, and wins wherever the other user picked another
        assert best["oracle"]["losses"] == 0 and best["oracle"]["wins"] > 0 and best["oracle"]["margin"] > 0
        assert worst["oracle"]["wins"] == 0 and worst["oracle"]["margin"] < 0
        assert same["oracle"]["ties"] == 1.0 and same["oracle"]["win_rate"] == 0.5 and same["oracle"]["margin"] == 0
        # the evaluator here is the oracle, the stage-1 model its opposite
        assert best["evaluator"] == pytest.approx(best["oracle"], abs=1e-6)
        assert best["agreement"] == {"evaluator": 1.0, "stage1": 0.0}
        assert same["agreement"] == {"evaluator": None, "stage1": None}
        assert f"user_swap/{set_name}/same/agreement/stage1" in result.unavailable
        # covers made for different users differ for "best", not for "same"; seed noise is 1e-4 for both
        assert best["distance"]["user_rmse"] > 0.01 and same["distance"]["user_rmse"] < 1e-3
        assert 0 < same["distance"]["seed_rmse"] < 1e-3 and best["distance"]["rmse_ratio"] > 100
    assert result.block["held_out"]["best"]["pairs"] == len(chosen.main_pairs)
    assert "user_swap/no_seeds" in result.unavailable and "user_swap/absent" in result.unavailable
    assert set(result.block["held_out"]) == {"best", "worst", "same"}


def test_click_model_agreement_correlations(swap_run):
    agreement = swap_run[0].block["agreement"]
    assert set(agreement["evaluator"]["per_user"]) == {"reference", "best", "worst", "same"}
    for name, r in agreement["evaluator"]["per_user"].items():
        assert r == pytest.approx(1.0), name
        assert agreement["stage1"]["per_user"][name] == pytest.approx(-1.0), name


def test_user_swap_gallery_section(swap_run, tmp_path):
    from icg.evaluation.gallery import _label, _user_header
    from icg.evaluation.swap_gallery import swap_section

    result, chosen = swap_run
    gallery = result.gallery
    users, items = gallery["users"], gallery["items"]
    assert len(users) == 4 and len(items) == 3 and len(gallery["covers"]["best"]) == 12
    best, same = gallery["own"]["best"], gallery["others"]["best"]
    assert all(o >= s - 1e-6 for o, s in zip(best, same, strict=True))  # each user's favourite beats the others'
    assert gallery["own"]["same"] == pytest.approx(gallery["others"]["same"], abs=1e-6)
    assert any(gallery["clicked"])  # the first user's held-out items come first
    page = swap_section(gallery, tmp_path, lambda u: _user_header(u, None), _label)
    assert page.count("<img") == 3 + 12 * 3 and page.count("<tr>") == 2 + 3
    assert page.count("<b>clicked</b>") == 1 + sum(gallery["clicked"])  # the legend, then once per (user, item)
    assert all((tmp_path / f"swap_i0_u{c}_best.png").is_file() for c in range(4))


def test_oracle_logit_matrix_of_some_users_is_those_rows(tiny_platform):
    from icg.data.oracle import Oracle

    oracle = Oracle.from_dataset(tiny_platform)
    images, rows = torch.rand(5, 3, 16, 16), torch.tensor([4, 0, 7])
    torch.testing.assert_close(oracle.logit_matrix(images, rows), oracle.logit_matrix(images)[rows])
    torch.testing.assert_close(oracle.logit_matrix(images)[rows[0], 2], oracle.logits(images[2:3], rows[:1])[0])
