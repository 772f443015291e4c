"""Stage 3 on every base (SD 1.5, SDXL, Flux) with and without a denoiser LoRA: what trains, what the checkpoint and
the export hold, and that a stock diffusers pipeline with ``load_lora_weights(export)`` draws the same covers."""

from __future__ import annotations

import pytest
import torch

from icg.data.datamodule import ICGDataModule
from icg.diffusion.lora import LORA_WEIGHTS, UNetLoRA, add_lora
from icg.diffusion.source import DiffusionSource
from icg.generation import CoverGenerator
from icg.generation.export import EXPORT_FILES
from icg.lit.alignment import AlignmentStage
from icg.models.adapter import ConditioningAdapter
from icg.models.cover_conditioner import CoverConditioner
from icg.models.fusion import UserFusion, UserOffset
from icg.models.meta_prompt import MetaTokenPrompter
from tests.helpers.cli import TINY, only_ckpt, run_cli

SOURCES = {
    "sd15": DiffusionSource(tiny={"sample_size": 16}),
    "sdxl": DiffusionSource(variant="sdxl", tiny={"sample_size": 16}),
    "flux": DiffusionSource(variant="flux", tiny={"sample_size": 32}),
}
LORA = UNetLoRA(rank=4, alpha=8.0)


def build_stage(s1, s2, base="sd15", unet_lora=LORA, diffusion=None, **overrides) -> AlignmentStage:
    torch.manual_seed(0)
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, 8, "film"),
        ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=8, pooled_dim=None if base == "sd15" else 32),
        user_offset=UserOffset(8, num_tokens=8, width=32),
    )
    settings = dict(num_steps=4, k=2, image_size=32) | overrides
    stage = AlignmentStage(conditioner, str(s1), str(s2), diffusion=diffusion or SOURCES[base], unet_lora=unet_lora,
                           **settings)  # fmt: skip
    stage.setup("fit")
    stage.place_frozen()
    return stage


def perturb(stage: AlignmentStage, scale: float = 0.05) -> None:
    """Move every trained tensor away from its init (LoRA B starts at zero: the LoRA would change nothing)."""
    with torch.no_grad():
        for p in stage.trained_parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="module")
def pairs(tiny_platform):
    dm = ICGDataModule(root=str(tiny_platform), image_size=32, batch_size=4)
    dm.setup("fit")
    return next(iter(dm.dataloader("train", "pairs", batch_size=4)))


@pytest.mark.parametrize("base", ["sd15", "flux"])
def test_gradients_reach_the_adapter_parts_and_the_lora_only(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs, base):
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, base)
    denoiser = stage.generator.diffusion.denoiser
    lora_params = {id(p) for p in stage.unet_lora.parameters()}
    assert lora_params == {id(p) for n, p in denoiser.named_parameters() if "lora_" in n}  # the same tensors
    stage.training_step(pairs, 0).backward()
    cond = stage.conditioner
    for part in (cond.fusion, cond.adapter, cond.user_offset):
        assert all(p.grad is not None for p in part.parameters()) and sum(p.grad.abs().sum() for p in part.parameters())
    lora_b = [p for n, p in stage.unet_lora.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b) and sum(p.grad.abs().sum() for p in lora_b) > 0
    base_weights = [p for n, p in denoiser.named_parameters() if "lora_" not in n]
    assert base_weights and all(p.grad is None and not p.requires_grad for p in base_weights)
    for module in (cond.prompter.mllm, stage.generator.diffusion.vae, stage.rewards):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters()), type(module).__name__
    assert not stage.generator.users.embeddings.requires_grad
    optimized = {id(p) for g in stage.configure_optimizers().param_groups for p in g["params"]}
    assert optimized == {id(p) for p in cond.parameters() if p.requires_grad} | lora_params
    # The checkpoint holds the trained parts and the LoRA matrices, nothing of the stock denoiser.
    checkpoint = {"state_dict": stage.state_dict()}
    stage.on_save_checkpoint(checkpoint)
    lora_keys = {k for k in checkpoint["state_dict"] if k.startswith("unet_lora.")}
    assert lora_keys and all(".lora_A." in k or ".lora_B." in k for k in lora_keys)
    assert len(lora_keys) == len(lora_params)
    assert set(checkpoint["state_dict"]) - lora_keys == {f"conditioner.{k}" for k in cond.trained_state_dict()}
    assert checkpoint["icg"]["unet_lora"] == {"rank": 4, "alpha": 8.0, "target_modules": LORA.target_modules}


def test_without_lora_the_denoiser_is_entirely_frozen(tiny_stage1_ckpt, tiny_stage2_ckpt):
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, "flux", unet_lora=None)
    assert stage.unet_lora is None and not any(k.startswith("unet_lora") for k in stage.state_dict())
    assert not any(p.requires_grad for p in stage.generator.diffusion.denoiser.parameters())


@pytest.mark.parametrize(
    ("base", "guidance_scale", "strength"),
    [("sd15", 1.0, 1.0), ("sd15", 3.0, 0.5), ("sdxl", 3.0, 1.0), ("flux", 1.0, 1.0), ("flux", 3.0, 0.5)],
)
def test_export_in_diffusers_lora_format_draws_the_same_covers(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs, tmp_path,
                                                               base, guidance_scale, strength):  # fmt: skip
    """The export alone reproduces the stage's covers, and so does a stock pipeline after load_lora_weights(export)."""
    stage = build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, base, guidance_scale=guidance_scale, strength=strength)
    perturb(stage)
    expected = stage.predict_step(pairs, 0)
    folder = stage.export(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == sorted((*EXPORT_FILES, LORA_WEIGHTS))
    gen = CoverGenerator.from_pretrained(folder)
    assert gen.diffusion.denoiser is not stage.generator.diffusion.denoiser
    users, titles, refs, items = pairs["user_id"], pairs["title"], pairs["image"], pairs["item_id"]
    covers = gen(users, titles, refs, item_ids=items, output_type="pt")
    torch.testing.assert_close(covers.images, expected["images"], rtol=0, atol=1e-5)
    # diffusers-native: a stock pipeline over fresh stock components, the LoRA read from the export folder.
    pipe = SOURCES[base].load().reference_pipeline("img2img" if strength < 1 else "text2img")
    inputs = gen.pipeline_inputs(users, titles, refs, item_ids=items)
    with torch.no_grad():
        without = pipe(**gen.pipeline_inputs(users, titles, refs, item_ids=items), output_type="pt").images
        pipe.load_lora_weights(str(folder))
        theirs = pipe(**inputs, output_type="pt").images
    torch.testing.assert_close(theirs.float(), covers.images, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(without.float(), covers.images, atol=1e-4)  # not vacuous: the LoRA changes the covers


@pytest.mark.parametrize("base", ["sd15", "flux"])
def test_lora_targets_that_do_not_exist_fail_before_training(tiny_stage1_ckpt, tiny_stage2_ckpt, base):
    missing = "add_q_proj" if base == "sd15" else "proj_attn"  # a Flux-only / a UNet-less name
    bad = UNetLoRA(rank=2, target_modules=["to_q", missing])
    with pytest.raises(ValueError, match=rf"model.init_args.unet_lora.target_modules=.*\['{missing}'\] match no"):
        build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, base, unet_lora=bad)
    with pytest.raises(ValueError, match=r"model.init_args.unet_lora.rank=0: must be >= 1"):
        build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, base, unet_lora=UNetLoRA(rank=0))
    flux_only = UNetLoRA(rank=2, target_modules=["add_q_proj"])
    if base == "flux":  # exists in Flux's double-stream blocks
        assert build_stage(tiny_stage1_ckpt, tiny_stage2_ckpt, base, unet_lora=flux_only).unet_lora is not None
    denoiser = SOURCES[base].load().denoiser
    add_lora(denoiser, UNetLoRA(rank=2))
    with pytest.raises(ValueError, match="already carries a LoRA"):
        add_lora(denoiser, UNetLoRA(rank=2))


def test_cli_trains_a_lora_and_icg_export_writes_it(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    run_cli("fit", "--config", TINY / "stage3_alignment.yaml", "--data.root", tiny_platform,
            "--model.init_args.preference_ckpt", tiny_stage1_ckpt, "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
            "--model.init_args.unet_lora", '{"rank": 2, "alpha": 4, "target_modules": ["to_k", "to_v"]}',
            "--trainer.default_root_dir", tmp_path / "fit")  # fmt: skip
    ckpt = only_ckpt(tmp_path / "fit")
    saved = torch.load(ckpt, weights_only=True)
    lora_keys = [k for k in saved["state_dict"] if k.startswith("unet_lora.")]
    assert lora_keys and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in lora_keys)
    assert {k.rsplit(".", 2)[0].rsplit(".", 1)[-1] for k in lora_keys} == {"to_k", "to_v"}
    assert any(v.abs().sum() > 0 for k, v in saved["state_dict"].items() if "lora_B" in k)  # it trained
    assert not any(k.startswith(("diffusion", "unet.")) for k in saved["state_dict"])
    run_cli("export", "--stage3_ckpt", ckpt, "--out", tmp_path / "export")
    gen = CoverGenerator.from_pretrained(tmp_path / "export")
    state = {k: v for k, v in gen.diffusion.unet.state_dict().items() if "lora_B" in k}
    expected = {k.removeprefix("unet_lora."): v for k, v in saved["state_dict"].items() if "lora_B" in k}
    assert len(state) == len(expected)
    for key, value in expected.items():  # the checkpoint's LoRA is the one the generator runs
        torch.testing.assert_close(state[key.replace("lora_B.", "lora_B.default.")], value)


@pytest.mark.slow
def test_stage3_with_a_lora_resumes_exactly_and_refuses_another_setting(
    tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path, capsys
):
    from icg.cli import main
    from tests.helpers.resume import resumed_equals_uninterrupted

    chain = ["--data.root", tiny_platform, "--model.init_args.preference_ckpt", tiny_stage1_ckpt,
             "--model.init_args.rewards_ckpt", tiny_stage2_ckpt, "--trainer.max_steps", "-1"]  # fmt: skip
    lora = ["--model.init_args.unet_lora", '{"rank": 2}']
    resumed_equals_uninterrupted("stage3_alignment.yaml", tmp_path, *chain, *lora)  # LoRA weights and Adam state
    first = sorted((tmp_path / "first").rglob("*.ckpt"))[-1]
    capsys.readouterr()
    words = ["fit", "--config", TINY / "stage3_alignment.yaml", "--trainer.default_root_dir", tmp_path / "other",
             "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", *chain,
             "--ckpt_path", first]  # fmt: skip
    assert main([str(w) for w in words]) == 2  # a user error: one line, no traceback
    assert "trained with a UNet LoRA but model.init_args.unet_lora is unset" in capsys.readouterr().err
