"""Base models from their folders: an SD 1.5 fine-tune (Realistic Vision-style) through the same config key, an
export moved onto it, a LoRA export refused on another architecture, and ICG on a Flux folder with its own T5 + CLIP
title prompt drawing the same covers as ``FluxPipeline`` (issue 14)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

from icg.data.datamodule import ICGDataModule
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.lora import LORA_WEIGHTS, LoRAMismatchError, UNetLoRA
from icg.diffusion.prompt_encoder import PromptEncoder
from icg.diffusion.sampler import sample
from icg.diffusion.source import DiffusionSource
from icg.generation import CoverGenerator
from icg.lit.alignment import AlignmentStage
from icg.models.adapter import ConditioningAdapter
from icg.models.cover_conditioner import CoverConditioner
from icg.models.fusion import UserFusion
from icg.models.meta_prompt import MetaTokenPrompter
from tests.helpers.base_folders import write_flux, write_sd15

KEY = "model.init_args.diffusion.path"


@pytest.fixture(scope="module")
def pairs(tiny_platform):
    dm = ICGDataModule(root=str(tiny_platform), image_size=32, batch_size=3)
    dm.setup("fit")
    return next(iter(dm.dataloader("train", "pairs", batch_size=3)))


def write_fine_tune(folder, seed: int = 1):
    """An SD 1.5 fine-tune as such checkpoints are published in diffusers' layout: other weights, a pipeline index,
    a safety checker and feature extractor, and a scheduler config of another class."""
    write_sd15(folder, seed=seed)
    shutil.rmtree(folder / "scheduler")
    DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                steps_offset=1).save_pretrained(folder / "scheduler")  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))  # fmt: skip
    for sub, name in (("safety_checker", "config.json"), ("feature_extractor", "preprocessor_config.json")):
        (folder / sub).mkdir()
        (folder / sub / name).write_text("{}")
    return folder


def stage_on(folder, s1, s2, variant="sd15", unet_lora=None, title_kwargs=None, pooled_dim=None) -> AlignmentStage:
    torch.manual_seed(0)
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, 8, "film"),
        ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=6, pooled_dim=pooled_dim),
        title_prompt=PromptEncoder(str(folder), **(title_kwargs or {})),
    )
    stage = AlignmentStage(conditioner, str(s1), str(s2), diffusion=DiffusionSource(str(folder), variant=variant),
                           unet_lora=unet_lora, num_steps=3, image_size=32)  # fmt: skip
    stage.setup("predict")
    stage.place_frozen()
    with torch.no_grad():  # trained-looking weights, the LoRA included
        for p in stage.trained_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return stage


def test_a_fine_tuned_sd15_folder_loads_through_the_same_key(tmp_path):
    base = DiffusionSource(str(write_sd15(tmp_path / "sd15"))).load(KEY)
    tuned = DiffusionSource(str(write_fine_tune(tmp_path / "realistic-vision"))).load(KEY)
    assert isinstance(tuned.scheduler, DDIMScheduler) and tuned.family.name == "sd15"
    torch.testing.assert_close(tuned.scheduler.alphas_cumprod, base.scheduler.alphas_cumprod)  # same noise schedule
    cond = Conditioning(torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        a, b = (
            sample(c, cond, num_steps=3, height=32, generator=torch.Generator().manual_seed(0)) for c in (base, tuned)
        )
    assert not torch.allclose(a, b, atol=1e-3)  # its own weights
    assert PromptEncoder(str(tmp_path / "realistic-vision")).family.name == "sd15"


def test_an_export_moves_onto_a_fine_tune_and_a_lora_refuses_another_architecture(tiny_stage1_ckpt, tiny_stage2_ckpt,
                                                                                  pairs, tmp_path):  # fmt: skip
    original = write_sd15(tmp_path / "sd15")
    stage = stage_on(original, tiny_stage1_ckpt, tiny_stage2_ckpt, unet_lora=UNetLoRA(rank=2))
    folder = stage.export(tmp_path / "export")
    users, titles, refs, items = pairs["user_id"], pairs["title"], pairs["image"], pairs["item_id"]
    on_original = CoverGenerator.from_pretrained(folder)(users, titles, refs, item_ids=items, output_type="pt").images
    tuned = write_fine_tune(tmp_path / "realistic-vision")
    gen = CoverGenerator.from_pretrained(folder, base_model=str(tuned))
    assert gen.source.path == str(tuned.resolve())
    assert gen.conditioner.title_prompt.spec["init_args"]["path"] == str(tuned.resolve())  # the title follows the base
    assert gen.diffusion.unet.peft_config["default"].r == 2  # the LoRA is on the fine-tune's UNet
    on_tuned = gen(users, titles, refs, item_ids=items, output_type="pt").images
    assert on_tuned.shape == on_original.shape and not torch.allclose(on_tuned, on_original, atol=1e-3)
    # Another architecture (wider blocks): the LoRA does not fit, and the error names the key and the file.
    other = write_sd15(tmp_path / "wider")
    shutil.rmtree(other / "unet")
    blocks = dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")
    )
    wider = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 96), layers_per_block=1, attention_head_dim=8,
                                 cross_attention_dim=32, **blocks)  # fmt: skip
    wider.save_pretrained(other / "unet")
    with pytest.raises(LoRAMismatchError, match=rf"base_model: the UNet LoRA in .*{LORA_WEIGHTS} does not fit"):
        CoverGenerator.from_pretrained(folder, base_model=str(other))
    # And a Flux folder is refused by name: the export's base is an SD 1.5 UNet.
    with pytest.raises(FileNotFoundError, match=r"base_model=.*transformer/ \(a Flux folder\)"):
        CoverGenerator.from_pretrained(folder, base_model=str(write_flux(tmp_path / "flux")))


def test_icg_on_a_flux_folder_with_its_own_title_prompt(tiny_stage1_ckpt, tiny_stage2_ckpt, pairs, tmp_path):
    """Adapter tokens after Flux's own T5 prompt of the title, CLIP's pooled vector: the generator from the export
    and a stock FluxPipeline fed pipeline_inputs draw the same covers, with true CFG on ICG's negative."""
    flux = write_flux(tmp_path / "flux")
    stage = stage_on(flux, tiny_stage1_ckpt, tiny_stage2_ckpt, variant="flux", title_kwargs={"max_length": 8})
    expected = stage.predict_step(pairs, 0)
    gen = CoverGenerator.from_pretrained(stage.export(tmp_path / "export"))
    users, titles, refs, items = pairs["user_id"], pairs["title"], pairs["image"], pairs["item_id"]
    covers = gen(users, titles, refs, item_ids=items, output_type="pt", guidance_scale=1.0)
    torch.testing.assert_close(covers.images, expected["images"], rtol=0, atol=1e-5)
    cond = gen.conditioning(gen.users.lookup(users)[0], titles, refs)
    assert cond.encoder_hidden_states.shape == (3, 8 + 6, 32) and cond.pooled.shape == (3, 32)
    pipe = DiffusionSource(str(flux), variant="flux").load().reference_pipeline()
    for guidance in (1.0, 2.0):
        ours = gen(users, titles, refs, item_ids=items, output_type="pt", guidance_scale=guidance).images
        with torch.no_grad():
            theirs = pipe(**gen.pipeline_inputs(users, titles, refs, item_ids=items, guidance_scale=guidance),
                          output_type="pt").images  # fmt: skip
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, covers.images, atol=1e-4)  # guidance changes the covers
