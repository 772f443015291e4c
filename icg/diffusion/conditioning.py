"""The conditioning contract between the ICG adapter and a stock diffusers UNet, and the one wrapper that calls it.

ICG (Bian et al., EMNLP 2025) feeds a personalized context into a frozen, stock diffusion model through a small
adapter. The adapter's output is a :class:`Conditioning`: cross-attention states (SD 1.5: 768-d; SDXL: 2048-d), an
optional key mask and, for SDXL, the pooled vector (1280-d). :func:`predict_noise` is the only place that maps this
contract onto ``UNet2DConditionModel.__call__`` (modelled on sgm's ``GeneralConditioner`` / ``wrappers.py``), so the
sampler, the denoising regularizer and any inference comparison see exactly the same UNet call. Diffusers code is
never edited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from icg.errors import UserError


class ConditioningError(UserError, ValueError):
    """A conditioning tensor does not fit the UNet; the message names the config keys involved."""


@dataclass
class Conditioning:
    """What the adapter hands to the UNet.

    Args:
        encoder_hidden_states: B x L x C cross-attention states; C must equal the UNet's ``cross_attention_dim``.
        attention_mask: B x L, 1 (or True) for tokens to attend to, 0 for padding; None attends to all tokens.
        pooled: B x P pooled vector for SDXL-style UNets (``addition_embed_type="text_time"``); None for SD 1.5.
    """

    encoder_hidden_states: Tensor
    attention_mask: Tensor | None = None
    pooled: Tensor | None = None

    def __post_init__(self) -> None:
        hs = self.encoder_hidden_states
        if hs.ndim != 3:
            raise ConditioningError(f"encoder_hidden_states must be B x L x C, got shape {tuple(hs.shape)}")
        if self.attention_mask is not None and tuple(self.attention_mask.shape) != tuple(hs.shape[:2]):
            raise ConditioningError(
                f"attention_mask must be B x L = {tuple(hs.shape[:2])}, got {tuple(self.attention_mask.shape)}"
            )
        if self.pooled is not None and (self.pooled.ndim != 2 or self.pooled.shape[0] != hs.shape[0]):
            raise ConditioningError(f"pooled must be B x P with B={hs.shape[0]}, got {tuple(self.pooled.shape)}")

    @property
    def batch_size(self) -> int:
        return self.encoder_hidden_states.shape[0]

    @property
    def width(self) -> int:
        """The cross-attention width C."""
        return self.encoder_hidden_states.shape[-1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """A copy on ``device`` with floating tensors cast to ``dtype`` (the mask keeps its dtype)."""

        def move(t: Tensor | None, cast: bool) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if cast and t.is_floating_point() else None)

        return Conditioning(
            move(self.encoder_hidden_states, True), move(self.attention_mask, False), move(self.pooled, True)
        )

    def repeat(self, n: int) -> Conditioning:
        """Each row repeated ``n`` times in place (row i becomes rows i*n .. i*n+n-1), as ``num_images_per_prompt``."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        return Conditioning(rep(self.encoder_hidden_states), rep(self.attention_mask), rep(self.pooled))

    def detach(self) -> Conditioning:
        det = lambda t: None if t is None else t.detach()  # noqa: E731
        return Conditioning(det(self.encoder_hidden_states), det(self.attention_mask), det(self.pooled))

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Stack along the batch (e.g. ``[uncond, cond]`` for classifier-free guidance).

        Sequence lengths must agree. If only some parts carry a mask, the others get an all-ones mask, so that
        concatenating a masked and an unmasked conditioning keeps the unmasked one attending to everything.
        """
        if not parts:
            raise ConditioningError("Conditioning.cat needs at least one part")
        lengths = {p.encoder_hidden_states.shape[1:] for p in parts}
        if len(lengths) != 1:
            raise ConditioningError(f"cannot concatenate conditionings of different L x C: {sorted(lengths)}")
        has_pooled = {p.pooled is not None for p in parts}
        if len(has_pooled) != 1:
            raise ConditioningError("cannot concatenate conditionings where only some carry a pooled vector")
        hs = torch.cat([p.encoder_hidden_states for p in parts])
        mask = _joined_mask(parts, dim=0)
        pooled = torch.cat([p.pooled for p in parts]) if parts[0].pooled is not None else None
        return Conditioning(hs, mask, pooled)

    @staticmethod
    def join(parts: list[Conditioning]) -> Conditioning:
        """Concatenate along the token axis (e.g. ``[prompt ; adapter tokens]``, as IP-Adapter appends its tokens).

        If only some parts carry a mask, the others get an all-ones mask; at most one part may carry a pooled vector.
        """
        if not parts:
            raise ConditioningError("Conditioning.join needs at least one part")
        if len({p.batch_size for p in parts}) != 1 or len({p.width for p in parts}) != 1:
            shapes = [tuple(p.encoder_hidden_states.shape) for p in parts]
            raise ConditioningError(f"cannot join conditionings of different batch size or width: {shapes}")
        pooled = [p.pooled for p in parts if p.pooled is not None]
        if len(pooled) > 1:
            raise ConditioningError("cannot join conditionings where more than one carries a pooled vector")
        hs = torch.cat([p.encoder_hidden_states for p in parts], dim=1)
        mask = _joined_mask(parts, dim=1)
        return Conditioning(hs, mask, pooled[0] if pooled else None)


def _joined_mask(parts: list[Conditioning], dim: int) -> Tensor | None:
    """The parts' masks concatenated along ``dim`` (a part without one attends to all its tokens), or None."""
    if all(p.attention_mask is None for p in parts):
        return None
    return torch.cat(
        [
            p.attention_mask.long()
            if p.attention_mask is not None
            else torch.ones(p.encoder_hidden_states.shape[:2], device=p.encoder_hidden_states.device, dtype=torch.long)
            for p in parts
        ],
        dim=dim,
    )


def unet_cross_attention_dim(unet: nn.Module) -> int:
    """The single cross-attention width of a ``UNet2DConditionModel`` (a per-block list must be uniform)."""
    dim = unet.config.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        if len(set(dim)) != 1:
            raise ConditioningError(f"UNets with per-block cross_attention_dim {list(dim)} are not supported")
        dim = dim[0]
    return int(dim)


def unet_pooled_dim(unet: nn.Module) -> int | None:
    """The pooled-vector width an SDXL-style UNet expects (``text_time`` added embedding), None for SD 1.5 UNets."""
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        return None
    # SDXL's added embedding = pooled text embedding ++ Fourier features of the 6 time ids.
    return int(cfg.projection_class_embeddings_input_dim) - 6 * int(cfg.addition_time_embed_dim)


def check_widths(
    cond_dim: int,
    unet: nn.Module,
    adapter_key: str,
    unet_key: str,
    *,
    pooled_dim: int | None = None,
    pooled_key: str | None = None,
) -> None:
    """Fail early, naming both config keys, when the adapter's output width does not fit the loaded UNet.

    Args:
        cond_dim: the adapter's cross-attention output width.
        unet: the loaded ``UNet2DConditionModel``.
        adapter_key: config key that sets ``cond_dim`` (e.g. ``model.adapter.init_args.out_dim``).
        unet_key: config key that chose the UNet (e.g. ``model.diffusion.path``).
        pooled_dim: the adapter's pooled output width, or None if it emits none.
        pooled_key: config key that sets ``pooled_dim``; defaults to ``adapter_key``.
    """
    unet_dim = unet_cross_attention_dim(unet)
    if int(cond_dim) != unet_dim:
        raise ConditioningError(
            f"cross-attention width mismatch: {adapter_key}={cond_dim} but the UNet chosen by {unet_key} has "
            f"cross_attention_dim={unet_dim}; set {adapter_key} to {unet_dim} or pick a matching UNet"
        )
    expected_pooled = unet_pooled_dim(unet)
    pooled_key = pooled_key or adapter_key
    if expected_pooled is not None and pooled_dim != expected_pooled:
        raise ConditioningError(
            f"pooled width mismatch: {pooled_key}={pooled_dim} but the SDXL-style UNet chosen by {unet_key} expects a "
            f"pooled vector of width {expected_pooled}"
        )
    if expected_pooled is None and pooled_dim is not None:
        raise ConditioningError(
            f"{pooled_key}={pooled_dim} gives a pooled vector, but the UNet chosen by {unet_key} takes none (SD 1.5)"
        )


def sdxl_time_ids(
    batch_size: int,
    image_size: tuple[int, int],
    *,
    original_size: tuple[int, int] | None = None,
    crop_top_left: tuple[int, int] = (0, 0),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SDXL micro-conditioning ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``, as its pipeline does."""
    original_size = original_size or image_size
    ids = torch.tensor([[*original_size, *crop_top_left, *image_size]], device=device, dtype=dtype)
    return ids.expand(batch_size, -1)


def predict_noise(
    unet: nn.Module,
    latents: Tensor,
    timestep: Tensor | int,
    cond: Conditioning,
    *,
    image_size: tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The one UNet call: epsilon (or v) prediction for ``latents`` at ``timestep`` under ``cond``.

    Inputs are cast to the UNet's parameter dtype, so a bf16 UNet works with fp32 latents and adapters (under
    autocast the cast is a no-op in effect).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        latents: B x 4 x h x w noisy latents.
        timestep: scalar or B-vector of scheduler timesteps.
        cond: the conditioning; B must equal the latents' batch.
        image_size: (H, W) of the decoded image, for SDXL time ids; defaults to the latents' size x 8 (the VAE
            downsampling of SD 1.5 / SDXL).
        dtype: the UNet's compute dtype if the caller knows it. Default ``unet.dtype``, which diffusers computes by
            walking every submodule (milliseconds for SD 1.5's UNet): loops should look it up once and pass it.
    """
    if cond.batch_size != latents.shape[0]:
        raise ConditioningError(f"conditioning batch {cond.batch_size} != latents batch {latents.shape[0]}")
    dtype = dtype or unet.dtype
    hs = cond.encoder_hidden_states.to(dtype)
    added_cond_kwargs = None
    if unet.config.addition_embed_type == "text_time":
        if cond.pooled is None:
            raise ConditioningError("this SDXL-style UNet (addition_embed_type='text_time') needs Conditioning.pooled")
        expected = unet_pooled_dim(unet)
        if cond.pooled.shape[-1] != expected:
            raise ConditioningError(f"pooled width {cond.pooled.shape[-1]} != the UNet's expected {expected}")
        if image_size is None:
            image_size = (latents.shape[-2] * 8, latents.shape[-1] * 8)
        time_ids = sdxl_time_ids(latents.shape[0], image_size, device=latents.device, dtype=dtype)
        added_cond_kwargs = {"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids}
    elif cond.pooled is not None:
        raise ConditioningError("Conditioning.pooled is set but the UNet takes no pooled vector (SD 1.5 layout)")
    return unet(
        latents.to(dtype),
        timestep,
        encoder_hidden_states=hs,
        encoder_attention_mask=cond.attention_mask,
        added_cond_kwargs=added_cond_kwargs,
        return_dict=False,
    )[0]
