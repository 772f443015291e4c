"""A tiny exported ICG built from config in a second, without training: for ``icg generate`` and fold-in tests.

The conditioner (tiny random Qwen2-VL prompter, user-token fusion, adapter, title prompt, user offset) gets
"trained-looking" weights so that the user changes the cover; the diffusion model is the tiny one built from config,
so the export needs no weights folder. Its user table is given (random, or a stage-1 model's).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from icg.diffusion.prompt_encoder import PromptEncoder
from icg.diffusion.source import DiffusionSource
from icg.generation import CoverGenerator, SamplerSettings, UserTable
from icg.models.adapter import ConditioningAdapter
from icg.models.cover_conditioner import CoverConditioner
from icg.models.fusion import UserFusion, UserOffset
from icg.models.meta_prompt import MetaTokenPrompter

SETTINGS = SamplerSettings(num_steps=3, image_size=32, seed=5)


def tiny_generator(users: UserTable, settings: SamplerSettings = SETTINGS,
                   timestep_spacing: str | None = None) -> CoverGenerator:  # fmt: skip
    torch.manual_seed(0)
    dim = users.embed_dim
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, dim, "user_token"),
        ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=6),
        title_prompt=PromptEncoder(tiny={"num_buckets": 64, "dim": 32, "max_tokens": 6}),
        user_offset=UserOffset(dim, num_tokens=6, width=32),
    ).eval()
    with torch.no_grad():
        for p in conditioner.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    source = DiffusionSource(tiny={"cross_attention_dim": 32, "sample_size": 16}, timestep_spacing=timestep_spacing)
    return CoverGenerator(conditioner, source.load(), users, settings, source=source)


def write_tiny_export(folder: Path, users: UserTable, provenance: dict | None = None) -> Path:
    return tiny_generator(users).save_pretrained(folder, provenance=provenance)


def pairs_csv(platform: Path, path: Path, rows: int, users: list[str] | None = None) -> Path:
    """The first ``rows`` clicks in time of the platform (of ``users`` when given) as a pairs file."""
    interactions = pd.read_parquet(platform / "interactions.parquet")
    if users is not None:
        interactions = interactions[interactions["user_id"].isin(users)]
    interactions.sort_values(["timestamp", "user_id"]).head(rows)[["user_id", "item_id"]].to_csv(path, index=False)
    return path
