"""The base model's title prompt (``PromptEncoder``) and ICG's ``[prompt ; adapter tokens]`` conditioning."""

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.conditioning import Conditioning, ConditioningError
from icg.diffusion.flux import FluxComponents
from icg.diffusion.prompt_encoder import PromptEncoder
from icg.diffusion.source import DiffusionSource
from icg.models.adapter import ConditioningAdapter
from icg.models.clip_loading import build_tiny_clip_tokenizer, tiny_clip_config
from icg.models.cover_conditioner import CoverConditioner
from icg.models.fusion import UserFusion
from icg.models.meta_prompt import MetaTokenPrompter
from icg.models.title_tokens import TitleTokenEncoder, export_title_encoder
from tests.helpers.base_folders import clip_text, write_flux, write_sd15, write_sdxl

TITLES = ["Red circle on a dark backdrop", "A blue star, striped", ""]
TINY = {"num_buckets": 64, "dim": 32, "max_tokens": 8, "num_heads": 4}


def test_tiny_prompt_is_seeded_and_frozen():
    a, b = PromptEncoder(tiny=TINY), PromptEncoder(tiny=TINY)
    out = a(TITLES)
    torch.testing.assert_close(out.encoder_hidden_states, b(TITLES).encoder_hidden_states, rtol=0, atol=0)
    assert out.encoder_hidden_states.shape == (3, 8, 32) and a.width == 32
    assert out.attention_mask[0].sum() == 6 and out.attention_mask[2].sum() == 1  # words; the empty title keeps one
    assert not any(p.requires_grad for p in a.parameters())
    assert not torch.equal(out.encoder_hidden_states, PromptEncoder(tiny=TINY, seed=1)(TITLES).encoder_hidden_states)


def test_stand_in_folder_gives_the_exported_title_encoder(tmp_path):
    torch.manual_seed(0)
    encoder = TitleTokenEncoder(**TINY).eval()
    export_title_encoder(tmp_path, encoder)
    prompt = PromptEncoder(str(tmp_path))
    states, mask, _ = encoder(TITLES)
    out = prompt(TITLES)
    torch.testing.assert_close(out.encoder_hidden_states, states, rtol=0, atol=1e-6)  # frozen: fast-path kernels
    assert torch.equal(out.attention_mask.bool(), mask)


def test_sd15_folder_encodes_as_the_stock_pipeline(tmp_path):
    tokenizer = build_tiny_clip_tokenizer()
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(tiny_clip_config().text_config).eval()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    text_encoder.save_pretrained(tmp_path / "text_encoder")
    prompt = PromptEncoder(str(tmp_path))
    parts = DiffusionComponents.tiny(cross_attention_dim=32, sample_size=8)
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=parts.unet, scheduler=parts.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    expected = pipe.encode_prompt(TITLES, "cpu", 1, False)[0]
    out = prompt(TITLES)
    assert out.encoder_hidden_states.shape == (3, 77, 32) and out.attention_mask is None and prompt.width == 32
    torch.testing.assert_close(out.encoder_hidden_states, expected, rtol=0, atol=1e-6)


def test_sdxl_folder_encodes_as_the_stock_pipeline(tmp_path):
    """Both text encoders' penultimate states side by side and text_encoder_2's projected pooled vector."""
    write_sdxl(tmp_path)
    prompt = PromptEncoder(str(tmp_path))
    assert prompt.family.name == "sdxl" and prompt.width == 32 and prompt.pooled_dim == 32
    parts = DiffusionComponents.from_pretrained_folder(tmp_path, variant="sdxl")
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae, unet=parts.unet, scheduler=parts.scheduler, text_encoder=prompt.encoder,
        text_encoder_2=prompt.encoder_2, tokenizer=prompt.tokenizer, tokenizer_2=prompt.tokenizer_2,
    )  # fmt: skip
    embeds, _, pooled, _ = pipe.encode_prompt(TITLES, device="cpu", do_classifier_free_guidance=False)
    out = prompt(TITLES)
    assert out.encoder_hidden_states.shape == (3, 77, 32) and out.pooled.shape == (3, 32)
    assert out.attention_mask is None
    torch.testing.assert_close(out.encoder_hidden_states, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pooled, pooled, rtol=0, atol=1e-6)
    assert not torch.allclose(out.pooled[0], out.pooled[1])  # not vacuous: titles differ


def test_flux_folder_encodes_as_the_stock_pipeline(tmp_path):
    """CLIP's pooled output and the T5 token stream, padded to max_length, as FluxPipeline.encode_prompt."""
    write_flux(tmp_path)
    prompt = PromptEncoder(str(tmp_path), max_length=16)
    assert prompt.family.name == "flux" and prompt.width == 32 and prompt.pooled_dim == 32
    parts = FluxComponents.from_pretrained_folder(tmp_path)
    pipe = FluxPipeline(
        scheduler=parts.scheduler, vae=parts.vae, transformer=parts.transformer, text_encoder=prompt.encoder,
        tokenizer=prompt.tokenizer, text_encoder_2=prompt.encoder_2, tokenizer_2=prompt.tokenizer_2,
    )  # fmt: skip
    embeds, pooled, _ = pipe.encode_prompt(TITLES, prompt_2=None, device="cpu", max_sequence_length=16)
    out = prompt(TITLES)
    assert out.encoder_hidden_states.shape == (3, 16, 32) and out.pooled.shape == (3, 32)
    torch.testing.assert_close(out.encoder_hidden_states, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pooled, pooled, rtol=0, atol=1e-6)
    assert prompt.tokenizer_2(["red star"]).input_ids[0][-1] == 1  # T5 ends with </s>: a real Unigram tokenizer
    assert PromptEncoder(str(tmp_path)).max_length == 512  # FluxPipeline's default
    half = PromptEncoder(str(tmp_path), max_length=16, dtype="bfloat16")  # T5-XXL's usual dtype (9.5 GB, not 19)
    assert half.encoder_2.dtype == half.encoder.dtype == torch.bfloat16
    torch.testing.assert_close(half(TITLES).pooled.float(), out.pooled, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match=r"title_prompt.init_args.dtype='fp8': expected one of"):
        PromptEncoder(str(tmp_path), dtype="fp8")
    with pytest.raises(ValueError, match=r"title_prompt.init_args.max_length=16: only a Flux"):
        PromptEncoder(str(write_sd15(tmp_path / "sd15")), max_length=16)


def test_missing_or_unknown_text_encoder_is_a_clear_error(tmp_path):
    key = "model.init_args.conditioner.init_args.title_prompt.init_args.path"
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{key}=.*missing: text_encoder"):
        PromptEncoder(str(tmp_path))
    (tmp_path / "text_encoder_2").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{key}=.*missing: text_encoder, tokenizer_2"):
        PromptEncoder(str(tmp_path))
    folder = write_sd15(tmp_path / "odd")
    (folder / "tokenizer_2").mkdir()
    clip_text(32)[1].save_pretrained(folder / "text_encoder_2")  # a CLIP without projection: neither SDXL nor Flux
    with pytest.raises(ValueError, match=rf"{key}=.*text_encoder_2/ holds CLIPTextModel"):
        PromptEncoder(str(folder))
    with pytest.raises(ValueError, match="either a diffusers folder"):
        PromptEncoder()


def test_join_appends_tokens_and_masks():
    prompt = Conditioning(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    tokens = Conditioning(torch.randn(2, 5, 4))
    joined = Conditioning.join([prompt, tokens])
    assert joined.encoder_hidden_states.shape == (2, 8, 4)
    assert joined.attention_mask.tolist() == [[1, 1, 0, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1, 1, 1]]
    assert Conditioning.join([tokens, tokens]).attention_mask is None
    with pytest.raises(ConditioningError, match="different batch size or width"):
        Conditioning.join([prompt, Conditioning(torch.randn(2, 5, 6))])
    pooled = Conditioning(torch.randn(2, 5, 4), pooled=torch.randn(2, 7))
    assert Conditioning.join([prompt, pooled]).pooled is pooled.pooled
    with pytest.raises(ConditioningError, match="more than one"):
        Conditioning.join([pooled, pooled])


def conditioner(title_prompt, width=32, pooled_dim=None):
    torch.manual_seed(0)
    return CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, 8, "user_token"),
        ConditioningAdapter(32, width, num_layers=1, num_heads=4, num_tokens=8, pooled_dim=pooled_dim),
        title_prompt=title_prompt,
    )


def test_conditioner_puts_the_title_prompt_before_the_adapter_tokens():
    prompt = PromptEncoder(tiny=TINY)
    model = conditioner(prompt)
    images, users = torch.rand(3, 3, 32, 32), torch.randn(3, 8)
    cond = model(TITLES, images, users)
    alone = conditioner(None)(TITLES, images, users)
    assert cond.encoder_hidden_states.shape == (3, 16, 32)
    torch.testing.assert_close(cond.encoder_hidden_states[:, :8], prompt(TITLES).encoder_hidden_states)
    torch.testing.assert_close(cond.encoder_hidden_states[:, 8:], alone.encoder_hidden_states)
    assert cond.attention_mask[:, 8:].all() and cond.attention_mask[2, :8].sum() == 1
    assert not any(k.startswith("title_prompt") for k in model.trained_state_dict())  # stock, never exported
    with pytest.raises(ValueError, match="needs the titles"):
        model.condition(model.item_features(TITLES, images), users)
    with pytest.raises(ValueError, match="cross_attention_dim=16"):
        conditioner(prompt, width=16)


@pytest.mark.parametrize("base", ["sdxl", "flux"])
def test_a_pooled_title_prompt_gives_the_pooled_vector_and_is_checked_against_the_denoiser(tmp_path, base):
    folder = (write_sdxl if base == "sdxl" else write_flux)(tmp_path)
    prompt = PromptEncoder(str(folder), **({"max_length": 8} if base == "flux" else {}))
    model = conditioner(prompt)
    images, users = torch.rand(3, 3, 32, 32), torch.randn(3, 8)
    cond = model(TITLES, images, users)
    torch.testing.assert_close(cond.pooled, prompt(TITLES).pooled)  # the base model's own pooled vector
    assert model.pooled_dim == 32 and cond.encoder_hidden_states.shape[1] == (77 if base == "sdxl" else 8) + 8
    denoiser = DiffusionSource(str(folder), variant=base).load().denoiser
    model.check_denoiser(denoiser, "model.init_args.diffusion")  # fits
    with pytest.raises(ValueError, match=r"adapter.init_args.pooled_dim=32 but the title_prompt already gives"):
        conditioner(prompt, pooled_dim=32)
    # An SD 1.5 title prompt on this base leaves the pooled vector to the adapter: without one the check names it.
    sd15 = conditioner(PromptEncoder(str(write_sd15(tmp_path / "sd15"))))
    with pytest.raises(ConditioningError, match=r"conditioner.init_args.adapter.init_args.pooled_dim=None.*diffusion"):
        sd15.check_denoiser(denoiser, "model.init_args.diffusion")
