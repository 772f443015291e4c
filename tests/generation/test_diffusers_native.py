"""An ICG generator plugs into stock diffusers pipelines: the same covers through prompt_embeds (issue 12)."""

import pytest
import torch

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.prompt_encoder import PromptEncoder
from icg.errors import ConfigError
from icg.generation import CoverGenerator, SamplerSettings, UserTable
from icg.generation.generator import reference_batch
from icg.models.adapter import ConditioningAdapter
from icg.models.cover_conditioner import CoverConditioner
from icg.models.fusion import UserFusion, UserOffset
from icg.models.meta_prompt import MetaTokenPrompter

USERS = ["u1", "u2", "u3"]


def generator(variant="sd15", padding="attended", guidance_scale=1.0, strength=1.0) -> CoverGenerator:
    torch.manual_seed(0)
    xl = variant == "sdxl"
    title = None if xl else PromptEncoder(tiny={"num_buckets": 64, "dim": 32, "max_tokens": 6, "padding": padding})
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, 8, "user_token"),
        ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=6, pooled_dim=32 if xl else None),
        title_prompt=title,
        user_offset=UserOffset(8, num_tokens=6, width=32),
    ).eval()
    with torch.no_grad():  # trained-looking weights: the offset and fusion change the covers
        for p in conditioner.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    users = UserTable(USERS, torch.randn(len(USERS) + 1, 8))
    comps = DiffusionComponents.tiny(cross_attention_dim=32, sample_size=16, variant=variant)
    settings = SamplerSettings(num_steps=4, guidance_scale=guidance_scale, strength=strength, image_size=32, seed=5)
    return CoverGenerator(conditioner, comps, users, settings)


def inputs():
    refs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return ["u1", "u3", "stranger"], ["Red star, striped", "Blue circle", "Green heart on a dark backdrop"], refs


@pytest.mark.parametrize("variant", ["sd15", "sdxl"])
@pytest.mark.parametrize(("guidance_scale", "strength"), [(1.0, 1.0), (3.0, 1.0), (3.0, 0.5)])
def test_stock_pipeline_draws_the_same_covers(variant, guidance_scale, strength):
    gen = generator(variant, guidance_scale=guidance_scale, strength=strength)
    users, titles, refs = inputs()
    items = ["i1", "i2", "i3"]
    ours = gen(users, titles, refs, item_ids=items, output_type="pt").images
    pipe = gen.diffusion.reference_pipeline("img2img" if strength < 1 else "text2img")
    with torch.no_grad():
        theirs = pipe(**gen.pipeline_inputs(users, titles, refs, item_ids=items), output_type="pt").images
    assert ours.shape == theirs.shape == (3, 3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    # Not vacuous: the user changes the cover.
    other = gen(["u2", "u2", "u2"], titles, refs, item_ids=items, output_type="pt").images
    assert not torch.allclose(other, ours, atol=1e-4)


def test_a_masked_title_prompt_is_refused_with_the_reason():
    gen = generator(padding="masked")
    users, titles, refs = inputs()
    with pytest.raises(ValueError, match="masks padding tokens"):
        gen.pipeline_inputs(users, titles, refs)


def test_user_guidance_runs_in_a_stock_pipeline_with_the_cold_start_negative():
    gen = generator()
    users, titles, refs = inputs()
    items = ["i1", "i2", "i3"]
    ours = gen(users, titles, refs, item_ids=items, output_type="pt", user_guidance=2.5).images
    kwargs = gen.pipeline_inputs(users, titles, refs, item_ids=items, user_guidance=2.5)
    with torch.no_grad():
        cold = gen.fallback_conditioning(titles, reference_batch(refs, gen.image_size))
    assert kwargs["guidance_scale"] == 2.5 and torch.equal(kwargs["negative_prompt_embeds"], cold.encoder_hidden_states)
    with torch.no_grad():
        theirs = gen.diffusion.reference_pipeline("text2img")(**kwargs, output_type="pt").images
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"^user_guidance=2.5 with guidance_scale=3: a diffusers pipeline takes one"):
        gen.pipeline_inputs(users, titles, refs, user_guidance=2.5, guidance_scale=3.0)
    with pytest.raises(ConfigError, match=r"^user_guidance=0.5: a diffusers pipeline guides only with scales > 1"):
        gen.pipeline_inputs(users, titles, refs, user_guidance=0.5)
