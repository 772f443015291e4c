"""Tokenizer-free title text features: hashed lower-cased words (CRC32 buckets), with no vocabulary to download.

Used where the synthetic platform needs a text model that no public checkpoint provides: the demo's stand-in base
model (title tokens into the UNet's cross-attention, the "SD 1.5 prompted with the title" baseline), the stage-1
title features and the stage-2 relevance stand-in. ``zlib.crc32`` rather than ``hash()``: Python salts string hashes
per process, which would scramble the buckets between runs.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from icg import ckpt
from icg.errors import MissingFileError

WORD = re.compile(r"\w+")
TITLE_ENCODER_DIR = "title_encoder"  # where a stand-in base model export keeps its title encoder


def title_words(title: str) -> list[str]:
    """Lower-cased word tokens of a title."""
    return WORD.findall(title.lower())


def hash_bucket(token: str, num_buckets: int) -> int:
    """Bucket in [1, num_buckets) of a token; bucket 0 is reserved for padding / the empty title."""
    return 1 + zlib.crc32(token.encode("utf-8")) % (num_buckets - 1)


def hashed_ids(titles: list[str], num_buckets: int, max_tokens: int) -> tuple[Tensor, Tensor]:
    """``(ids, mask)``: B x ``max_tokens`` bucket ids (0-padded) and a bool mask of real tokens.

    An empty title keeps one padding token marked real, so attention always has something to read.
    """
    ids = torch.zeros(len(titles), max_tokens, dtype=torch.long)
    mask = torch.zeros(len(titles), max_tokens, dtype=torch.bool)
    for row, title in enumerate(titles):
        words = [hash_bucket(w, num_buckets) for w in title_words(title)][:max_tokens] or [0]
        ids[row, : len(words)] = torch.tensor(words)
        mask[row, : len(words)] = True
    return ids, mask


class TitleTokenEncoder(nn.Module):
    """Titles -> B x L x C token states (+ mask, + pooled B x C): the demo base model's "text encoder".

    Hashed word embeddings plus learned positions through a small transformer encoder.

    Args:
        num_buckets: hashed word vocabulary size.
        dim: C, the output width (the UNet's cross-attention width).
        max_tokens: L, words kept per title.
        num_layers: transformer layers over the word embeddings.
        num_heads: attention heads (must divide ``dim``).
        padding: ``"masked"``: padding tokens are masked out and the returned mask marks them; ``"attended"``: like
            CLIP's text encoder, every one of the ``max_tokens`` positions is attended to and the mask is all ones,
            so the states can go into a stock diffusers pipeline as ``prompt_embeds`` (which takes no mask).
    """

    def __init__(self, num_buckets: int = 4096, dim: int = 64, max_tokens: int = 12, num_layers: int = 1,
                 num_heads: int = 4, padding: str = "masked") -> None:  # fmt: skip
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        if padding not in ("masked", "attended"):
            raise ValueError(f"padding must be 'masked' or 'attended', got {padding!r}")
        self.padding = padding
        self.num_buckets = num_buckets
        self.max_tokens = max_tokens
        self.dim = dim
        self.words = nn.Embedding(num_buckets, dim)
        self.positions = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, 0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, titles: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``(states B x L x C, mask B x L, pooled B x C)`` of the titles."""
        ids, mask = hashed_ids(list(titles), self.num_buckets, self.max_tokens)
        ids, mask = ids.to(self.words.weight.device), mask.to(self.words.weight.device)
        if self.padding == "attended":
            mask = torch.ones_like(mask)
        states = self.norm(self.encoder(self.words(ids) + self.positions, src_key_padding_mask=~mask))
        weights = mask.unsqueeze(-1).to(states.dtype)
        return states, mask, (states * weights).sum(1) / weights.sum(1)


def export_title_encoder(folder: str | Path, title_encoder: TitleTokenEncoder) -> Path:
    """``<folder>/title_encoder/``: the encoder's weights (safetensors) and its constructor spec (JSON)."""
    path = Path(folder) / TITLE_ENCODER_DIR
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in title_encoder.state_dict().items()}, str(path / "model.safetensors"))
    (path / "spec.json").write_text(json.dumps(title_encoder.spec, indent=2) + "\n")
    return path


def load_title_encoder(folder: str | Path, config_key: str = "base_model") -> TitleTokenEncoder:
    """The base model's frozen title encoder from an exported folder."""
    path = Path(folder) / TITLE_ENCODER_DIR
    if not (path / "spec.json").is_file():
        raise MissingFileError(f"{config_key}: {path}/spec.json does not exist (a stand-in base model export)")
    spec_file = path / "spec.json"
    try:
        spec = json.loads(spec_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ckpt.CheckpointError(
            f"{config_key}: {spec_file} is not valid JSON ({err}); export the base model again"
        ) from err
    encoder = ckpt.instantiate(spec, origin=f"{config_key}: {spec_file}")
    if not isinstance(encoder, TitleTokenEncoder):
        raise ckpt.CheckpointError(
            f"{config_key}: {spec_file} builds a {type(encoder).__name__}, not a TitleTokenEncoder"
        )
    encoder.load_state_dict(ckpt.read_safetensors(path / "model.safetensors", config_key))
    return ckpt.freeze(encoder)
