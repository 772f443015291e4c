"""The connector from the personalized context to the diffusion model's conditioning (ICG step 3; Bian et al.,
EMNLP 2025).

A small transformer (pre-norm encoder layers) plus output projections turns the B x N' x D personalized context
into the :class:`~icg.diffusion.conditioning.Conditioning` contract of a stock ``UNet2DConditionModel``: B x L x C
cross-attention states (SD 1.5: C = 768; SDXL: C = 2048), an optional key mask, and for SDXL a pooled vector
(1280-d). This follows MetaQuery's connector (transformer layers between the MLLM features and the diffusion
model) with, optionally, a fixed number of learned query tokens (as in BLIP-2's Q-Former / IP-Adapter's resampler)
so that L can be set independently of the number of meta tokens, e.g. 77 like CLIP's text encoder.

The adapter is trained; the UNet is frozen and stock. Its widths are checked against the loaded UNet with
:meth:`ConditioningAdapter.check_unet`, whose error names both config keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icg import ckpt
from icg.diffusion.conditioning import Conditioning, check_widths


class ConditioningAdapter(nn.Module):
    """Transformer connector: B x N' x D features -> ``Conditioning``.

    Args:
        in_dim: D, the width of the (personalized) meta-token features.
        cross_attention_dim: C, the UNet's cross-attention width (SD 1.5: 768, SDXL: 2048).
        num_layers: transformer encoder layers (>= 1 when ``num_tokens`` is set, so the queries can read the input).
        num_heads: attention heads; must divide ``hidden_dim``.
        num_tokens: L learned query tokens read out as the conditioning sequence (e.g. 77); None keeps L = N'.
        pooled_dim: width of a pooled vector for SDXL-style UNets (1280); None for SD 1.5.
        hidden_dim: the connector's internal width; None uses ``in_dim``.
        dropout: dropout inside the transformer layers.
    """

    def __init__(
        self,
        in_dim: int,
        cross_attention_dim: int,
        num_layers: int = 2,
        num_heads: int = 4,
        num_tokens: int | None = None,
        pooled_dim: int | None = None,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        hidden = hidden_dim or in_dim
        if hidden % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_dim={hidden} (hidden_dim defaults to in_dim)")
        if num_layers < 0 or (num_tokens is not None and num_layers < 1):
            raise ValueError(f"num_layers must be >= 0, and >= 1 with num_tokens set; got {num_layers}")
        if num_tokens is not None and num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1 or None, got {num_tokens}")
        self.in_dim = in_dim
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.pooled_dim = pooled_dim
        self.hidden_dim = hidden
        self.in_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden))
        self.queries = nn.Parameter(torch.randn(num_tokens, hidden) * 0.02) if num_tokens is not None else None
        layer = nn.TransformerEncoderLayer(
            hidden, num_heads, 4 * hidden, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, cross_attention_dim)
        self.pooled_proj = nn.Linear(hidden, pooled_dim) if pooled_dim is not None else None

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Conditioning:
        """Conditioning for the UNet.

        Args:
            features: B x N' x D personalized context.
            mask: B x N', 1/True for real tokens; None when all are real.

        Returns:
            ``Conditioning`` with encoder_hidden_states B x L x C (L = ``num_tokens`` or N'), the mask (only when L = N'
            and a mask was given), and the pooled vector B x ``pooled_dim`` when configured.
        """
        if features.ndim != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"features must be B x N x {self.in_dim} (adapter in_dim), got {tuple(features.shape)}")
        b = features.shape[0]
        x = self.in_proj(features)
        valid = mask.bool() if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.queries is not None:
            x = torch.cat([self.queries.to(x.dtype).unsqueeze(0).expand(b, -1, -1), x], dim=1)
            valid = torch.cat([valid.new_ones(b, self.num_tokens), valid], dim=1)
        if self.layers is not None:
            x = self.layers(x, src_key_padding_mask=~valid if mask is not None else None)
        if self.queries is not None:
            x, valid, out_mask = x[:, : self.num_tokens], valid[:, : self.num_tokens], None
        else:
            out_mask = mask
        h = self.out_norm(x)
        pooled = None
        if self.pooled_proj is not None:
            w = valid.to(h.dtype).unsqueeze(-1)
            pooled = self.pooled_proj((h * w).sum(1) / w.sum(1).clamp_min(1.0))
        return Conditioning(encoder_hidden_states=self.out_proj(h), attention_mask=out_mask, pooled=pooled)

    def check_unet(self, unet: nn.Module, unet_key: str, config_prefix: str = "model.adapter.init_args") -> None:
        """Raise ``ConditioningError`` naming both config keys if this adapter's widths do not fit ``unet``.

        Args:
            unet: the loaded ``UNet2DConditionModel``.
            unet_key: the config key that chose the UNet (e.g. ``model.diffusion.init_args.path``).
            config_prefix: where this adapter's init args live in the config.
        """
        check_widths(
            self.cross_attention_dim,
            unet,
            adapter_key=f"{config_prefix}.cross_attention_dim",
            unet_key=unet_key,
            pooled_dim=self.pooled_dim,
            pooled_key=f"{config_prefix}.pooled_dim",
        )
