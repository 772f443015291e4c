"""The synthetic platform's true click model (icg.data.oracle.Oracle): ranking, gradients, agreement with clicks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from icg.data.oracle import Oracle, variance_split
from icg.data.schema import read_dataset
from icg.data.synthetic import (
    CoverAttributes,
    faithful_variants,
    generate_platform,
    hue_names,
    item_attributes,
    personalised_attributes,
    read_truth,
    render_cover,
)

SIZE = 32


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return generate_platform(tmp_path_factory.mktemp("synth") / "p", users=16, items=60, seed=11, image_size=SIZE)


@pytest.fixture(scope="module")
def oracle(platform):
    return Oracle.from_dataset(platform)


def _tensor(covers):
    return torch.from_numpy(np.stack(covers)).permute(0, 3, 1, 2).float() / 255.0


def _dataset_covers(platform):
    items, _, _ = read_dataset(platform)
    items = items.sort_values("item_id")
    return list(items.item_id), _tensor([np.asarray(Image.open(platform / path)) for path in items.image])


def test_frozen_buffers_and_sorted_user_ids(platform, oracle):
    _, interactions, _ = read_dataset(platform)
    assert list(oracle.parameters()) == []
    assert oracle.user_ids == sorted(oracle.user_ids) and len(oracle.user_ids) == 16
    assert set(interactions.user_id) <= set(oracle.user_ids)
    assert oracle.user_index(["u0003", "u0000"]).tolist() == [3, 0]
    with pytest.raises(KeyError, match="u9999"):
        oracle.user_index(["u9999"])
    assert oracle.user_index(["u9999"], unknown="fallback").tolist() == [-1]
    assert len(oracle.feature_names) == oracle.user_taste.shape[1]


def test_preferred_colour_cover_ranks_above_disliked_one(platform, oracle):
    truth = read_truth(platform)
    base = CoverAttributes("red", "star", "light", "flat", scale=0.7, noise_seed=5)
    for profile in truth["users"]:
        liked = replace(base, colour=profile["likes"][0], background=profile["brightness"])
        disliked = replace(liked, colour=profile["dislikes"][0])
        user = oracle.user_index([profile["user_id"]] * 2)
        p_liked, p_disliked = oracle(_tensor([render_cover(liked, SIZE), render_cover(disliked, SIZE)]), user)
        assert p_liked > p_disliked, profile


def test_faithful_personal_covers_raise_the_true_click_probability(platform, oracle):
    """The user's liked backdrop hue, everything the title names kept: a faithful personal cover exists."""
    truth = read_truth(platform)
    item_ids, covers = _dataset_covers(platform)
    gains, changed = [], []
    for profile in truth["users"][:6]:
        attributes = [item_attributes(truth, i) for i in item_ids[:30]]
        mine = [render_cover(personalised_attributes(a, profile), SIZE) for a in attributes]
        user = oracle.user_index([profile["user_id"]] * 30)
        gains.append(oracle(_tensor(mine), user) - oracle(covers[:30], user))
        changed += [a.backdrop_hue != profile["backdrop"] for a in attributes]
    gains, changed = torch.cat(gains), torch.tensor(changed)
    assert gains[changed].mean() > 0.15 and (gains[changed] > 0).float().mean() > 0.9
    assert gains[~changed].abs().max() < 1e-6  # already on the user's hue: the same cover


def test_gradient_reaches_the_pixels_at_any_resolution(oracle):
    for size in (SIZE, 48, 96):
        images = torch.rand(3, 3, size, size, requires_grad=True)
        oracle(images, torch.tensor([0, 5, -1])).sum().backward()
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0, size


def test_scores_are_nearly_resolution_free(platform, oracle):
    _, covers = _dataset_covers(platform)
    users = torch.arange(covers.shape[0]) % oracle.num_users
    bigger = F.interpolate(covers, scale_factor=3, mode="nearest")
    change = (oracle(bigger, users) - oracle(covers, users)).abs()
    # the backdrop frame's edge meets objects that reach it: the one place resampling moves a score visibly
    assert change.max() < 0.1 and change.mean() < 0.01


def test_oracle_on_the_covers_reproduces_the_click_probabilities(platform, oracle):
    _, covers = _dataset_covers(platform)
    click_prob = load_file(str(platform / "truth" / "tables.safetensors"))["click_prob"]
    users = torch.arange(covers.shape[0]) % oracle.num_users
    torch.testing.assert_close(
        oracle(covers, users), click_prob[users, torch.arange(covers.shape[0])], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(oracle.probability_matrix(covers), click_prob, atol=1e-5, rtol=0)


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    return float((positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean())


def test_oracle_separates_clicks_from_random_and_unclicked_pairs(platform, oracle):
    item_ids, covers = _dataset_covers(platform)
    _, interactions, _ = read_dataset(platform)
    with torch.no_grad():
        prob = oracle.probability_matrix(covers).numpy()
    users = oracle.user_index(list(interactions.user_id)).numpy()
    index = {item_id: k for k, item_id in enumerate(item_ids)}
    items = np.array([index[i] for i in interactions.item_id])
    clicked = np.zeros_like(prob, dtype=bool)
    clicked[users, items] = True
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(prob.shape[0], size=2000), rng.integers(prob.shape[1], size=2000)
    keep = ~clicked[random_pairs]
    assert _auc(prob[users, items], prob[random_pairs][keep]) > 0.7
    log = load_file(str(platform / "truth" / "tables.safetensors"))
    shown = prob[log["impression_user"].numpy(), log["impression_item"].numpy()]
    was_clicked = log["impression_click"].numpy().astype(bool)
    assert _auc(shown[was_clicked], shown[~was_clicked]) > 0.7


def test_unknown_user_gets_the_population_taste_and_bad_indices_fail(oracle):
    images = torch.rand(2, 3, SIZE, SIZE)
    z = oracle.standardized_features(images)
    expected = torch.sigmoid(oracle.bias + z @ oracle.population_taste)
    torch.testing.assert_close(oracle(images, torch.tensor([-1, -1])), expected)
    with pytest.raises(IndexError, match="user_idx"):
        oracle(images, torch.tensor([0, oracle.num_users]))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        oracle(images[:, :1], torch.tensor([0, 1]))


def test_from_dataset_names_the_missing_truth(tmp_path):
    with pytest.raises(FileNotFoundError, match="truth"):
        Oracle.from_dataset(tmp_path)


def test_variance_split_puts_taste_on_the_backdrop_and_on_named_attributes(platform, oracle):
    _, covers = _dataset_covers(platform)
    split = variance_split(oracle, covers)
    assert abs(split["user_x_cover"] + split["cover"] + split["user"] - 1) < 1e-4
    taste = split["taste"]
    assert taste["backdrop hue (not named)"] > 0.3 and taste["object colour (named)"] > 0.2
    assert abs(sum(taste.values()) - 1) < 0.2  # groups are nearly uncorrelated over the covers


def test_faithful_variants_keep_what_the_title_names(platform):
    truth = read_truth(platform)
    attributes = item_attributes(truth, truth["items"][0]["item_id"])
    variants = faithful_variants(attributes)
    named = {(v.colour, v.shape, v.background, v.style) for v in variants}
    assert named == {(attributes.colour, attributes.shape, attributes.background, attributes.style)}
    assert {v.backdrop_hue for v in variants} == {*hue_names(), "grey"} and len(set(variants)) == len(variants)
    items, _, _ = read_dataset(platform)
    assert not any(hue in title.lower() for title in items.title for hue in hue_names())
