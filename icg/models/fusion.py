"""User refinement of the meta-token features (ICG step 2; Bian et al., EMNLP 2025).

The stage-1 preference model's user embedding turns the item's meta-token features into a personalized context.
The paper's abstract does not say how; ``fusion_type`` chooses among our options so that each is an ablation:

* ``user_token``: the user embedding, projected to the feature width, is appended as one more token (N -> N+1);
  the adapter's attention decides how much each generated token reads from it (PMG-style soft user tokens).
* ``film``: a per-channel scale and shift computed from the user embedding (FiLM, Perez et al., 2018), blended in
  through a tanh gate that starts at zero (Flamingo-style gating), so training starts from the unpersonalised
  model exactly and the gate opens only as far as the rewards ask.
* ``none``: features pass through unchanged: the "ICG without user refinement" baseline.

:class:`UserOffset` refines on the other side of the adapter: a per-user additive offset on the adapter's output
tokens. Alignment tends to drive the adapter's residual stream to a large shared component that its output
LayerNorm turns into the same tokens for every user (docs/stage3.md); the offset bypasses that LayerNorm, so the
user-specific part of the reward gradient has a direct path to the UNet's conditioning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icg import ckpt
from icg.errors import ConfigError

FUSION_TYPES = ("user_token", "film", "none")


class UserFusion(nn.Module):
    """Refine B x N x D item features with a B x U user embedding.

    Args:
        feature_dim: D, the width of the meta-token features.
        user_dim: U, the width of the stage-1 user embedding (its ``embed_dim``); ``icg fit`` reads it from the
            stage-1 checkpoint (``preference_ckpt``) when the config leaves it out.
        fusion_type: ``user_token`` (append one token), ``film`` (gated scale/shift) or ``none`` (identity).
    """

    def __init__(self, feature_dim: int, user_dim: int | None = None, fusion_type: str = "user_token") -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        if fusion_type not in FUSION_TYPES:
            raise ConfigError(f"UserFusion.fusion_type must be one of {FUSION_TYPES}, got {fusion_type!r}")
        if fusion_type != "none":  # "none" reads no user embedding
            _require_user_dim(user_dim, "UserFusion")
        if feature_dim < 1 or (user_dim is not None and user_dim < 1):
            raise ConfigError(f"UserFusion.feature_dim and user_dim must be >= 1, got {feature_dim} and {user_dim}")
        self.feature_dim = feature_dim
        self.user_dim = user_dim
        self.fusion_type = fusion_type
        if fusion_type == "user_token":
            # Normalizing first makes the token's scale independent of how the stage-1 model scaled its embeddings.
            self.user_proj = nn.Sequential(
                nn.LayerNorm(user_dim),
                nn.Linear(user_dim, feature_dim),
                nn.GELU(),
                nn.Linear(feature_dim, feature_dim),
            )
        elif fusion_type == "film":
            self.user_norm = nn.LayerNorm(user_dim)
            self.film = nn.Linear(user_dim, 2 * feature_dim)
            self.gate = nn.Linear(user_dim, feature_dim)
            # Only the gate starts at zero: the FiLM layer keeps its random init, so the gate's gradient
            # (proportional to the FiLM output) is non-zero from the first step.
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    @property
    def num_added_tokens(self) -> int:
        """How many tokens ``forward`` adds to the sequence (N' = N + this)."""
        return 1 if self.fusion_type == "user_token" else 0

    def forward(self, features: Tensor, user_emb: Tensor | None) -> Tensor:
        """Personalized context.

        Args:
            features: B x N x D item features.
            user_emb: B x U user embeddings (may be None only for ``fusion_type="none"``).

        Returns:
            B x N' x D, N' = N + 1 for ``user_token``, N otherwise.
        """
        if features.ndim != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"features must be B x N x {self.feature_dim}, got {tuple(features.shape)}")
        if self.fusion_type == "none":
            return features
        if user_emb is None:
            raise ValueError(f"fusion_type={self.fusion_type!r} needs a user embedding, got None")
        if user_emb.shape != (features.shape[0], self.user_dim):
            raise ValueError(f"user_emb must be {features.shape[0]} x {self.user_dim}, got {tuple(user_emb.shape)}")
        user_emb = user_emb.to(features.dtype)
        if self.fusion_type == "user_token":
            return torch.cat([features, self.user_proj(user_emb).unsqueeze(1)], dim=1)
        u = self.user_norm(user_emb)
        scale, shift = self.film(u).unsqueeze(1).chunk(2, dim=-1)
        gate = torch.tanh(self.gate(u)).unsqueeze(1)
        return features + gate * (features * scale + shift)


class UserOffset(nn.Module):
    """A per-user additive offset on the adapter's L output tokens: ``tokens + W LayerNorm(user)``.

    ``W`` (bias-free) starts at zero, so a new offset changes nothing until the rewards move it; bias-free, so it
    holds nothing that is shared by all users beyond what the normalized embeddings share.

    Args:
        user_dim: width of the stage-1 user embeddings (its ``embed_dim``); ``icg fit`` reads it from the stage-1
            checkpoint (``preference_ckpt``) when the config leaves it out.
        num_tokens: L, the adapter's ``num_tokens``.
        width: C, the adapter's ``cross_attention_dim``.
    """

    def __init__(self, user_dim: int | None = None, *, num_tokens: int, width: int) -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        _require_user_dim(user_dim, "UserOffset")
        if min(user_dim, num_tokens, width) < 1:
            raise ConfigError(
                f"UserOffset.user_dim, num_tokens and width must be >= 1, got {user_dim}, {num_tokens}, {width}"
            )
        self.user_dim, self.num_tokens, self.width = user_dim, num_tokens, width
        self.user_norm = nn.LayerNorm(user_dim)
        self.proj = nn.Linear(user_dim, num_tokens * width, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, tokens: Tensor, user_emb: Tensor) -> Tensor:
        """``tokens`` (B x L x C) plus each row's user offset."""
        if tokens.shape[1:] != (self.num_tokens, self.width):
            raise ValueError(f"tokens must be B x {self.num_tokens} x {self.width}, got {tuple(tokens.shape)}")
        if user_emb is None or user_emb.shape != (tokens.shape[0], self.user_dim):
            got = None if user_emb is None else tuple(user_emb.shape)
            raise ValueError(f"user_emb must be {tokens.shape[0]} x {self.user_dim}, got {got}")
        offset = self.proj(self.user_norm(user_emb.to(tokens.dtype)))
        return tokens + offset.view(tokens.shape)


def _require_user_dim(user_dim: int | None, owner: str) -> None:
    if user_dim is None:
        raise ConfigError(
            f"{owner}.user_dim: not given; `icg fit` reads it from the stage-1 checkpoint (model.init_args."
            "preference_ckpt), elsewhere pass the stage-1 model's embed_dim"
        )
