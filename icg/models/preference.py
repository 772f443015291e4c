"""The stage-1 personalized preference (click) model of ICG (Bian et al., EMNLP 2025): score(user, cover) -> logit.

A two-tower click model trained on user behaviour. It supplies the user embeddings that stage 3 refines the
meta-token features with, and the personalized reward: its logit is differentiable w.r.t. the cover pixels.

Architecture (D = ``embed_dim``, F = the image encoder's ``feature_dim``)::

    user tower   u = E_user[user] (+ W_h . mean(image features of the user's clicked covers), history_type="mean")
    item tower   v = MLP(norm([image_encoder(cover) ; title features])) in R^D  (titles: title_type="hashed";
                 hidden_dim=0: one linear map; norm: LayerNorm, or per-feature standardization with item_norm="batch")
    logit        = <u, v> + w_b . v + b_user[user] + b

* The image encoder (``icg.models.image_encoders``) is chosen in config and frozen by default
  (``freeze_encoder``); with a frozen encoder the item features of dataset covers can be cached per item
  (``ItemFeatureCache``), computed once and reused across epochs. Generated covers are never looked up in a cache.
* The item tower has no item-ID embedding: an item is only its cover (and title), so a generated cover is scored
  exactly like a real one and an unseen item needs no fallback.
* Cold start: a user index outside ``[0, num_users)`` (the vocabulary's ``-1`` for unseen users) maps to one extra
  *fallback* row of the user tables. With ``cold_start_dropout > 0`` training replaces that fraction of user ids
  with the fallback row, so it learns the population's average taste; with 0 it stays at its zero init and an
  unseen user gets the user-independent part of the score (``w_b . v + b``). The dropout mask is drawn from the
  ``generator`` passed to ``score_features`` (the stage seeds one per training batch, so a resumed run draws the
  masks an uninterrupted one would); without one it comes from torch's global RNG.
* Title features (``title_type="hashed"``): a bag of hashed lower-cased words (``title_buckets`` buckets, CRC32),
  mean of learned bucket embeddings; no tokenizer or download needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from icg import ckpt
from icg.ckpt import init_spec
from icg.diffusion.title_tokens import hash_bucket, title_words
from icg.errors import ConfigError

CHECKPOINT_STAGE = "preference"  # the stage tag the stage-1 LightningModule writes (icg.lit.preference.STAGE)

HISTORY_TYPES = ("none", "mean")
ITEM_NORMS = ("layer", "batch")
TITLE_TYPES = ("none", "hashed")


class HashedTitleEncoder(nn.Module):
    """Titles -> mean of learned embeddings of their hashed lower-cased words (B x ``dim``); empty title -> 0."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")

    def forward(self, titles: list[str]) -> torch.Tensor:
        ids, offsets = [], []
        for title in titles:
            offsets.append(len(ids))
            ids += [hash_bucket(w, self.buckets) for w in title_words(title)]
        device = self.bag.weight.device
        return self.bag(torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(offsets, device=device))


class PreferenceModel(nn.Module):
    """Two-tower personalized click model; see the module docstring for the architecture.

    Args:
        image_encoder: cover encoder (``ClipVisionEncoder`` for real runs, ``TinyImageEncoder`` for tests/demo).
        num_users: size of the user vocabulary (``datamodule.num_users``); one fallback row is added. ``icg fit``
            counts the users of ``data.root`` when the config leaves it out.
        embed_dim: width D of the user and item embeddings.
        hidden_dim: hidden width of the item-tower MLP; 0 makes the item tower one linear map (a bilinear click
            model in the image features, which suits small data whose true click model is logistic in them).
        freeze_encoder: keep the image encoder frozen (eval mode, no gradients to its weights); pixels still get
            gradients. Required for the per-item feature cache.
        history_type: ``none`` or ``mean`` (add a projection of the mean image features of the user's click
            history to the user embedding).
        title_type: ``none`` or ``hashed`` (hashed bag-of-words title features into the item tower).
        title_buckets: hash buckets of the title encoder.
        title_dim: width of the title features.
        cold_start_dropout: fraction of training examples whose user is replaced by the fallback row.
        item_norm: input normalization of the item tower: ``layer`` (LayerNorm across features, per item) or
            ``batch`` (each feature standardized by running statistics, ``BatchNorm1d`` without affine; fixed in
            eval mode, so stage 2/3 scores do not depend on the batch).
    """

    def __init__(  # noqa: PLR0913  # a module constructor the stage-1 config sets (class_path/init_args)
        self,
        image_encoder: nn.Module,
        num_users: int | None = None,
        embed_dim: int = 32,
        hidden_dim: int = 64,
        freeze_encoder: bool = True,
        history_type: str = "none",
        title_type: str = "none",
        title_buckets: int = 4096,
        title_dim: int = 16,
        cold_start_dropout: float = 0.0,
        item_norm: str = "layer",
    ) -> None:
        super().__init__()
        self.spec = init_spec(self, locals())
        if history_type not in HISTORY_TYPES:
            raise ConfigError(f"PreferenceModel.history_type must be one of {HISTORY_TYPES}, got {history_type!r}")
        if title_type not in TITLE_TYPES:
            raise ConfigError(f"PreferenceModel.title_type must be one of {TITLE_TYPES}, got {title_type!r}")
        if item_norm not in ITEM_NORMS:
            raise ConfigError(f"PreferenceModel.item_norm must be one of {ITEM_NORMS}, got {item_norm!r}")
        if hidden_dim < 0:
            raise ConfigError(f"PreferenceModel.hidden_dim must be >= 0 (0: linear item tower), got {hidden_dim}")
        if num_users is None:
            raise ConfigError(
                "PreferenceModel.num_users: not given; `icg fit` counts the users of data.root, elsewhere pass the "
                "DataModule's num_users"
            )
        if num_users < 1:
            raise ConfigError(f"PreferenceModel.num_users must be >= 1, got {num_users}")
        if not 0.0 <= cold_start_dropout < 1.0:
            raise ConfigError(f"PreferenceModel.cold_start_dropout must be in [0, 1), got {cold_start_dropout}")
        self.image_encoder = image_encoder
        self.num_users = num_users
        self.embed_dim = embed_dim
        self.freeze_encoder = freeze_encoder
        self.history_type = history_type
        self.title_type = title_type
        self.cold_start_dropout = cold_start_dropout
        self.feature_dim = int(image_encoder.feature_dim)
        if freeze_encoder:
            image_encoder.requires_grad_(False).eval()

        self.user_embedding_table = nn.Embedding(num_users + 1, embed_dim)  # last row: the cold-start fallback
        self.user_bias = nn.Embedding(num_users + 1, 1)
        nn.init.normal_(self.user_embedding_table.weight, std=0.1)
        nn.init.zeros_(self.user_bias.weight)
        with torch.no_grad():
            self.user_embedding_table.weight[num_users].zero_()
        self.history_proj = nn.Linear(self.feature_dim, embed_dim) if history_type == "mean" else None
        self.title_encoder = HashedTitleEncoder(title_buckets, title_dim) if title_type == "hashed" else None
        item_in = self.feature_dim + (title_dim if self.title_encoder is not None else 0)
        # Normalize first: CLIP embeddings and colour statistics live on very different scales. LayerNorm mixes a
        # cover's features into one scale; standardizing each feature keeps them comparable across covers.
        norm = nn.LayerNorm(item_in) if item_norm == "layer" else nn.BatchNorm1d(item_in, affine=False)
        if hidden_dim > 0:
            self.item_tower = nn.Sequential(
                norm, nn.Linear(item_in, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim)
            )
        else:
            self.item_tower = nn.Sequential(norm, nn.Linear(item_in, embed_dim))
        self.item_bias = nn.Linear(embed_dim, 1)

    def train(self, mode: bool = True) -> PreferenceModel:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode (Lightning calls ``train()`` on fit)."""
        super().train(mode)
        if self.freeze_encoder:
            self.image_encoder.eval()
        return self

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config_key: str = "preference_ckpt"
    ) -> tuple[PreferenceModel, list[str]]:
        """The frozen stage-1 click model and its user vocabulary from a stage-1 checkpoint.

        Args:
            path: a checkpoint written by the preference stage (``icg.lit.preference.PreferenceStage``).
            config_key: the config key that named ``path``, quoted in every error (e.g. a wrong-stage checkpoint).

        Returns:
            ``(model, user_ids)``: the model in eval mode with no trainable parameters, and the sorted string user ids
            whose positions are its ``user_idx``.
        """
        checkpoint = ckpt.load_stage_checkpoint(path, CHECKPOINT_STAGE, config_key)
        model = ckpt.load_module(checkpoint, "model", prefix="model")
        if not isinstance(model, cls):
            raise ckpt.CheckpointError(f"{config_key}: {path} holds a {type(model).__name__}, not a {cls.__name__}")
        return ckpt.freeze(model), list(checkpoint[ckpt.ICG_KEY].get("user_ids", []))

    @property
    def fallback_index(self) -> int:
        """Row of the user tables used for users outside the vocabulary (index -1 or >= ``num_users``)."""
        return self.num_users

    def user_rows(self, user_idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows of the user tables: unseen users (``-1`` or out of range) -> the fallback row.

        Args:
            user_idx: B user indices.
            generator: source of the cold-start dropout mask in training mode (on ``user_idx``'s device; None:
                torch's global RNG).
        """
        user_idx = user_idx.long()
        unseen = (user_idx < 0) | (user_idx >= self.num_users)
        rows = torch.where(unseen, torch.full_like(user_idx, self.fallback_index), user_idx)
        if self.training and self.cold_start_dropout > 0:
            drop = torch.rand(rows.shape, device=rows.device, generator=generator) < self.cold_start_dropout
            rows = torch.where(drop, torch.full_like(rows, self.fallback_index), rows)
        return rows

    def user_penalty(self, user_idx: torch.Tensor) -> torch.Tensor:
        """Squared norm B of the users' ID embeddings (no cold-start dropout): the stage's ``user_l2`` term."""
        user_idx = user_idx.long()
        unseen = (user_idx < 0) | (user_idx >= self.num_users)
        rows = torch.where(unseen, torch.full_like(user_idx, self.fallback_index), user_idx)
        return self.user_embedding_table(rows).pow(2).sum(-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image features B x F of covers in [0, 1]; differentiable w.r.t. the pixels even when frozen."""
        return self.image_encoder(images)

    def user_embedding(
        self,
        user_idx: torch.Tensor,
        history_feats: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The user tower: B x D embeddings (what stage 3 refines its features with).

        Args:
            user_idx: B user indices; unseen users (``-1``) get the fallback embedding.
            history_feats: B x L x F image features of the user's clicked covers (``history_type="mean"`` only;
                without it the history term is left out).
            history_mask: B x L bool, True where ``history_feats`` holds a real cover (default: all).
        """
        return self._user_vector(self.user_rows(user_idx), history_feats, history_mask)

    def _user_vector(
        self, rows: torch.Tensor, history_feats: torch.Tensor | None, history_mask: torch.Tensor | None
    ) -> torch.Tensor:
        user = self.user_embedding_table(rows)
        if self.history_proj is not None and history_feats is not None:
            if history_mask is None:
                history_mask = torch.ones(history_feats.shape[:2], dtype=torch.bool, device=history_feats.device)
            weights = history_mask.to(history_feats.dtype).unsqueeze(-1)
            pooled = (history_feats * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            user = user + self.history_proj(pooled)
        return user

    def item_embedding(self, image_feats: torch.Tensor, titles: list[str] | None = None) -> torch.Tensor:
        """The item tower: B x D from image features B x F (and titles when ``title_type="hashed"``)."""
        parts = [image_feats]
        if self.title_encoder is not None:
            if titles is None:
                raise ValueError("this preference model uses titles (title_type='hashed'): pass titles=")
            parts.append(self.title_encoder(list(titles)).to(image_feats.dtype))
        return self.item_tower(torch.cat(parts, dim=1))

    def score_features(
        self,
        image_feats: torch.Tensor,
        user_idx: torch.Tensor,
        history_feats: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        titles: list[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Click logits B from precomputed image features (the cached path); see ``forward``.

        ``generator`` draws the cold-start dropout mask in training mode (None: torch's global RNG).
        """
        item = self.item_embedding(image_feats, titles)
        rows = self.user_rows(user_idx, generator)  # once, so embedding and bias share the same dropout draw
        user = self._user_vector(rows, history_feats, history_mask)
        return (user * item).sum(-1) + self.item_bias(item).squeeze(-1) + self.user_bias(rows).squeeze(-1)

    def forward(
        self,
        images: torch.Tensor,
        user_idx: torch.Tensor,
        history_feats: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        titles: list[str] | None = None,
    ) -> torch.Tensor:
        """Click logits B of covers B x 3 x H x W in [0, 1] for users B; differentiable w.r.t. ``images``.

        Args:
            images: covers in [0, 1] (dataset covers or generated ones).
            user_idx: user indices; ``-1`` (unseen) gets the fallback embedding.
            history_feats: B x L x F features of the users' clicked covers (``history_type="mean"``).
            history_mask: B x L bool mask of real history entries.
            titles: item titles (``title_type="hashed"`` only).
        """
        return self.score_features(self.encode_images(images), user_idx, history_feats, history_mask, titles)


class ItemFeatureCache:
    """Per-item image features of the dataset covers, computed once by a frozen encoder and reused across epochs.

    Keyed by ``item_idx``; entries with ``item_idx < 0`` (items outside the vocabulary) are never cached. Use only
    for dataset covers with a frozen encoder, never for generated images.

    Args:
        num_items: size of the item vocabulary.
        feature_dim: width F of the features.
    """

    def __init__(self, num_items: int, feature_dim: int) -> None:
        self.features = torch.zeros(num_items, feature_dim)
        self.filled = torch.zeros(num_items, dtype=torch.bool)
        self.hits = 0
        self.misses = 0

    def lookup(self, item_idx: torch.Tensor, images: torch.Tensor | None, encode: Callable) -> torch.Tensor:
        """Features B x F: cached rows where present; the rest are encoded from ``images`` (no grad) and stored.

        Args:
            item_idx: B item indices (``-1``: not in the vocabulary, always encoded).
            images: B x 3 x H x W covers of those items; may be ``None`` when every item is cached.
            encode: the frozen encoder (``PreferenceModel.encode_images``).
        """
        idx = item_idx.detach().long().cpu()
        known = (idx >= 0) & (idx < len(self.filled))
        have = known & self.filled[idx.clamp(0, len(self.filled) - 1)]
        missing = (~have).nonzero().squeeze(1)
        out = self.features[idx.clamp(0, len(self.filled) - 1)].clone()
        if len(missing):
            if images is None:
                raise ValueError(f"ItemFeatureCache: {len(missing)} item(s) not cached and no images given to encode")
            with torch.no_grad():
                new = encode(images[missing.to(images.device)]).detach().float().cpu()
            out[missing] = new
            store = missing[known[missing]]
            self.features[idx[store]] = new[known[missing]]
            self.filled[idx[store]] = True
        self.hits += int(have.sum())
        self.misses += len(missing)
        return out if images is None else out.to(images.device, images.dtype)

    def rows(self, item_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features B x L x F of ``item_idx`` (B x L) and a mask of the entries that are cached."""
        idx = item_idx.detach().long().cpu()
        known = (idx >= 0) & (idx < len(self.filled))
        safe = idx.clamp(0, len(self.filled) - 1)
        return self.features[safe], known & self.filled[safe]
