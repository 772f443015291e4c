"""The one sampling loop with a gradient window (DRaFT-K / ReFL), the VAE helpers and the denoising loss.

ICG (Bian et al., EMNLP 2025) aligns its adapter by back-propagating differentiable rewards through the sampler.
Following DRaFT (Clark et al., ICLR 2024), ``grad_window="last_k"`` keeps the graph of the last K of T steps only;
following ReFL (ImageReward, Xu et al., NeurIPS 2023), ``grad_window="random_step"`` runs without gradient up to a
random step in a range, takes one step with gradient and returns that step's predicted x0. Steps outside the window
run under ``torch.no_grad()`` on detached latents, so activation memory depends on K, not on T. Gradient
checkpointing (as in AlignProp) recomputes the denoiser inside the window during backward.

The loop never branches on the base family: what differs (the strength rounding of a reference-guided chain, the
timesteps, the first latents, the guided denoiser call, the scheduler step, the training loss) is asked of the
components (``icg.diffusion.bases.base.BaseComponents``). For SD 1.5 / SDXL that is diffusers' ``DDIMScheduler`` as
its pipelines use it, matching ``StableDiffusion(XL)Pipeline`` for the same components, conditioning, noise and steps
(tests/diffusion/test_diffusion.py); for Flux the flow-matching Euler chain of ``FluxPipeline``
(tests/diffusion/test_flux.py).
Pipelines are for comparisons only.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from icg.diffusion.bases.base import BaseComponents, Predictor, autocast_for, randint_on
from icg.diffusion.conditioning import Conditioning
from icg.errors import ConfigError

GradWindow = Literal["none", "last_k", "random_step"]
GRAD_WINDOWS = ("none", "last_k", "random_step")


def encode(
    vae: nn.Module, images_01: Tensor, generator: torch.Generator | list[torch.Generator] | str | None = None
) -> Tensor:
    """Images in [0, 1] (B x 3 x H x W) to scaled VAE latents, as diffusers trainers and img2img pipelines do.

    Args:
        vae: the frozen ``AutoencoderKL``.
        images_01: the images.
        generator: draws the posterior sample (one generator, or one per image); ``"mode"`` takes the posterior's
            mode instead (deterministic).
    """
    x = (images_01 * 2 - 1).to(vae.dtype)
    posterior = vae.encode(x).latent_dist
    z = posterior.mode() if isinstance(generator, str) and generator == "mode" else posterior.sample(generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode(vae: nn.Module, latents: Tensor) -> Tensor:
    """Scaled latents to images in [0, 1], exactly as ``StableDiffusionPipeline`` + ``postprocess`` (clamped)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / vae.config.scaling_factor + shift
    image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1)


def gradient_steps(
    num_steps: int,
    grad_window: GradWindow,
    k: int = 1,
    random_step_range: tuple[int, int] = (30, 39),
    generator: torch.Generator | None = None,
) -> list[int]:
    """Indices (0-based, in sampling order) of the steps that run with gradient.

    Args:
        num_steps: T, the number of DDIM steps.
        grad_window: ``none`` (no step), ``last_k`` (steps T-K .. T-1) or ``random_step`` (one step drawn
            uniformly from ``random_step_range``, both ends included).
        k: K for ``last_k``; 1 <= K <= T (K = T back-propagates through the whole chain, AlignProp-style).
        random_step_range: inclusive step-index range for ``random_step`` (ReFL: (30, 39) of 40 steps).
        generator: draws the random step.
    """
    if grad_window == "none":
        return []
    if grad_window == "last_k":
        if not 1 <= k <= num_steps:
            raise ConfigError(f"grad_window='last_k' needs 1 <= k <= num_steps={num_steps}, got k={k}")
        return list(range(num_steps - k, num_steps))
    if grad_window == "random_step":
        lo, hi = (int(v) for v in random_step_range)
        if not 0 <= lo <= hi < num_steps:
            raise ConfigError(
                f"random_step_range={tuple(random_step_range)} must satisfy 0 <= low <= high < num_steps={num_steps}"
            )
        return [int(randint_on(lo, hi + 1, (1,), generator, "cpu").item())]
    raise ConfigError(f"grad_window must be one of {GRAD_WINDOWS}, got {grad_window!r}")


def _window(
    grad_window: GradWindow,
    k: int,
    random_step_range: tuple[int, int],
    x0_shortcut: bool | None,
    run_steps: int,
    num_steps: int,
    strength: float,
) -> tuple[list[int] | None, bool]:
    """The gradient steps (None: ``random_step``, drawn later from the generator) and the resolved ``x0_shortcut``."""
    if grad_window != "random_step":
        return gradient_steps(run_steps, grad_window, k), bool(x0_shortcut)
    # Validated now, drawn after the initial noise so that the noise matches the pipeline's for one generator.
    lo, hi = random_step_range
    if not 0 <= lo <= hi < run_steps:
        raise ValueError(
            f"random_step_range={tuple(random_step_range)} must satisfy 0 <= low <= high < {run_steps}, the "
            f"number of steps that run (num_steps={num_steps}, strength={strength})"
        )
    if x0_shortcut is False:
        raise ValueError(
            "grad_window='random_step' returns the predicted x0 of its gradient step (ReFL); x0_shortcut=False "
            "would finish the chain without gradient. Use grad_window='last_k' to back-propagate to the end."
        )
    return None, True


def strength_in_range(strength: float) -> bool:
    """Whether ``strength`` is a usable img2img strength: a finite number in (0, 1] (1: from pure noise).

    The one test of the range, shared by the samplers, stage 3's config, ``icg generate`` and export loading.
    """
    return isinstance(strength, numbers.Real) and not isinstance(strength, bool) and 0.0 < strength <= 1.0


def user_guidance_in_range(scale: float) -> bool:
    """Whether ``scale`` is a usable user-guidance scale: a finite number >= 0 (1: off).

    The one test of the range, shared by the sampler, the export's settings, ``icg generate`` and the explorer.
    """
    return isinstance(scale, numbers.Real) and not isinstance(scale, bool) and math.isfinite(scale) and scale >= 0.0


def guided_predictor(
    components: BaseComponents,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
    user_negative: Conditioning | None = None,
    user_guidance: float = 1.0,
    **kwargs,
) -> Predictor:
    """The denoiser call of one sampling run: classifier-free guidance, and on top ICG's user guidance.

    ``user_guidance == 1`` is the family's own guided call, untouched (no extra row). Otherwise the prediction moves
    from the pairs' conditioning with the cold-start user (``user_negative``: same title, same reference, B rows)
    towards the user's, and classifier-free guidance then applies to that guided prediction::

        eps_s = eps(negative) + s * (eps(cond) - eps(negative))
        eps   = eps_s                                          guidance_scale <= 1
        eps   = eps(uncond) + g * (eps_s - eps(uncond))        guidance_scale g > 1

    One denoiser call on the rows ``[uncond, negative, cond]`` (``uncond`` only when g > 1): 2 rows per image
    (3 with classifier-free guidance) instead of 1 (2). With g <= 1 this is the family's classifier-free guidance with
    ``user_negative`` as the negative and ``s`` as the scale, and for an SD-family UNet the same arithmetic.

    Args:
        components: the frozen denoiser, VAE and scheduler of any family.
        cond: B rows.
        uncond: classifier-free guidance's negative, B rows (used when ``guidance_scale > 1``).
        guidance_scale: classifier-free guidance weight.
        user_negative: B rows, the same pairs with the cold-start user; required when ``user_guidance != 1``.
        user_guidance: s; 1 is off, 0 draws the cold-start user's cover, > 1 more of the user.
        kwargs: the family predictor's keywords (``image_size``, ``gradient_checkpointing``, ``autocast``).
    """
    if not user_guidance_in_range(user_guidance):
        raise ValueError(f"user_guidance must be a finite number >= 0 (1: off), got {user_guidance}")
    if user_guidance == 1.0:
        return components.predictor(cond, uncond if guidance_scale > 1.0 else None, guidance_scale, **kwargs)
    if user_negative is None or user_negative.batch_size != cond.batch_size:
        got = "none" if user_negative is None else f"{user_negative.batch_size} rows"
        raise ValueError(f"user_guidance={user_guidance} needs `user_negative` with {cond.batch_size} rows, got {got}")
    user_negative = user_negative.to(cond.encoder_hidden_states.device)
    parts = ([uncond] if guidance_scale > 1.0 else []) + [user_negative, cond]
    raw = components.predictor(Conditioning.cat(parts), None, 1.0, **kwargs)  # one call, no guidance of its own

    def predict(latents: Tensor, t: Tensor, with_grad: bool) -> Tensor:
        eps = raw(torch.cat([latents] * len(parts)), t, with_grad).chunk(len(parts))
        guided = eps[-2] + user_guidance * (eps[-1] - eps[-2])
        return eps[0] + guidance_scale * (guided - eps[0]) if guidance_scale > 1.0 else guided

    return predict


def sample(  # noqa: C901, PLR0913  # options to move into a dataclass (STYLE habit 20; issue 22)
    components: BaseComponents,
    cond: Conditioning,
    *,
    num_steps: int = 50,
    guidance_scale: float = 1.0,
    uncond: Conditioning | None = None,
    user_guidance: float = 1.0,
    user_negative: Conditioning | None = None,
    grad_window: GradWindow = "none",
    k: int = 1,
    random_step_range: tuple[int, int] = (30, 39),
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
    """Sample images with the base family's chain, keeping the autograd graph only inside the gradient window.

    SD 1.5 / SDXL components run DDIM (``DDIMScheduler``), Flux components the flow-matching Euler chain of
    ``FluxPipeline``; the family answers what differs (``icg.diffusion.bases.base.BaseComponents``). For Flux:
    ``guidance_scale`` is true classifier-free guidance (``FluxPipeline``'s ``true_cfg_scale``; FLUX.1-dev's distilled
    guidance is ``components.guidance``), ``eta`` must be 0, a reference-guided chain runs
    ``T - int(T - T * strength)`` steps (``FluxImg2ImgPipeline``'s rounding) and image sides are multiples of
    ``components.pixel_multiple`` (the VAE factor x the 2 x 2 latent patches).

    With ``strength < 1`` the chain is reference-guided (SDEdit, Meng et al. 2022; diffusers' img2img pipelines):
    it starts from the reference cover's latent noised to the level of step ``T - int(T * strength)`` and runs only the
    remaining ``int(T * strength)`` steps, so the item's layout is kept and the conditioning decides the rest.

    Args:
        components: the frozen denoiser, VAE and scheduler of any family.
        cond: the conditioning (its gradient is what alignment trains); B rows give B images.
        num_steps: T, sampling steps.
        guidance_scale: classifier-free guidance weight; > 1 enables CFG (as in diffusers' pipelines).
        uncond: the unconditional conditioning for CFG (1 row or B rows); required when ``guidance_scale > 1``.
        user_guidance: ICG's user guidance s >= 0 (1: off, bit for bit the chain without it); see
            :func:`guided_predictor` for how it composes with ``guidance_scale``.
        user_negative: B rows, the same pairs with the cold-start user; required when ``user_guidance != 1``.
        grad_window: ``none`` | ``last_k`` (DRaFT-K) | ``random_step`` (ReFL); see :func:`gradient_steps`.
        k: K of ``last_k``.
        random_step_range: inclusive index range of the single gradient step of ``random_step``.
        x0_shortcut: stop after the last gradient step (the last step if there is none) and return its predicted
            x0 instead of finishing the chain. None means the mode's default: True for ``random_step`` (ReFL: the
            later steps could carry no gradient), False otherwise. ``random_step`` with False is an error.
        gradient_checkpointing: recompute the denoiser inside the window during backward (same gradient, less memory).
        eta: DDIM eta (0 = deterministic).
        generator: draws the reference's VAE posterior sample (reference-guided only), the initial noise
            (``diffusers.utils.torch_utils.randn_tensor``), the random step and any DDIM noise, in that order, as
            diffusers' pipelines do. A list of B generators gives each image its own stream (per-pair seeds: the
            result of a pair does not depend on the batch it is in), exactly as the pipelines treat such a list.
        latents: initial noise B x C x h x w instead of drawing it (reference-guided: the noise added to the
            reference's latent).
        reference: B x 3 x H x W reference images in [0, 1] that a reference-guided chain starts from.
        strength: 1 starts from pure noise; 0 < strength < 1 starts from the reference noised to that level and runs
            ``int(T * strength)`` steps. Gradient-window step indices count the steps that run.
        height: image height in pixels (default: the base's configured size); must be a multiple of the VAE factor.
        width: image width in pixels (default as ``height``).
        decode: return decoded images in [0, 1] (B x 3 x H x W); False returns the final latents.
        autocast_dtype: autocast dtype around denoiser and VAE calls; ``"auto"`` is bf16 on CUDA and off elsewhere.

    Returns:
        B x 3 x H x W images in [0, 1], or B x C x h x w latents when ``decode=False``.
    """
    components.check_sampler_options(eta)
    if not strength_in_range(strength):
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    t_start = components.first_step(num_steps, strength)  # the pipeline's img2img get_timesteps
    run_steps = num_steps - t_start  # the steps that run
    if run_steps < 1:
        raise ValueError(f"strength={strength} with num_steps={num_steps} runs no step; raise either")
    if strength < 1.0 and reference is None:
        raise ValueError("strength < 1 (reference-guided) needs `reference`, the images the chain starts from")
    window = _window(grad_window, k, random_step_range, x0_shortcut, run_steps, num_steps, strength)
    steps_with_grad, x0_shortcut = window
    if guidance_scale > 1.0 and uncond is None:
        raise ValueError("guidance_scale > 1 needs `uncond` (the adapter's unconditional Conditioning)")

    vae = components.vae
    device = components.device
    factor = components.vae_scale_factor
    height = height or components.default_image_size
    width = width or height
    components.check_image_size(height, width)
    batch = cond.batch_size
    cond = cond.to(device)

    shape = (batch, components.latent_channels, height // factor, width // factor)
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"a list of generators needs one per image: got {len(generator)} for {batch} images")
    if strength < 1.0 and (reference.shape[0] != batch or tuple(reference.shape[-2:]) != (height, width)):
        raise ValueError(f"reference must be {batch} x 3 x {height} x {width}, got {tuple(reference.shape)}")
    schedule = components.schedule(num_steps, t_start, shape[-2:], reference_guided=strength < 1.0)
    start_latents = None
    if strength < 1.0:
        with torch.no_grad(), autocast_for(device, autocast_dtype):
            posterior = generator if generator is not None or latents is None else "mode"
            start_latents = encode(vae, reference.to(device), posterior).float()
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    latents = components.start_latents(latents.to(device=device, dtype=torch.float32), start_latents, schedule)
    if steps_with_grad is None:
        first = generator[0] if isinstance(generator, list) else generator
        steps_with_grad = gradient_steps(run_steps, grad_window, k, random_step_range, first)

    if guidance_scale > 1.0:
        uncond = uncond.to(device)
        if uncond.batch_size == 1 and batch > 1:
            uncond = uncond.repeat(batch)
    autocast = autocast_for(device, autocast_dtype)
    predict = guided_predictor(
        components, cond, uncond, guidance_scale, user_negative, user_guidance, image_size=(height, width),
        gradient_checkpointing=gradient_checkpointing, autocast=autocast,
    )  # fmt: skip

    timesteps = schedule.timesteps
    last = max(steps_with_grad) if (x0_shortcut and steps_with_grad) else len(timesteps) - 1
    grad_on = torch.is_grad_enabled()
    pred_x0 = latents
    for i, t in enumerate(timesteps[: last + 1]):
        with_grad = grad_on and i in steps_with_grad
        if not with_grad:
            latents = latents.detach()  # nothing before the window keeps a graph
        with torch.set_grad_enabled(with_grad):
            model_output = predict(latents, t, with_grad)
            latents, pred_x0 = components.step(schedule, i, t, model_output, latents, eta, generator)

    final = pred_x0 if x0_shortcut else latents
    if not decode:
        return final
    with autocast:
        return decode_latents(vae, final)


# ``decode`` is also a keyword argument of ``sample``; keep the helper reachable under a second name there.
decode_latents = decode


def denoising_loss(
    components: BaseComponents,
    images_01: Tensor,
    cond: Conditioning,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | str | None = "auto",
) -> Tensor:
    """Standard diffusion loss on real images: the regularizer that guards alignment against reward hacking.

    Encodes the images with the frozen VAE, draws the noise and returns the family's training loss
    (``BaseComponents.loss``): SD 1.5 / SDXL noise at a uniformly drawn training timestep and take the MSE between the
    UNet's prediction under ``cond`` and its target (epsilon, or v for v-prediction schedulers); Flux draws sigma ~
    U(0, 1) and takes the MSE between the velocity and ``noise - x_0``.

    Args:
        components: the frozen denoiser, VAE and scheduler of any family.
        images_01: B x 3 x H x W reference images in [0, 1].
        cond: conditioning for those images (B rows); gradient flows into it.
        generator: draws the VAE posterior sample, the noise and the timesteps (Flux: the sigmas).
        autocast_dtype: as in :func:`sample`.
    """
    device = components.device
    images_01 = images_01.to(device)
    autocast = autocast_for(device, autocast_dtype)
    with torch.no_grad(), autocast:
        z = encode(components.vae, images_01, generator).float()
    noise = randn_tensor(z.shape, generator=generator, device=device, dtype=z.dtype)
    return components.loss(z, noise, cond, generator, autocast, tuple(images_01.shape[-2:]))
