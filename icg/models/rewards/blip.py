"""The BLIP backbone of ImageReward (Xu et al., NeurIPS 2023), written for icg with the checkpoint's exact key names.

ImageReward scores a (prompt, image) pair with BLIP (Li et al., ICML 2022): a ViT-L/16 image encoder at 224 px and a
BERT-base "MED" text encoder whose layers cross-attend to the image tokens; the [CLS] state goes through an MLP
768→1024→128→64→16→1 and is standardized. The reference implementation (the ``image-reward`` package, 1.5) does
not import on transformers 5 and needs timm, fairscale and torchvision, so the same network is written here with
plain torch modules whose parameter names equal the published ``ImageReward.pt`` state dict (``blip.visual_encoder.*``
as in BLIP's timm-derived ViT, ``blip.text_encoder.*`` as in BLIP's ``med.py``, ``mlp.layers.*``), so it loads
strictly. transformers' ``BertModel`` does not map onto it (no token-type embeddings, cross-attention only in
decoders, a non-persistent ``position_ids``), hence the hand-written encoder; only ``ACT2FN`` is reused.
Dropout and drop-path are left out: a reward always runs in eval mode, where they are identities.
Parity with the package is checked by ``tests/models/test_imagereward_parity.py`` (``make test-parity``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from icg.errors import ConfigError

# ImageReward's fixed output standardization (ImageReward.py: self.mean, self.std).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072


@dataclass
class MedConfig:
    """The fields of BLIP's ``med_config.json`` that shape the network, plus icg's optional vision-tower keys.

    The vision keys (``vision_*``, ``image_size``) are not in the published file; their defaults are ImageReward's
    fixed ViT-L/16 at 224 px, so the official file works unchanged and tiny test models can shrink the tower.
    """

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    add_cross_attention: bool = True
    position_embedding_type: str = "absolute"
    vision_width: int = 1024
    vision_depth: int = 24
    vision_heads: int = 16
    vision_patch_size: int = 16
    image_size: int = 224
    embed_dim: int = 256

    @classmethod
    def from_json(cls, path: str | Path, key: str) -> MedConfig:
        """Read ``med_config.json``; errors name the config ``key`` and the offending field."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{key}: cannot read {path} as JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{key}: {path} must hold a JSON object (BLIP's med_config.json)")
        known = {f.name: f.type for f in fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in known})
        if not config.add_cross_attention:
            raise ConfigError(f"{key}: {path} sets add_cross_attention=false; ImageReward's text encoder needs it")
        if config.position_embedding_type != "absolute":
            raise ConfigError(f"{key}: {path}: only position_embedding_type 'absolute' is supported")
        if config.hidden_act not in ACT2FN:
            raise ConfigError(f"{key}: {path}: unknown hidden_act {config.hidden_act!r}")
        for name, heads, width in (
            ("num_attention_heads", config.num_attention_heads, config.hidden_size),
            ("vision_heads", config.vision_heads, config.vision_width),
        ):
            if width % heads:
                raise ConfigError(f"{key}: {path}: {name}={heads} does not divide the width {width}")
        if config.image_size % config.vision_patch_size:
            raise ConfigError(f"{key}: {path}: image_size {config.image_size} is not a multiple of vision_patch_size")
        return config


def _split_heads(x: Tensor, heads: int) -> Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


# ------------------------------------------------------------------------------------------------ vision (BLIP ViT)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (timm's ``PatchEmbed``: a strided conv, no norm)."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VitAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, width * 3)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class VitMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VitAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VitMlp(width, width * 4)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipVisionTransformer(nn.Module):
    """BLIP's ViT (pre-norm, [CLS] token, learned positions, final LayerNorm); returns all tokens B×(1+N)×W."""

    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.image_size = config.image_size
        self.patch_embed = PatchEmbed(config.vision_patch_size, width)
        num_patches = (config.image_size // config.vision_patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        self.blocks = nn.ModuleList(VitBlock(width, config.vision_heads) for _ in range(config.vision_depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"BLIP ViT expects {self.image_size} px inputs, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------------------- text (BLIP's MED BERT)


class MedEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (BLIP drops BERT's token-type embeddings)."""

    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Persistent, as in BLIP: the published checkpoint carries blip.text_encoder.embeddings.position_ids.
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)))

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class MedSelfAttention(nn.Module):
    """Query/key/value projections; keys and values come from the image tokens in the cross-attention block."""

    def __init__(self, config: MedConfig, key_width: int) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(key_width, config.hidden_size)
        self.value = nn.Linear(key_width, config.hidden_size)

    def forward(self, hidden: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        q = _split_heads(self.query(hidden), self.heads)
        k = _split_heads(self.key(context), self.heads)
        v = _split_heads(self.value(context), self.heads)
        return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class MedOutput(nn.Module):
    """Dense + residual + LayerNorm (BERT's SelfOutput / Output)."""

    def __init__(self, in_width: int, config: MedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class MedAttention(nn.Module):
    def __init__(self, config: MedConfig, key_width: int) -> None:
        super().__init__()
        self.self = MedSelfAttention(config, key_width)
        self.output = MedOutput(config.hidden_size, config)

    def forward(self, hidden: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(hidden, context, mask), hidden)


class MedIntermediate(nn.Module):
    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden: Tensor) -> Tensor:
        return self.act(self.dense(hidden))


class MedLayer(nn.Module):
    """Self-attention over the text, cross-attention to the image tokens, feed-forward (BLIP 'multimodal' mode)."""

    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.attention = MedAttention(config, config.hidden_size)
        self.crossattention = MedAttention(config, config.vision_width)
        self.intermediate = MedIntermediate(config)
        self.output = MedOutput(config.intermediate_size, config)

    def forward(self, hidden: Tensor, text_mask: Tensor, image_tokens: Tensor) -> Tensor:
        hidden = self.attention(hidden, hidden, text_mask)
        # Every image token is valid (ImageReward passes an all-ones image mask), so cross-attention is unmasked.
        hidden = self.crossattention(hidden, image_tokens, None)
        return self.output(self.intermediate(hidden), hidden)


class MedEncoder(nn.Module):
    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MedLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: Tensor, text_mask: Tensor, image_tokens: Tensor) -> Tensor:
        for layer in self.layer:
            hidden = layer(hidden, text_mask, image_tokens)
        return hidden


class MedTextEncoder(nn.Module):
    """BLIP's BertModel without pooler, in its multimodal (image-grounded) encoder mode."""

    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.embeddings = MedEmbeddings(config)
        self.encoder = MedEncoder(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        # BLIP's additive padding mask: 0 for kept tokens, -10000 for padding (not -inf), broadcast over heads/queries.
        mask = (1.0 - attention_mask[:, None, None, :].to(image_tokens.dtype)) * -10000.0
        return self.encoder(self.embeddings(input_ids), mask, image_tokens)


class BlipBackbone(nn.Module):
    """``ImageReward.blip``: the two encoders plus BLIP's unused ITC projections (kept so the checkpoint loads
    strictly)."""

    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.visual_encoder = BlipVisionTransformer(config)
        self.text_encoder = MedTextEncoder(config)
        self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
        self.text_proj = nn.Linear(config.hidden_size, config.embed_dim)


class RewardMLP(nn.Module):
    """``ImageReward.mlp``: linear 768→1024→128→64→16→1 (no activations, as published; dropout is eval-off)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """The whole ImageReward network; ``state_dict()`` keys equal the published ``ImageReward.pt``."""

    def __init__(self, config: MedConfig) -> None:
        super().__init__()
        self.config = config
        self.blip = BlipBackbone(config)
        self.mlp = RewardMLP(config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixels: Tensor) -> Tensor:
        """Standardized ImageReward scores (B) from token ids, their mask and normalized ``image_size`` pixels."""
        image_tokens = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(input_ids, attention_mask, image_tokens)
        raw = self.mlp(text[:, 0, :]).squeeze(-1)
        return (raw - SCORE_MEAN) / SCORE_STD
