"""Stage 3 (alignment): gradients reach only the trained parts, rewards rise, export reproduces outputs, CLI runs."""

import json

import pytest
import torch

from icg.ckpt import CheckpointError
from icg.data.datamodule import ICGDataModule
from icg.diffusion.source import DiffusionSource
from icg.errors import ConfigError
from icg.generation import CoverGenerator
from icg.generation.export import EXPORT_FILES
from icg.lit.alignment import AlignmentStage, NonFiniteRewardAbort
from icg.models.adapter import ConditioningAdapter
from icg.models.cover_conditioner import CoverConditioner
from icg.models.fusion import UserFusion, UserOffset
from icg.models.meta_prompt import MetaTokenPrompter
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import RewardOutput
from tests.helpers.cli import TINY, only_ckpt, run_cli
from tests.helpers.noise import seeded_noise


def build_stage(s1, s2, fusion_type="user_token", user_offset=False, **overrides) -> AlignmentStage:
    torch.manual_seed(0)
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, 8, fusion_type),
        ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=8),
        user_offset=UserOffset(8, num_tokens=8, width=32) if user_offset else None,
    )
    settings = dict(num_steps=4, k=2, image_size=32) | overrides
    stage = AlignmentStage(
        conditioner, str(s1), str(s2), diffusion=DiffusionSource(tiny={"sample_size": 16}), **settings
    )
    stage.setup("fit")
    stage.place_frozen()
    return stage


@pytest.fixture(scope="module")
def pairs(tiny_platform):
    dm = ICGDataModule(root=str(tiny_platform), image_size=32, batch_size=4)
    dm.setup("fit")
    return next(iter(dm.dataloader("train", "pairs", batch_size=4)))


def test_gradients_reach_trained_parts_only(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs):
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, user_offset=True)
    loss = stage.training_step(pairs, 0)
    loss.backward()
    cond = stage.conditioner
    assert cond.prompter.meta_tokens.grad is not None and cond.prompter.meta_tokens.grad.abs().sum() > 0
    for part in (cond.fusion, cond.adapter, cond.user_offset):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    frozen = [
        cond.prompter.mllm,
        stage.generator.diffusion.unet,
        stage.generator.diffusion.vae,
        stage.rewards,
    ]
    for module in frozen:
        assert all(p.grad is None and not p.requires_grad for p in module.parameters()), type(module).__name__
    assert not stage.generator.users.embeddings.requires_grad
    assert {id(p) for g in stage.configure_optimizers().param_groups for p in g["params"]} == {
        id(p) for p in cond.parameters() if p.requires_grad
    }


def total_reward(stage: AlignmentStage, pairs, grad_window: str = "none") -> torch.Tensor:
    """Mean weighted total reward of the pairs' covers, each from its own fixed noise."""
    latents = seeded_noise(stage.generator.diffusion, range(len(pairs["title"])), stage.hparams.image_size)
    cond, users = stage.condition(pairs)
    images = stage.generate(cond, latents=latents, grad_window=grad_window)
    return stage.score(images, pairs, users).total.mean()


def trained(stage: AlignmentStage) -> list[torch.Tensor]:
    return [p for p in stage.conditioner.parameters() if p.requires_grad]


def reward_gradient(stage: AlignmentStage, pairs) -> list[torch.Tensor]:
    total_reward(stage, pairs, grad_window="last_k").backward()
    return [p.grad.detach().clone() for p in trained(stage)]


@torch.no_grad()
def slope(stage: AlignmentStage, pairs, direction: list[torch.Tensor], eps: float = 1e-3) -> float:
    """Central finite difference of the total reward along ``direction`` (normalized to unit length)."""
    norm = torch.sqrt(sum((d**2).sum() for d in direction))
    values = []
    for sign in (1.0, -1.0):
        for p, d in zip(trained(stage), direction, strict=True):
            p.add_(sign * eps * d / norm)
        values.append(total_reward(stage, pairs).item())
        for p, d in zip(trained(stage), direction, strict=True):
            p.sub_(sign * eps * d / norm)
    return (values[0] - values[1]) / (2 * eps)


def test_reward_gradient_through_the_sampler_matches_finite_differences(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs):
    """With the gradient window over every step, the backward pass is the exact derivative of the reward.

    Checked along the gradient itself (slope = its norm; measured agreement 0.1 %) and along a fixed random direction
    (slope = the projection; measured 7 %, the finite difference there is near float32 resolution).
    """
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, reg_weight=0.0, k=4)  # num_steps = 4: the full chain
    grads = reward_gradient(stage, pairs)
    norm = torch.sqrt(sum((g**2).sum() for g in grads)).item()
    assert norm > 0
    assert slope(stage, pairs, grads) == pytest.approx(norm, rel=0.02)
    generator = torch.Generator().manual_seed(5)
    direction = [torch.randn(g.shape, generator=generator) for g in grads]
    projection = sum((g * d).sum() for g, d in zip(grads, direction, strict=True)).item()
    projection /= torch.sqrt(sum((d**2).sum() for d in direction)).item()
    assert slope(stage, pairs, direction, eps=1e-2) == pytest.approx(projection, rel=0.25)


def test_truncated_gradient_window_still_climbs_the_full_reward(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs):
    """DRaFT-K (last 2 of 4 steps) drops the earlier steps' terms, but its direction must still raise the reward."""
    full = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, reg_weight=0.0, k=4)
    steepest = torch.sqrt(sum((g**2).sum() for g in reward_gradient(full, pairs))).item()
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, reg_weight=0.0, k=2)
    # measured: 82 % of the steepest slope; a wrong-signed or broken window gives <= 0
    assert slope(stage, pairs, reward_gradient(stage, pairs)) > 0.5 * steepest


def test_a_few_steps_raise_the_total_reward_and_descent_lowers_it(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs):
    """Six Adam steps on the reward vs. the same steps on its negative (the control).

    A random tiny UNet barely listens to its conditioning, so the reward moves by thousandths: 8 random draws of the
    trained weights (+0.5 std noise) spread it over 0.889-0.896, std 0.002. Training must leave that band on the
    side it is told to: measured +0.0045 (ascent) and -0.0065 (descent) from 0.8945.
    """
    moves = {}
    for sign in (1.0, -1.0):
        stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, reg_weight=0.0)
        optimizer = torch.optim.Adam(trained(stage), lr=1e-2)
        with torch.no_grad():
            before = total_reward(stage, pairs).item()
        for _ in range(6):
            optimizer.zero_grad()
            (-sign * total_reward(stage, pairs, grad_window="last_k")).backward()
            optimizer.step()
        with torch.no_grad():
            moves[sign] = total_reward(stage, pairs).item() - before
    assert moves[1.0] > 0.003 and moves[-1.0] < -0.003, moves


@pytest.mark.parametrize(
    ("user_offset", "guidance_scale", "strength"), [(False, 1.0, 1.0), (True, 3.0, 1.0), (True, 3.0, 0.5)]
)
def test_export_reproduces_the_stage_covers(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs, tmp_path, user_offset,
                                            guidance_scale, strength):  # fmt: skip
    """An export folder alone (fresh stock UNet/VAE, no stage-1/2 file) gives the stage's covers, with guidance."""
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, fusion_type="film", user_offset=user_offset,
                        guidance_scale=guidance_scale, strength=strength)  # fmt: skip
    with torch.no_grad():  # move the trained parts away from their init so the test means something
        for p in stage.conditioner.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    expected = stage.predict_step(pairs, 0)
    folder = stage.export(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORT_FILES)
    gen = CoverGenerator.from_pretrained(folder)
    assert gen.diffusion.unet is not stage.generator.diffusion.unet
    covers = gen(pairs["user_id"], pairs["title"], pairs["image"], item_ids=pairs["item_id"], output_type="pt")
    assert covers.seeds == expected["seed"] and not any(covers.fallback)
    torch.testing.assert_close(covers.images, expected["images"], rtol=0, atol=1e-5)
    # Per pair, not per batch: the last pair alone gives the same cover.
    alone = gen(pairs["user_id"][-1:], pairs["title"][-1:], pairs["image"][-1:], item_ids=pairs["item_id"][-1:],
                output_type="pt")  # fmt: skip
    torch.testing.assert_close(alone.images, expected["images"][-1:], rtol=0, atol=1e-5)
    # Not vacuous: another user gets another cover.
    other = gen(["nobody"] * len(pairs["user_id"]), pairs["title"], pairs["image"], item_ids=pairs["item_id"],
                output_type="pt")  # fmt: skip
    assert all(other.fallback) and not torch.allclose(other.images, covers.images, atol=1e-4)


def test_nonfinite_rewards_skip_then_abort(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs, monkeypatch):
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, max_nonfinite_steps=2)

    def nan_scores(images, batch, users):
        nan = torch.full((images.shape[0],), float("nan"))
        return RewardOutput(raw={"aesthetic": nan}, normalized={"aesthetic": nan}, total=nan)

    monkeypatch.setattr(stage, "score", nan_scores)
    monkeypatch.setattr(stage, "log", lambda *a, **k: None)
    assert stage.training_step(pairs, 0) is None
    assert stage.training_step(pairs, 1) is None
    with pytest.raises(NonFiniteRewardAbort, match="consecutive steps with NaN/Inf rewards"):
        stage.training_step(pairs, 2)
    assert stage.skipped_steps == 3


def test_missing_or_wrong_stage_checkpoints_are_clear_errors(tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="model.init_args.preference_ckpt.*does not exist"):
        build_stage(tmp_path / "nope.ckpt", tiny_stage2_ckpt)
    with pytest.raises(CheckpointError, match="'rewards' stage.*'preference' stage checkpoint"):
        build_stage(tiny_stage2_ckpt, tiny_stage2_ckpt)
    with pytest.raises(CheckpointError, match="model.init_args.rewards_ckpt.*'preference' stage.*'rewards'"):
        build_stage(tiny_stage1_ckpt, tiny_stage1_ckpt)


def test_stage3_fit_and_predict_through_the_cli(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    chain = [
        "--config",
        TINY / "stage3_alignment.yaml",
        "--data.root",
        tiny_platform,
        "--model.init_args.preference_ckpt",
        tiny_stage1_ckpt,
        "--model.init_args.rewards_ckpt",
        tiny_stage2_ckpt,
    ]
    run_cli("fit", *chain, "--trainer.default_root_dir", tmp_path / "fit")
    stage3 = only_ckpt(tmp_path / "fit")
    saved = torch.load(stage3, weights_only=True)
    assert saved["icg"]["stage"] == "alignment"
    assert not any(".mllm." in k and "lora_" not in k for k in saved["state_dict"]), "frozen MLLM weights saved"
    out = tmp_path / "covers"
    run_cli(
        "predict",
        *chain,
        "--ckpt_path",
        stage3,
        "--trainer.limit_predict_batches",
        "2",
        "--trainer.default_root_dir",  # else the CLI writes its config.yaml into the working directory
        tmp_path / "predict",
        "--trainer.callbacks+=icg.lit.callbacks.CoverWriter",
        f"--trainer.callbacks.out_dir={out}",
    )
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) <= 8
    for row in rows:
        assert (out / row["file"]).is_file()
        assert row["scores"] == {}  # predict makes covers only: the reward bundle is not even loaded


def test_frozen_prompter_reads_features_from_the_cache(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs, tmp_path,
                                                       monkeypatch):  # fmt: skip
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, feature_cache_dir=str(tmp_path / "cache"))
    stage.conditioner.prompter.meta_tokens.requires_grad_(False)
    with torch.no_grad():
        direct, _ = stage.condition(pairs)  # first pass computes and writes the cache
        assert stage.feature_cache.misses == len(set(pairs["item_id"]))
        monkeypatch.setattr(stage.conditioner.prompter.mllm, "forward", None)  # the MLLM must not run again
        cached, _ = stage.condition(pairs)
    torch.testing.assert_close(cached.encoder_hidden_states, direct.encoder_hidden_states)
    loss = stage.training_step(pairs, 0)
    loss.backward()
    assert stage.conditioner.adapter.out_proj.weight.grad is not None


def test_reward_weights_override_the_bundle(tiny_stage1_ckpt, tiny_stage2_ckpt):
    default = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt).rewards
    names = list(default.rewards)
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, reward_weights={names[0]: 7.0})
    assert stage.rewards.weights == [7.0, *default.weights[1:]]
    with pytest.raises(ValueError, match="model.init_args.reward_weights: unknown rewards"):
        build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, reward_weights={"nope": 1.0})


def test_partner_users_pair_each_item_with_a_random_user_at_the_same_noise(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs):
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, fusion_type="none", partner_users=True)
    paired, generators = stage.with_partners(pairs, stage._generator(3))
    half = len(pairs["item_id"]) // 2
    assert paired["item_id"] == pairs["item_id"][:half] * 2 and len(generators) == 2 * half
    assert torch.equal(paired["image"][:half], paired["image"][half:])
    assert paired["user_id"][half:] == [stage.user_ids[int(k)] for k in paired["user_idx"][half:]]
    cond, _ = stage.condition(paired)
    images = stage.generate(cond, generator=generators, reference=paired["image"])
    # no user refinement: an item's two covers differ only by their user, so they are the same cover
    torch.testing.assert_close(images[:half], images[half:])


def test_contrast_weight_adds_the_personal_contrast_and_needs_partners(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs):
    with pytest.raises(ConfigError, match="partner_users"):
        build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, contrast_weight=1.0)
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, user_offset=True, partner_users=True, contrast_weight=1.0)
    images = torch.rand(4, 3, 32, 32)
    batch = {"title": pairs["title"], "image": pairs["image"]}
    users = torch.tensor([0, 1, 2, 3])
    contrast = stage.personal_contrast(images, batch, users)
    context = RewardContext(titles=list(pairs["title"]), user_idx=users, reference=pairs["image"])
    own = stage.rewards(images, context).normalized["preference"]
    other = stage.rewards(images[[2, 3, 0, 1]], context).normalized["preference"]
    torch.testing.assert_close(contrast, own - other)
    loss = stage.training_step(pairs, 0)
    loss.backward()
    assert stage.conditioner.user_offset.proj.weight.grad.abs().sum() > 0
