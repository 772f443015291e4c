"""Tiny base-model folders in the real diffusers layouts (SD 1.5, SDXL, Flux), random weights, built from config.

Each text encoder is a real transformers class (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
``T5EncoderModel``) with tiny widths, and each tokenizer a real one (CLIP's byte-level BPE rules over a tiny vocab;
T5's Unigram over the test titles' words), so the folders load through the same code as the real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5Tokenizer

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.flux import FluxComponents
from icg.models.clip_loading import build_tiny_clip_tokenizer, tiny_clip_config

WORDS = "red blue green star circle heart on a dark backdrop striped".split()


def clip_tokenizer():
    tokenizer = build_tiny_clip_tokenizer()
    tokenizer.model_max_length = 77
    return tokenizer


def clip_text(hidden_size: int, projection_dim: int | None = None, seed: int = 0):
    """A tiny CLIP text tower (with projection when ``projection_dim`` is set)."""
    tokenizer = clip_tokenizer()
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = tiny_clip_config(hidden_size=hidden_size, projection_dim=projection_dim or 16, **ids).text_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
    return tokenizer, model.eval()


def t5_tokenizer() -> T5Tokenizer:
    """T5's tokenizer class (Unigram, ``</s>`` appended, ``<pad>`` = 0) over the test titles' words and letters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz,"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def t5_encoder(tokenizer: T5Tokenizer, d_model: int = 32, seed: int = 0) -> T5EncoderModel:
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(config).eval()


def write_sd15(folder: Path, seed: int = 0, text: bool = True) -> Path:
    """An SD 1.5-layout folder: tiny UNet (cross-attention 32), VAE, DDIM config, and CLIP's tokenizer/text encoder."""
    DiffusionComponents.tiny(cross_attention_dim=32, sample_size=16, seed=seed).save_pretrained(folder)
    if text:
        tokenizer, encoder = clip_text(32, seed=seed)
        tokenizer.save_pretrained(folder / "tokenizer")
        encoder.save_pretrained(folder / "text_encoder")
    return folder


def write_sdxl(folder: Path, seed: int = 0) -> Path:
    """An SDXL-layout folder: CLIP-L-like (16) + bigG-like (16, projection 32) towers give 32-d states, 32-d pooled."""
    DiffusionComponents.tiny(cross_attention_dim=32, sample_size=16, variant="sdxl", pooled_dim=32,
                             seed=seed).save_pretrained(folder)  # fmt: skip
    for suffix, (tokenizer, encoder) in (("", clip_text(16, seed=seed)), ("_2", clip_text(16, 32, seed=seed + 1))):
        tokenizer.save_pretrained(folder / f"tokenizer{suffix}")
        encoder.save_pretrained(folder / f"text_encoder{suffix}")
    return folder


def write_flux(folder: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A Flux-layout folder: tiny transformer (token stream 32, pooled 32), VAE, scheduler, CLIP (32) and T5 (32)."""
    FluxComponents.tiny(cross_attention_dim=32, pooled_dim=32, guidance_embeds=guidance_embeds,
                        seed=seed).save_pretrained(folder)  # fmt: skip
    tokenizer, encoder = clip_text(32, seed=seed)
    tokenizer.save_pretrained(folder / "tokenizer")
    encoder.save_pretrained(folder / "text_encoder")
    tokenizer_2 = t5_tokenizer()
    tokenizer_2.save_pretrained(folder / "tokenizer_2")
    t5_encoder(tokenizer_2, seed=seed).save_pretrained(folder / "text_encoder_2")
    return folder
