"""The conditioning contract between the ICG adapter and a stock diffusers denoiser, and the wrappers that call it.

ICG (Bian et al., EMNLP 2025) feeds a personalized context into a frozen, stock diffusion model through a small
adapter. The adapter's output is a :class:`Conditioning`: a token stream (SD 1.5 cross-attention: 768-d; SDXL: 2048-d;
Flux: 4096-d, T5's width), an optional key mask and, for SDXL and Flux, the pooled vector (SDXL: 1280-d; Flux: 768-d,
CLIP's). :func:`predict_noise` is the only place that maps this contract onto ``UNet2DConditionModel.__call__``
(modelled on sgm's ``GeneralConditioner`` / ``wrappers.py``) and :func:`predict_flow` its counterpart for
``FluxTransformer2DModel``, so the samplers, the denoising regularizer and any inference comparison see exactly the
same denoiser call. Diffusers code is never edited.
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

    def __getitem__(self, rows: slice | Tensor) -> Conditioning:
        """The rows ``rows`` of the batch (a slice or an index tensor)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Conditioning(pick(self.encoder_hidden_states), pick(self.attention_mask), pick(self.pooled))

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


def is_flux(denoiser: nn.Module) -> bool:
    """True for a Flux-style transformer (``FluxTransformer2DModel``: token stream + pooled vector, no mask)."""
    return hasattr(denoiser.config, "joint_attention_dim")


def unet_cross_attention_dim(unet: nn.Module) -> int:
    """The width of the token stream the denoiser reads: a ``UNet2DConditionModel``'s single cross-attention width
    (a per-block list must be uniform), or a Flux transformer's ``joint_attention_dim``."""
    if is_flux(unet):
        return int(unet.config.joint_attention_dim)
    dim = unet.config.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        if len(set(dim)) != 1:
            raise ConditioningError(f"UNets with per-block cross_attention_dim {list(dim)} are not supported")
        dim = dim[0]
    return int(dim)


def unet_pooled_dim(unet: nn.Module) -> int | None:
    """The pooled-vector width the denoiser expects: SDXL-style UNets (``text_time`` added embedding) and Flux
    transformers (``pooled_projection_dim``); None for SD 1.5 UNets."""
    cfg = unet.config
    if is_flux(unet):
        return int(cfg.pooled_projection_dim)
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
    check_pooled: bool = True,
) -> None:
    """Fail early, naming both config keys, when the adapter's output width does not fit the loaded denoiser.

    Args:
        cond_dim: the adapter's token-stream (cross-attention) output width.
        unet: the loaded ``UNet2DConditionModel`` or ``FluxTransformer2DModel``.
        adapter_key: config key that sets ``cond_dim`` (e.g. ``model.adapter.init_args.out_dim``).
        unet_key: config key that chose the denoiser (e.g. ``model.diffusion.path``).
        pooled_dim: the pooled width given to the denoiser, or None if nothing gives one.
        pooled_key: config key that sets ``pooled_dim``; defaults to ``adapter_key``.
        check_pooled: False checks the token stream only.
    """
    flux = is_flux(unet)
    what = "Flux transformer" if flux else "UNet"
    width_name = "joint_attention_dim (its token stream)" if flux else "cross_attention_dim"
    unet_dim = unet_cross_attention_dim(unet)
    if int(cond_dim) != unet_dim:
        raise ConditioningError(
            f"{'token-stream' if flux else 'cross-attention'} width mismatch: {adapter_key}={cond_dim} but the {what} "
            f"chosen by {unet_key} has {width_name}={unet_dim}; set {adapter_key} to {unet_dim} or pick a matching "
            f"{what}"
        )
    if not check_pooled:
        return
    expected_pooled = unet_pooled_dim(unet)
    pooled_key = pooled_key or adapter_key
    if expected_pooled is not None and pooled_dim != expected_pooled:
        kind = "Flux transformer (pooled_projection_dim)" if flux else "SDXL-style UNet"
        raise ConditioningError(
            f"pooled width mismatch: {pooled_key}={pooled_dim} but the {kind} chosen by {unet_key} expects a "
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


def pack_latents(latents: Tensor) -> Tensor:
    """B x C x h x w latents -> B x (h/2 * w/2) x 4C tokens of 2 x 2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ConditioningError(f"Flux latents need even sides (2 x 2 patches), got {h} x {w}")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack_latents` for latents of ``height`` x ``width`` cells."""
    b, _, channels = tokens.shape
    x = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def flux_image_ids(height: int, width: int, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """(h/2 * w/2) x 3 rotary positions (0, row, column) of the packed latent tokens, as ``FluxPipeline`` makes them."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def predict_flow(
    transformer: nn.Module,
    latents: Tensor,
    timestep: Tensor,
    cond: Conditioning,
    *,
    guidance: float | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The one Flux transformer call: the flow-matching velocity for ``latents`` at ``timestep`` under ``cond``.

    The Flux counterpart of :func:`predict_noise`, modelled on ``FluxPipeline.__call__``: latents are packed into 2 x 2
    patch tokens with their rotary positions, the token stream gets all-zero text positions, the pooled vector goes
    to ``pooled_projections`` and, for guidance-distilled transformers (FLUX.1-dev), ``guidance`` is embedded.

    Args:
        transformer: a diffusers ``FluxTransformer2DModel``.
        latents: B x C x h x w latents (unpacked; h and w even).
        timestep: the scheduler's timestep (0..1000 scale), a scalar tensor or a B-vector.
        cond: the conditioning: token stream B x L x ``joint_attention_dim`` and pooled B x ``pooled_projection_dim``.
            Flux attends to every token, so a mask that hides any token is an error.
        guidance: the embedded guidance scale of a guidance-distilled transformer (FluxPipeline's
            ``guidance_scale``); ignored by transformers without a guidance embedding.
        dtype: the transformer's compute dtype if known (default ``transformer.dtype``).
    """
    b, _, h, w = latents.shape
    if cond.batch_size != b:
        raise ConditioningError(f"conditioning batch {cond.batch_size} != latents batch {b}")
    if cond.pooled is None:
        raise ConditioningError("a Flux transformer needs Conditioning.pooled (its pooled_projections)")
    expected = unet_pooled_dim(transformer)
    if cond.pooled.shape[-1] != expected:
        raise ConditioningError(f"pooled width {cond.pooled.shape[-1]} != the Flux transformer's expected {expected}")
    if cond.attention_mask is not None and not bool(cond.attention_mask.bool().all()):
        raise ConditioningError("a Flux transformer attends to every token: its conditioning cannot mask padding")
    dtype = dtype or transformer.dtype
    guidance_tensor = None
    if transformer.config.guidance_embeds:
        if guidance is None:
            raise ConditioningError("this Flux transformer is guidance-distilled (guidance_embeds): pass guidance")
        guidance_tensor = torch.full([1], float(guidance), device=latents.device, dtype=torch.float32).expand(b)
    timestep = torch.as_tensor(timestep, device=latents.device)
    timestep = timestep.expand(b) if timestep.ndim == 0 else timestep
    hs = cond.encoder_hidden_states.to(dtype)
    out = transformer(
        hidden_states=pack_latents(latents).to(dtype),
        timestep=timestep.to(dtype) / 1000,
        guidance=guidance_tensor,
        pooled_projections=cond.pooled.to(dtype),
        encoder_hidden_states=hs,
        txt_ids=torch.zeros(hs.shape[1], 3, device=latents.device, dtype=dtype),
        img_ids=flux_image_ids(h, w, latents.device, dtype),
        return_dict=False,
    )[0]
    return unpack_latents(out, h, w)
