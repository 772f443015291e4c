"""Personalization itself (issue 20): the faithful headroom, the personal share, and a pool + pick of generic covers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.data.synthetic import faithful_variants, item_attributes, read_truth, render_cover
from icg.evaluation.covers import generate_covers
from icg.evaluation.evaluator import ClickModel, index_map
from icg.evaluation.headroom import FaithfulTable, personal_share
from icg.evaluation.metrics import bootstrap_ratio
from icg.evaluation.personalization import evaluation_sets, format_personalization, measure_personalization
from icg.evaluation.pool_pick import generate_pools, pick, pool_pick, score_pools
from icg.evaluation.sample import draw_sample
from icg.evaluation.settings import RunSettings, SampleSettings, ScoringSettings
from icg.generation.seeds import pair_seed
from icg.models.preference import PreferenceModel

SIDE = 32


class SeedColour:
    """A stand-in cover method: a flat colour drawn from each pair's seed (so pool slots differ); records its calls."""

    def __init__(self, base: int) -> None:
        self.base, self.calls = base, []

    def __call__(self, batch: dict) -> torch.Tensor:
        pairs = list(zip(batch["user_id"], batch["item_id"], strict=True))
        self.calls += pairs
        gens = [torch.Generator().manual_seed(pair_seed(self.base, u, i)) for u, i in pairs]
        colours = torch.stack([torch.rand(3, generator=g) for g in gens])
        return colours[:, :, None, None].expand(-1, -1, SIDE, SIDE).clone()


@pytest.fixture(scope="module")
def dm(tiny_platform) -> ICGDataModule:
    data = ICGDataModule(str(tiny_platform), image_size=SIDE, eval_candidates=5)
    data.setup("test")
    return data


@pytest.fixture(scope="module")
def oracle(tiny_platform) -> Oracle:
    return Oracle.from_dataset(tiny_platform)


@pytest.fixture(scope="module")
def picker(tiny_stage1_ckpt, dm) -> ClickModel:
    model, ids = PreferenceModel.from_checkpoint(tiny_stage1_ckpt, "stage1_ckpt")
    return ClickModel(model.eval(), index_map(ids or dm.user_ids, dm), "tiny stage 1")


def test_bootstrap_ratio_is_the_ratio_of_means_with_a_seeded_interval():
    users = np.repeat(np.arange(30), 3)
    rng = np.random.default_rng(0)
    den = rng.uniform(0.1, 0.3, size=90)
    num = 0.4 * den + rng.normal(0, 0.01, size=90)
    result = bootstrap_ratio(num, den, users, num_samples=500, seed=2)
    assert result["value"] == pytest.approx(num.mean() / den.mean())
    assert result["ci_low"] <= result["value"] <= result["ci_high"] and 0.3 < result["ci_low"] < result["ci_high"] < 0.5
    assert result["num_groups"] == 30 and bootstrap_ratio(num, den, users, num_samples=500, seed=2) == result
    one_user = bootstrap_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], ["u", "u", "u"], num_samples=50)
    assert one_user["value"] == one_user["ci_low"] == one_user["ci_high"] == pytest.approx(1.0)  # nothing to resample
    with pytest.raises(ValueError, match="positive"):
        bootstrap_ratio([1.0], [0.0], ["u"])


def test_personal_share_is_the_gain_over_without_users_per_unit_of_headroom():
    share = personal_share(np.array([0.5, 0.6, 0.3]), np.array([0.4, 0.4, 0.3]), np.array([0.2, 0.2, 0.1]),
                           ["a", "b", "b"], num_samples=100, seed=0)  # fmt: skip
    assert share["value"] == pytest.approx((0.1 + 0.2 + 0.0) / 3 / (0.5 / 3))
    assert personal_share(np.ones(2), np.zeros(2), np.zeros(2), ["a", "b"], num_samples=10, seed=0) is None


def test_faithful_table_scores_every_variant_and_the_generic_one_is_best_on_average(tiny_platform, dm, oracle):
    truth = read_truth(tiny_platform)
    items = {3: str(dm.catalogue.item_ids[3]), 7: str(dm.catalogue.item_ids[7])}
    table = FaithfulTable.render(oracle, truth, items, SIDE)
    variants = faithful_variants(item_attributes(truth, items[7]))
    assert table.probabilities[7].shape == (oracle.num_users, len(variants)) == (oracle.num_users, 21)
    pixels = torch.from_numpy(render_cover(variants[5], SIDE)).permute(2, 0, 1).float()[None] / 255
    user = torch.tensor([4])
    torch.testing.assert_close(table.probabilities[7][4, 5], oracle(pixels, user)[0])
    pairs = [(u, i) for u in range(oracle.num_users) for i in items]
    personal, generic = table.best(pairs, torch.tensor([u for u, _ in pairs]))
    assert np.all(personal >= generic) and (personal - generic).mean() > 0  # tastes differ, so the headroom is real
    for item in items:  # best generic: one variant per item, the best in the mean over all users
        mask = np.array([i == item for _, i in pairs])
        chosen = int(table.probabilities[item].mean(0).argmax())
        np.testing.assert_allclose(generic[mask], table.probabilities[item][:, chosen].numpy(), rtol=1e-6)
        assert generic[mask].mean() == pytest.approx(float(table.probabilities[item].mean(0).max()), rel=1e-5)
        np.testing.assert_allclose(personal[mask], table.probabilities[item].amax(1).numpy(), rtol=1e-6)


def test_pools_draw_one_seed_per_slot_and_a_smaller_pool_is_a_prefix(dm):
    method = SeedColour(0)
    small, large = generate_pools(method, dm, {2: 2}, 4), generate_pools(method, dm, {2: 5, 9: 1}, 3)
    assert large[2].shape == (5, 3, SIDE, SIDE) and large[9].shape == (1, 3, SIDE, SIDE)
    torch.testing.assert_close(small[2], large[2][:2])
    assert len({tuple(c[:, 0, 0].tolist()) for c in large[2]}) == 5  # five seeds, five covers
    assert {u for u, _ in method.calls} == {f"pool/{k}" for k in range(5)}


def test_the_pick_is_the_argmax_of_the_pickers_scores(dm, oracle, picker):
    covers = torch.rand(6, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    pools = score_pools({0: covers, 1: covers[:2]}, picker, oracle, chunk=4)  # chunks across items
    pool = pools[0]
    torch.testing.assert_close(pools[1].true_prob, oracle.probability_matrix(covers[:2]))
    torch.testing.assert_close(pool.true_prob, oracle.probability_matrix(covers))
    users, title = torch.tensor([0, 1, 2, 5]), str(dm.catalogue.titles[0])
    for size in (6, 3):
        with torch.no_grad():
            scores = torch.stack([picker.model(covers[:size], picker.user_rows[u].repeat(size), titles=[title] * size)
                                  for u in users])  # fmt: skip
        assert torch.equal(pick(picker, pool, size, users, title), scores.argmax(1))
    pairs, rows = [(int(u), 0) for u in users], oracle.user_index([str(dm.user_ids[int(u)]) for u in users])
    result = pool_pick({0: pool}, pairs, {0: 4}, picker, rows, {0: title})
    true = oracle.probability_matrix(covers)[rows, :4].double()
    slots = pick(picker, pool, 4, users, title)
    np.testing.assert_allclose(result["picked"], true[torch.arange(4), slots].numpy(), rtol=1e-6)
    np.testing.assert_allclose(result["random_pick"], true.mean(1).numpy(), rtol=1e-6)
    best = result["best_in_pool"]
    assert np.all(best >= result["picked"]) and np.all(best >= result["random_pick"])


def test_personalization_block_on_clicked_pairs_and_candidates(tiny_platform, dm, oracle, picker):
    sample = draw_sample(dm, SampleSettings(num_users=8, downstream_users=4, downstream_negatives=3))
    methods = {"title_only": SeedColour(1), "icg_no_user": SeedColour(2), "icg": SeedColour(3)}
    covers, _ = generate_covers(methods, dm, sample.all_pairs, 8)
    for method in methods.values():
        method.calls.clear()
    settings = ScoringSettings(pool_size=3, bootstrap_samples=100)
    unavailable: dict[str, str] = {}
    block, seconds = measure_personalization(dm, str(tiny_platform), oracle, picker, methods, covers, sample,
                                             settings, RunSettings(pool_batch_size=8), 0, unavailable)  # fmt: skip
    sets = evaluation_sets(sample)
    assert set(seconds) == {"pool/icg_no_user", "pool/title_only"} and not unavailable
    assert len(sets["clicked"]) == len(sample.main_rows) and sets["candidates"]
    counts = {name: Counter(i for _, i in set(pairs)) for name, pairs in sets.items()}
    generated = Counter(i for u, i in methods["icg_no_user"].calls)
    for item, made in generated.items():  # one pool per item serves both sets: the larger of the sizes asked
        item_idx = int(np.flatnonzero(dm.catalogue.item_ids == item)[0])
        assert made == max(3, counts["clicked"][item_idx], counts["candidates"][item_idx])
    for name, pairs in sets.items():
        figures = block[name]
        assert figures["pairs"] == len(pairs) and figures["icg_covers"] == len(set(pairs))
        faithful, probs = figures["faithful"], figures["true_click_prob"]
        assert faithful["headroom"] >= 0 and faithful["best_personal"] >= faithful["best_generic"]
        assert figures["personal_share"]["value"] == pytest.approx(
            (probs["icg"] - probs["icg_no_user"]) / faithful["headroom"], rel=1e-6
        )
        assert set(probs) == {"reference", "title_only", "icg_no_user", "icg"}
        for method in ("icg_no_user", "title_only"):
            pool, equal = figures["pool_pick"][method]["pool"], figures["pool_pick"][method]["equal_cost"]
            assert pool["covers"] == 3 * figures["items"] and pool["covers_per_item"] == 3
            assert equal["covers"] == figures["icg_covers"]  # equal cost: as many covers as ICG generates
            assert equal["covers_per_item"] == pytest.approx(np.mean(list(counts[name].values())))
            assert equal["best_in_pool"] >= equal["true_click_prob"] - 1e-12
            assert "icg_lift" in pool
    text = "\n".join(format_personalization(block))
    assert "equal cost" in text and "4 per item" not in text and "3 per item" in text and "personal share" in text
    missing: dict[str, str] = {}
    assert measure_personalization(dm, str(tiny_platform), None, picker, methods, covers, sample, settings,
                                   RunSettings(), 0, missing) == (None, {})  # fmt: skip
    assert "personalization" in missing


@pytest.mark.slow  # the whole evaluation (its evaluator is trained), with stand-in cover methods
def test_evaluate_reports_the_block_beside_the_main_table(tiny_platform, tiny_stage1_ckpt, tmp_path):
    import json

    from icg.evaluation.run import evaluate
    from icg.evaluation.settings import DataSettings, EvaluatorSettings

    methods = {"title_only": SeedColour(1), "icg_no_user": SeedColour(2), "icg": SeedColour(3)}
    evaluate(tiny_platform, tiny_stage1_ckpt, methods, tmp_path, data=DataSettings(image_size=SIDE, eval_candidates=5),
             sample=SampleSettings(num_users=5, grid_users=2, grid_items=2, downstream_users=3, downstream_negatives=2),
             evaluator=EvaluatorSettings(epochs=1), scoring=ScoringSettings(bootstrap_samples=50),
             run=RunSettings(tensorboard=False))  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    block, reference = report["personalization"], report["reference_covers"]
    assert block["pool_size"] == 4 and set(report["generation_seconds"]) >= {"pool/icg_no_user", "pool/title_only"}
    clicked, candidates = block["clicked"]["true_click_prob"], block["candidates"]["true_click_prob"]
    assert clicked["reference"] == pytest.approx(reference["true_click_prob"], rel=1e-6)  # the item's own cover
    assert candidates["reference"] == pytest.approx(reference["true_click_prob_candidates"], rel=1e-6)
    for method in methods:
        row = report["methods"][method]
        assert clicked[method] == pytest.approx(row["true_click_prob"], rel=1e-6)
        assert candidates[method] == pytest.approx(row["true_click_prob_candidates"], rel=1e-6)
    markdown = (tmp_path / "report.md").read_text()
    assert "Personalization itself" in markdown and "pool + pick: icg_no_user, equal cost" in markdown
