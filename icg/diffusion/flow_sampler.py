"""The flow-matching sampling loop for Flux, with the same gradient windows as the DDIM loop, and its training loss.

ICG (Bian et al., EMNLP 2025) aligns its adapter on Flux as on SD 1.5: rewards are back-propagated through the last
K Euler steps (DRaFT-K, Clark et al. 2024) or through ReFL's single random step (Xu et al. 2023), steps outside the
window run under ``torch.no_grad()`` on detached latents, and gradient checkpointing recomputes the transformer
inside the window. What changes is the chain: a rectified flow ``x_t = (1 - sigma) x_0 + sigma * noise`` integrated
with ``FlowMatchEulerDiscreteScheduler`` from sigma = 1 to 0, the transformer predicting the velocity
``v = noise - x_0``, so a step's predicted x0 is ``x_t - sigma * v`` (ReFL's x0 shortcut).

:func:`sample_flow` follows ``FluxPipeline.__call__`` (and ``FluxImg2ImgPipeline`` for reference-guided chains)
step for step: the same sigmas (``linspace(1, 1/T, T)`` shifted by the image-size-dependent ``mu``), noise drawn
with ``randn_tensor`` in the unpacked latent shape, true classifier-free guidance as two transformer calls
(``true_cfg_scale``), and the embedded guidance of FLUX.1-dev. tests/test_flux.py checks it against the pipelines.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from icg.diffusion.conditioning import Conditioning, predict_flow
from icg.diffusion.flux import FluxComponents
from icg.diffusion.sampler import (
    GradWindow,
    _autocast,
    _window,
    decode,
    encode,
    gradient_steps,
    strength_in_range,
)


def calculate_shift(seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """FLUX's resolution-dependent shift ``mu``: linear in the number of image tokens (``FluxPipeline``'s formula;
    restated here so that sampling does not import the pipeline module and its text-encoder dependencies)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * slope + base_shift - slope * base_seq_len


def set_flow_timesteps(components: FluxComponents, num_steps: int, latent_size: tuple[int, int]) -> Tensor:
    """Set the scheduler's sigmas for ``num_steps`` at this latent size, as ``FluxPipeline`` does; its timesteps."""
    scheduler = components.scheduler
    cfg = scheduler.config
    image_seq_len = (latent_size[0] // 2) * (latent_size[1] // 2)
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    if cfg.get("use_flow_sigmas", False):
        scheduler.set_timesteps(num_steps, device=components.device, mu=mu)
    else:
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        scheduler.set_timesteps(sigmas=sigmas, device=components.device, mu=mu)
    return scheduler.timesteps


def sample_flow(
    components: FluxComponents,
    cond: Conditioning,
    *,
    num_steps: int = 28,
    guidance_scale: float = 1.0,
    uncond: Conditioning | None = None,
    grad_window: GradWindow = "none",
    k: int = 1,
    random_step_range: tuple[int, int] = (20, 27),
    x0_shortcut: bool | None = None,
    gradient_checkpointing: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: Tensor | None = None,
    reference: Tensor | None = None,
    strength: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    decode: bool = True,
    autocast_dtype: torch.dtype | str | None = "auto",
) -> Tensor:
    """Sample images with Flux's flow-matching Euler chain, keeping the autograd graph only in the gradient window.

    Arguments mean what they mean for ``icg.diffusion.sampler.sample`` (``sample`` calls this for Flux components);
    the differences:

    Args:
        guidance_scale: true classifier-free guidance (``FluxPipeline``'s ``true_cfg_scale``): > 1 runs the
            transformer on ``uncond`` too and extrapolates. FLUX.1-dev's distilled guidance is
            ``components.guidance``.
        eta: must be 0 (a DDIM parameter; the Euler flow sampler is deterministic given the noise).
        strength: reference-guided chains run ``T - int(T - T * strength)`` steps, as ``FluxImg2ImgPipeline``
            (its rounding differs from SD's img2img).
        height: a multiple of ``components.pixel_multiple`` (the VAE factor x the 2 x 2 latent patches).
    """
    if eta:
        raise ValueError(f"eta={eta}: Flux's flow-matching Euler sampler has no eta (a DDIM parameter); use 0")
    if not strength_in_range(strength):
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    t_start = int(max(num_steps - num_steps * strength, 0))  # FluxImg2ImgPipeline.get_timesteps
    run_steps = num_steps - t_start
    if run_steps < 1:
        raise ValueError(f"strength={strength} with num_steps={num_steps} runs no step; raise either")
    if strength < 1.0 and reference is None:
        raise ValueError("strength < 1 (reference-guided) needs `reference`, the images the chain starts from")
    window = _window(grad_window, k, random_step_range, x0_shortcut, run_steps, num_steps, strength)
    steps_with_grad, x0_shortcut = window
    if guidance_scale > 1.0 and uncond is None:
        raise ValueError("guidance_scale > 1 needs `uncond` (the adapter's unconditional Conditioning)")

    transformer, vae, scheduler = components.transformer, components.vae, components.scheduler
    device = components.device
    factor, multiple = components.vae_scale_factor, components.pixel_multiple
    height = height or components.default_image_size
    width = width or height
    if height % multiple or width % multiple:
        raise ValueError(f"Flux image sides must be multiples of {multiple} (VAE factor x 2), got {height} x {width}")
    batch = cond.batch_size
    cond = cond.to(device)
    shape = (batch, components.latent_channels, height // factor, width // factor)
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"a list of generators needs one per image: got {len(generator)} for {batch} images")

    timesteps = set_flow_timesteps(components, num_steps, shape[-2:])
    sigmas = scheduler.sigmas.to(device)
    begin = t_start * scheduler.order
    timesteps, sigmas = timesteps[begin:], sigmas[begin:]
    scheduler.set_begin_index(begin)
    start_latents = None
    if strength < 1.0:
        if reference.shape[0] != batch or tuple(reference.shape[-2:]) != (height, width):
            raise ValueError(f"reference must be {batch} x 3 x {height} x {width}, got {tuple(reference.shape)}")
        with torch.no_grad(), _autocast(device, autocast_dtype):
            posterior = generator if generator is not None or latents is None else "mode"
            start_latents = encode(vae, reference.to(device), posterior).float()
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    latents = latents.to(device=device, dtype=torch.float32)
    if start_latents is not None:  # the reference's latent moved along the flow to the first sigma that runs
        latents = scheduler.scale_noise(start_latents, timesteps[:1].repeat(batch), latents)
    if steps_with_grad is None:
        first = generator[0] if isinstance(generator, list) else generator
        steps_with_grad = gradient_steps(run_steps, grad_window, k, random_step_range, first)

    do_cfg = guidance_scale > 1.0
    if do_cfg:
        uncond = uncond.to(device)
        if uncond.batch_size == 1 and batch > 1:
            uncond = uncond.repeat(batch)
    last = max(steps_with_grad) if (x0_shortcut and steps_with_grad) else len(timesteps) - 1
    dtype = transformer.dtype  # diffusers walks all submodules for this: once per call, not per step
    grad_on = torch.is_grad_enabled()
    autocast = _autocast(device, autocast_dtype)
    guidance = components.guidance

    def velocity(x: Tensor, t: Tensor, c: Conditioning, with_grad: bool) -> Tensor:
        with autocast:
            if with_grad and gradient_checkpointing:
                return checkpoint(predict_flow, transformer, x, t, c, guidance=guidance, dtype=dtype,
                                  use_reentrant=False)  # fmt: skip
            return predict_flow(transformer, x, t, c, guidance=guidance, dtype=dtype)

    pred_x0 = latents
    for i, t in enumerate(timesteps[: last + 1]):
        with_grad = grad_on and i in steps_with_grad
        if not with_grad:
            latents = latents.detach()  # nothing before the window keeps a graph
        with torch.set_grad_enabled(with_grad):
            v = velocity(latents, t, cond, with_grad).float()  # scheduler arithmetic in fp32
            if do_cfg:  # FluxPipeline's true CFG: a second call on the negative, then extrapolate
                v_uncond = velocity(latents, t, uncond, with_grad).float()
                v = v_uncond + guidance_scale * (v - v_uncond)
            pred_x0 = latents - sigmas[i] * v
            latents = scheduler.step(v, t, latents, return_dict=False)[0]

    final = pred_x0 if x0_shortcut else latents
    if not decode:
        return final
    with autocast:
        return _decode(vae, final)


_decode = decode  # ``decode`` is also a keyword argument of ``sample_flow``


def flow_denoising_loss(
    components: FluxComponents,
    images_01: Tensor,
    cond: Conditioning,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | str | None = "auto",
) -> Tensor:
    """The rectified-flow training loss on real images: Flux's counterpart of ``sampler.denoising_loss``.

    Encodes the images with the frozen VAE, draws sigma ~ U(0, 1) and noise per image, forms ``x_t = (1 - sigma) x_0
    + sigma * noise`` and returns the MSE between the transformer's velocity under ``cond`` and ``noise - x_0``
    (uniform sigmas, without the sampling schedule's shift: a regularizer, not a pre-training recipe).
    """
    transformer, vae = components.transformer, components.vae
    device = components.device
    images_01 = images_01.to(device)
    autocast = _autocast(device, autocast_dtype)
    with torch.no_grad(), autocast:
        z = encode(vae, images_01, generator).float()
    noise = randn_tensor(z.shape, generator=generator, device=device, dtype=z.dtype)
    gen_device = generator.device if generator is not None else device
    sigma = torch.rand(z.shape[0], generator=generator, device=gen_device).to(device)
    s = sigma.view(-1, 1, 1, 1)
    noisy = (1 - s) * z + s * noise
    with autocast:
        v = predict_flow(transformer, noisy, sigma * 1000, cond.to(device), guidance=components.guidance)
    return F.mse_loss(v.float(), noise - z)
