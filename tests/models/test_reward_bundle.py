"""Reward bundle of stage 2: stand-in rewards, the preference reward, normalization, save/load, NaN detection."""

from __future__ import annotations

import pytest
import torch

from icg import ckpt
from icg.models.image_encoders import TinyImageEncoder
from icg.models.preference import PreferenceModel
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import (
    NonFiniteRewardError,
    RewardBundle,
    RewardOutput,
    load_reward_bundle,
    save_reward_bundle,
)
from icg.models.rewards.preference import PreferenceReward
from icg.models.rewards.standins import ColorfulnessAesthetic, TitleCoverRelevance, hash_bucket, title_ngrams

USERS = [f"u{i}" for i in range(5)]
TITLES = ["Red circle on a dark backdrop", "blue square, striped", "", "Green triangle"]


def tiny_preference_model(title_type: str = "hashed") -> PreferenceModel:
    encoder = TinyImageEncoder(input_size=16, channels=[4], color_bins=3)
    return PreferenceModel(encoder, num_users=len(USERS), embed_dim=4, hidden_dim=8, title_type=title_type)


def write_stage1_checkpoint(path, model: PreferenceModel) -> None:
    """What PreferenceStage writes: the model under ``model.`` and the icg block (spec + user ids)."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    block = {"stage": "preference", "version": 1, "specs": {"model": model.spec}, "user_ids": USERS, "item_ids": []}
    torch.save({"state_dict": state, "icg": block}, path)


def make_bundle(tmp_path) -> RewardBundle:
    torch.manual_seed(0)
    stage1 = tmp_path / "stage1.ckpt"
    write_stage1_checkpoint(stage1, tiny_preference_model())
    rewards = [
        ColorfulnessAesthetic(analysis_size=16),
        TitleCoverRelevance(num_buckets=64, embed_dim=8, channels=[4, 8], image_size=16),
        PreferenceReward(preference_ckpt=str(stage1)),
    ]
    return RewardBundle(rewards, weights=[0.5, 1.0, 2.0])


def context(batch: int = 4) -> RewardContext:
    return RewardContext(titles=TITLES[:batch], user_idx=torch.tensor([0, 3, -1, 4])[:batch])


def test_every_reward_passes_a_gradient_to_the_pixels(tmp_path):
    bundle = make_bundle(tmp_path)
    for name, reward in bundle.rewards.items():
        images = torch.rand(4, 3, 24, 24, requires_grad=True)
        score = reward(images, context())
        assert score.shape == (4,) and torch.isfinite(score).all(), name
        score.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0, f"no pixel gradient from {name}"
        assert not any(p.requires_grad for p in reward.parameters()), f"{name} is not frozen"
    images = torch.rand(4, 3, 24, 24, requires_grad=True)
    bundle(images, context()).total.sum().backward()
    assert images.grad.abs().sum() > 0


def test_colourfulness_orders_grey_below_saturated():
    reward = ColorfulnessAesthetic()
    grey = torch.full((1, 3, 32, 32), 0.5)
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[:, 0, :, ::2] = 1.0  # red/black stripes: colourful and contrasty
    stripes[:, 2, :, 1::2] = 1.0
    scores = reward(torch.cat([grey, stripes]))
    assert scores[0] < 0.01 < 0.5 < scores[1]
    flat = grey.clone().requires_grad_(True)
    reward(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()  # epsilon under the square roots keeps flat images finite


def test_title_hashing_is_stable_and_reserves_bucket_zero():
    assert title_ngrams("Red circle, ON dark!", 2) == [
        "red",
        "circle",
        "on",
        "dark",
        "red circle",
        "circle on",
        "on dark",
    ]
    assert hash_bucket("red", 4096) == hash_bucket("red", 4096) != 0
    assert all(1 <= hash_bucket(w, 8) < 8 for w in ["a", "b", "red circle", "zzz"])


def test_relevance_fit_loss_trains_only_when_unfrozen():
    torch.manual_seed(0)
    reward = TitleCoverRelevance(num_buckets=64, embed_dim=8, channels=[4], image_size=16)
    images = torch.rand(4, 3, 16, 16)
    ctx = RewardContext(titles=["red", "blue", "red", "green"])  # a repeated title shares its targets
    assert not reward.fit_loss(images, ctx).requires_grad
    reward.requires_grad_(True)
    opt = torch.optim.Adam(reward.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = reward.fit_loss(images, ctx)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    with pytest.raises(ValueError, match="titles"):
        reward(images, RewardContext())


def test_fitted_normalization_standardizes_the_fitting_data(tmp_path):
    bundle = make_bundle(tmp_path)
    images = torch.rand(4, 3, 24, 24)
    raw = bundle(images, context()).raw
    stats = bundle.fit_normalization(raw)
    assert bundle.is_fitted and set(stats) == set(bundle.names)
    out = bundle(images, context())
    for name in bundle.names:
        z = out.normalized[name]
        assert abs(z.mean().item()) < 1e-4, name
        assert abs(z.var(unbiased=False).item() - 1.0) < 1e-3, name
    expected = sum(w * out.normalized[n] for w, n in zip(bundle.weights, bundle.names, strict=True))
    torch.testing.assert_close(out.total, expected)
    with pytest.raises(NonFiniteRewardError, match="aesthetic"):
        bundle.fit_normalization({**raw, "aesthetic": torch.tensor([1.0, float("nan")])})


def test_round_trip_rebuilds_the_preference_reward_without_the_stage1_file(tmp_path):
    bundle = make_bundle(tmp_path)
    images = torch.rand(4, 3, 24, 24)
    bundle.fit_normalization(bundle(images, context()).raw)
    before = bundle(images, context())
    path = save_reward_bundle(bundle, tmp_path / "rewards.ckpt")
    (tmp_path / "stage1.ckpt").unlink()  # stage 3 must not need the stage-1 file
    loaded = load_reward_bundle(path)
    assert loaded.names == bundle.names and loaded.weights == bundle.weights and loaded.is_fitted
    after = loaded(images, context())
    for name in bundle.names:
        torch.testing.assert_close(after.raw[name], before.raw[name], rtol=0, atol=0)
    torch.testing.assert_close(after.total, before.total, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    spec_args = torch.load(path, weights_only=True)["icg"]["specs"]["bundle"]["init_args"]["rewards"][2]["init_args"]
    assert spec_args["preference_ckpt"] is None and spec_args["user_ids"] == USERS


def test_preference_reward_scores_the_user(tmp_path):
    model = tiny_preference_model(title_type="none")
    reward = PreferenceReward(model_spec=model.spec, user_ids=USERS)
    reward.model.load_state_dict(model.state_dict())
    with torch.no_grad():
        reward.model.user_embedding_table.weight.normal_()  # distinct users must score differently
    images = torch.rand(1, 3, 16, 16).expand(2, -1, -1, -1)
    scores = reward(images, RewardContext(user_idx=torch.tensor([0, 1])))
    assert scores[0] != scores[1]
    with pytest.raises(ValueError, match="user_idx"):
        reward(images, RewardContext())
    with pytest.raises(RuntimeError, match="preference_ckpt"):
        PreferenceReward()(images, RewardContext(user_idx=torch.tensor([0, 1])))


def test_bad_bundles_and_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        RewardBundle([ColorfulnessAesthetic(), ColorfulnessAesthetic()])
    with pytest.raises(ValueError, match="2 weights for 1 rewards"):
        RewardBundle([ColorfulnessAesthetic()], weights=[1.0, 2.0])
    other = tmp_path / "stage1.ckpt"
    write_stage1_checkpoint(other, tiny_preference_model())
    with pytest.raises(ckpt.CheckpointError, match="rewards_ckpt.*'preference' stage"):
        load_reward_bundle(other)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        load_reward_bundle(tmp_path / "missing.ckpt")


def test_nonfinite_scores_are_reported_by_name():
    out = RewardOutput(
        raw={"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([float("nan"), float("inf")])},
        normalized={},
        total=torch.tensor([1.0, float("nan")]),
    )
    assert out.nonfinite() == {"b": 2}
    with pytest.raises(NonFiniteRewardError, match="'b': 2 of 2"):
        out.check_finite("step 7")


def test_reweight_changes_only_the_named_weights(tmp_path):
    bundle = make_bundle(tmp_path)
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    out = bundle(images, context())
    bundle.reweight({"relevance": 5.0}, "model.init_args.reward_weights")
    assert bundle.weights == [0.5, 5.0, 2.0]
    again = bundle(images, context())
    expected = out.total + 4.0 * out.normalized["relevance"]
    torch.testing.assert_close(again.total, expected)
    with pytest.raises(ValueError, match=r"model.init_args.reward_weights: unknown rewards \['clicks'\]"):
        bundle.reweight({"clicks": 1.0}, "model.init_args.reward_weights")
