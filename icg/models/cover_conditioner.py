"""Title + reference image + user -> UNet conditioning: ICG's meta-token prompting, user refinement and adapter.

The three trained parts of ICG (Bian et al., EMNLP 2025) in one plain module: the MLLM reads the title and the
reference image through learnable meta tokens (``MetaTokenPrompter``, MetaQuery-style), the stage-1 user embedding
refines the meta-token features (``UserFusion``), and a connector maps them to the UNet's cross-attention inputs
(``ConditioningAdapter``). Optionally the base model's own prompt of the title comes first and the adapter tokens
are appended to it (``title_prompt``, IP-Adapter style; see ``icg.diffusion.prompt_encoder``); where the base model's
prompt has a pooled vector (SDXL, Flux), that pooled vector is the conditioning's. Only what trains is
exported (``trained_state_dict``): meta tokens (and LoRA), fusion and adapter; the MLLM and the text encoder stay the
stock checkpoints named in the spec.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icg import ckpt
from icg.diffusion.conditioning import Conditioning, check_widths
from icg.diffusion.prompt_encoder import PromptEncoder
from icg.errors import ConfigError
from icg.models.adapter import ConditioningAdapter
from icg.models.fusion import UserFusion, UserOffset
from icg.models.meta_prompt import MetaTokenPrompter


class CoverConditioner(nn.Module):
    """``(titles, reference images, user embeddings) -> Conditioning``.

    Args:
        prompter: the MLLM with learnable meta tokens (B x N x D features); None: no MLLM path, the item reaches the
            UNet only through ``title_prompt`` and the adapter reads the user token alone (``fusion_type:
            user_token``): the "ICG without meta tokens" ablation (``lightning_configs/demo/stage3_no_meta.yaml``).
        fusion: user refinement of the features (``fusion_type`` none | user_token | film).
        adapter: connector to the UNet's conditioning (widths checked against the loaded UNet).
        title_prompt: the base model's frozen text encoder; when set, the conditioning is ``[its states of the title ;
            the adapter tokens]``, so the adapter adds to the base model's prompt instead of replacing it. A prompt
            with a pooled vector (SDXL, Flux) gives the conditioning's pooled vector, so the adapter then has none.
        user_offset: a per-user additive offset on the adapter's output tokens (``icg.models.fusion.UserOffset``),
            the user's direct path past the adapter's shared output LayerNorm; None: none.
    """

    def __init__(
        self,
        prompter: MetaTokenPrompter | None,
        fusion: UserFusion,
        adapter: ConditioningAdapter,
        title_prompt: PromptEncoder | None = None,
        user_offset: UserOffset | None = None,
    ) -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        if prompter is None and (fusion.fusion_type != "user_token" or title_prompt is None):
            raise ConfigError(
                f"prompter: null (no meta tokens) needs fusion.init_args.fusion_type: user_token (got "
                f"{fusion.fusion_type!r}) and a title_prompt (got {'one' if title_prompt is not None else 'null'}): "
                "the adapter then reads the user token alone, the title reaches the UNet through the base prompt"
            )
        if prompter is not None and fusion.feature_dim != prompter.hidden_size:
            raise ConfigError(
                f"fusion.init_args.feature_dim={fusion.feature_dim} must equal the MLLM hidden size "
                f"{prompter.hidden_size} (prompter.init_args.mllm_path / tiny_config)"
            )
        if prompter is not None and adapter.in_dim != prompter.hidden_size:
            raise ConfigError(
                f"adapter.init_args.in_dim={adapter.in_dim} must equal the MLLM hidden size {prompter.hidden_size} "
                "(prompter.init_args.mllm_path / tiny_config)"
            )
        if adapter.in_dim != fusion.feature_dim:
            raise ConfigError(
                f"adapter.init_args.in_dim={adapter.in_dim} must equal "
                f"fusion.init_args.feature_dim={fusion.feature_dim}"
            )
        if title_prompt is not None and title_prompt.width != adapter.cross_attention_dim:
            raise ConfigError(
                f"title_prompt gives states of width {title_prompt.width} but "
                f"adapter.init_args.cross_attention_dim={adapter.cross_attention_dim}; both must equal the UNet's"
            )
        if title_prompt is not None and title_prompt.pooled_dim is not None and adapter.pooled_dim is not None:
            raise ConfigError(
                f"adapter.init_args.pooled_dim={adapter.pooled_dim} but the title_prompt already gives the pooled "
                f"vector (its base model's, width {title_prompt.pooled_dim}); set adapter.init_args.pooled_dim to null"
            )
        if user_offset is not None and (user_offset.num_tokens, user_offset.width) != (
            adapter.num_tokens,
            adapter.cross_attention_dim,
        ):
            raise ConfigError(
                f"user_offset.init_args.(num_tokens, width)=({user_offset.num_tokens}, {user_offset.width}) must equal "
                f"the adapter's (num_tokens, cross_attention_dim)=({adapter.num_tokens}, {adapter.cross_attention_dim})"
            )
        self.prompter = prompter
        self.fusion = fusion
        self.adapter = adapter
        self.title_prompt = title_prompt
        self.user_offset = user_offset

    @property
    def pooled_dim(self) -> int | None:
        """The width of the conditioning's pooled vector (from the title prompt or the adapter), None if none."""
        if self.title_prompt is not None and self.title_prompt.pooled_dim is not None:
            return self.title_prompt.pooled_dim
        return self.adapter.pooled_dim

    def check_denoiser(
        self, denoiser: nn.Module, denoiser_key: str, prefix: str = "model.init_args.conditioner.init_args"
    ) -> None:
        """Raise ``ConditioningError`` naming the config keys when the conditioning does not fit the loaded denoiser.

        Args:
            denoiser: the loaded ``UNet2DConditionModel`` or ``FluxTransformer2DModel``.
            denoiser_key: the config key that chose it (e.g. ``model.init_args.diffusion``).
            prefix: where this conditioner's init args live in the config.
        """
        adapter = f"{prefix}.adapter.init_args"
        title = f"{prefix}.title_prompt"
        if self.title_prompt is not None and self.title_prompt.pooled_dim is not None:
            pooled_key = f"{title} (its text encoders' pooled vector)"
        else:
            pooled_key = f"{adapter}.pooled_dim"
        check_widths(self.adapter.cross_attention_dim, denoiser, f"{adapter}.cross_attention_dim", denoiser_key,
                     pooled_dim=self.pooled_dim, pooled_key=pooled_key)  # fmt: skip
        if self.title_prompt is not None:
            check_widths(self.title_prompt.width, denoiser, f"{title} (its text encoder's width)", denoiser_key,
                         check_pooled=False)  # fmt: skip

    def item_features(self, titles: list[str], images: Tensor) -> Tensor:
        """B x N x D meta-token features of the items (user-independent; cacheable when the prompter is frozen);
        without a prompter, B x 0 x D."""
        if self.prompter is None:
            return images.new_zeros(images.shape[0], 0, self.fusion.feature_dim)
        return self.prompter(list(titles), images)

    def forward(self, titles: list[str], images: Tensor, user_emb: Tensor | None) -> Conditioning:
        """The personalized conditioning of B (item, user) pairs.

        Args:
            titles: B item titles.
            images: B x 3 x H x W reference covers in [0, 1].
            user_emb: B x U stage-1 user embeddings (None only with ``fusion_type="none"``).
        """
        return self.condition(self.item_features(titles, images), user_emb, titles)

    def condition(self, features: Tensor, user_emb: Tensor | None, titles: list[str] | None = None) -> Conditioning:
        """Fusion + adapter on precomputed item features (after the title prompt, when ``title_prompt`` is set)."""
        tokens = self.adapter(self.fusion(features, user_emb))
        if self.user_offset is not None:
            states = self.user_offset(tokens.encoder_hidden_states, user_emb)
            tokens = Conditioning(states, tokens.attention_mask, tokens.pooled)
        if self.title_prompt is None:
            return tokens
        if titles is None:
            raise ValueError("this conditioner has a title_prompt: condition() needs the titles")
        return Conditioning.join([self.title_prompt(titles), tokens])

    def trained_state_dict(self) -> dict[str, Tensor]:
        """Only the trained weights: meta tokens (+ LoRA), fusion and adapter (what an export holds)."""
        prompter = self.prompter.trained_state_dict() if self.prompter is not None else {}
        state = {f"prompter.{k}": v for k, v in prompter.items()}
        for name in self._trained_modules():
            state.update({f"{name}.{k}": v.detach().clone() for k, v in getattr(self, name).state_dict().items()})
        return state

    def load_trained_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of ``trained_state_dict`` (strict: every trained tensor, nothing else)."""
        heads = ("prompter",) if self.prompter is not None else ()
        parts: dict[str, dict[str, Tensor]] = {name: {} for name in (*heads, *self._trained_modules())}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head not in parts:
                raise KeyError(f"unexpected key {key!r} in trained weights (expected one of {sorted(parts)})")
            parts[head][rest] = value
        if self.prompter is not None:
            self.prompter.load_trained_state_dict(parts["prompter"])
        with torch.no_grad():
            for name in self._trained_modules():
                getattr(self, name).load_state_dict(parts[name], strict=True)

    def _trained_modules(self) -> tuple[str, ...]:
        return ("fusion", "adapter") + (("user_offset",) if self.user_offset is not None else ())
