"""Flux as a stock, frozen base family: ``FluxTransformer2DModel``, its VAE, ``FlowMatchEulerDiscreteScheduler``.

ICG (Bian et al., EMNLP 2025) reports results on Flux beside SD 1.5. Flux is a flow-matching rectified-flow
transformer (MMDiT): it reads a token stream (T5-XXL's 4096-d states) and a pooled vector (CLIP-L's 768-d pooled
output) instead of a UNet's cross-attention, so the adapter targets ``joint_attention_dim`` and
``pooled_projection_dim``. :class:`FluxComponents` implements the same interface as the SD families
(``icg.diffusion.bases.base``), so stage 3, the sampler, the generator and the export treat all alike. Built from a
local diffusers Flux folder (``transformer/``, ``vae/``, ``scheduler/``), tiny from config for tests, or as
FLUX.1-dev's architecture with random weights for GPU benchmarks. Nothing is downloaded and no diffusers code is
edited.

The sampling hooks follow ``FluxPipeline.__call__`` (and ``FluxImg2ImgPipeline`` for reference-guided chains) step
for step: a rectified flow ``x_t = (1 - sigma) x_0 + sigma * noise`` integrated with ``FlowMatchEulerDiscreteScheduler``
from sigma = 1 to 0 with the same sigmas (``linspace(1, 1/T, T)`` shifted by the image-size-dependent ``mu``), the
transformer predicting the velocity ``v = noise - x_0`` (so a step's predicted x0 is ``x_t - sigma * v``, ReFL's x0
shortcut), true classifier-free guidance as two transformer calls (``true_cfg_scale``) and the embedded guidance of
FLUX.1-dev. tests/diffusion/test_flux.py checks it against the pipelines.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from icg.diffusion.bases.base import BaseComponents, Family, MissingComponentError, Predictor, Schedule, has_weights
from icg.diffusion.conditioning import Conditioning, predict_flow

log = logging.getLogger(__name__)

FLUX_MAX_LENGTH = 512  # FluxPipeline's default max_sequence_length

# FLUX.1-dev's scheduler_config.json: resolution-dependent shift of the sigmas.
FLUX_SCHEDULE = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
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


class FluxFamily(Family):
    """FLUX.1 (-dev, guidance-distilled, or -schnell): transformer, CLIP-L pooled + T5 token stream prompts."""

    name = "flux"
    denoiser_folder = "transformer"
    takes_max_length = True

    def load(self, path, config_key, torch_dtype=None, guidance=3.5) -> FluxComponents:
        return FluxComponents.from_pretrained_folder(
            path, config_key=config_key, torch_dtype=torch_dtype, guidance=guidance
        )

    def tiny(self, guidance: float = 3.5, **kwargs: Any) -> FluxComponents:
        return FluxComponents.tiny(**{"guidance": guidance, **kwargs})

    # ------------------------------------------------------------------------------------------------ title prompt
    def reads_text_encoder_2(self, architecture: str) -> bool:
        return "T5" in architecture or "t5" in architecture.split()

    def load_text_encoders(self, folder: Path, dtype: torch.dtype | None):
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

        kw = {"local_files_only": True} | ({"dtype": dtype} if dtype is not None else {})
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **kw)
        encoder_2 = T5EncoderModel.from_pretrained(folder / "text_encoder_2", **kw)
        tokenizer_2 = AutoTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
        return encoder, tokenizer, encoder_2, tokenizer_2

    def encode_prompt(self, prompt, titles: list[str]) -> Conditioning:
        # FluxPipeline.encode_prompt: CLIP pooled + T5 token stream
        ids = prompt.token_ids(prompt.tokenizer, titles, prompt.tokenizer.model_max_length)
        pooled = prompt.encoder(ids).pooler_output
        states = prompt.encoder_2(prompt.token_ids(prompt.tokenizer_2, titles, prompt.max_length))[0]
        return Conditioning(states, None, pooled)

    def prompt_width(self, prompt) -> int:
        return int(prompt.encoder_2.config.d_model)

    def prompt_pooled_dim(self, prompt) -> int | None:
        return int(prompt.encoder.config.hidden_size)

    # ------------------------------------------------------------------------------------------------ LoRA, pipelines
    def lora_loader(self) -> type:
        from diffusers.loaders import FluxLoraLoaderMixin

        return FluxLoraLoaderMixin

    def pipeline_name(self, mode: str) -> str:
        return "FluxImg2ImgPipeline" if mode == "img2img" else "FluxPipeline"


FLUX = FluxFamily()


@dataclass
class FluxComponents(BaseComponents):
    """The frozen Flux transformer, VAE and flow-matching scheduler that the sampler uses.

    Args:
        transformer: a diffusers ``FluxTransformer2DModel``.
        vae: a diffusers ``AutoencoderKL`` (Flux's has 16 latent channels, a scaling and a shift factor).
        scheduler: a ``FlowMatchEulerDiscreteScheduler``.
        guidance: the embedded guidance of a guidance-distilled transformer (FLUX.1-dev; ``FluxPipeline``'s
            ``guidance_scale``, 3.5 by default); unused by transformers without a guidance embedding (FLUX.1-schnell).
    """

    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    scheduler: FlowMatchEulerDiscreteScheduler
    guidance: float = 3.5

    family = FLUX

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def denoiser(self) -> FluxTransformer2DModel:
        """The network that predicts the flow (what a LoRA adapts)."""
        return self.transformer

    @property
    def pooled_dim(self) -> int:
        """The pooled vector's width (``pooled_projection_dim``; CLIP-L's 768 for FLUX.1)."""
        return int(super().pooled_dim)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the 2 x 2 latent patches."""
        return 2 * self.vae_scale_factor

    def pipeline_parts(self) -> dict:
        return dict(scheduler=self.scheduler, vae=self.vae, transformer=self.transformer, text_encoder=None,
                    tokenizer=None, text_encoder_2=None, tokenizer_2=None)  # fmt: skip

    def pipeline_guidance(self, guidance_scale: float) -> dict:
        # true CFG on ICG's negative; FLUX.1-dev's distilled guidance as the base model configures it
        return {"true_cfg_scale": guidance_scale, "guidance_scale": self.guidance}

    def pipeline_takes_size(self, img2img: bool) -> bool:
        return True  # FluxImg2ImgPipeline takes the size too

    # ----------------------------------------------------------------------------------------------- sampling hooks
    def check_sampler_options(self, eta: float) -> None:
        if eta:
            raise ValueError(f"eta={eta}: Flux's flow-matching Euler sampler has no eta (a DDIM parameter); use 0")

    def first_step(self, num_steps: int, strength: float) -> int:
        # FluxImg2ImgPipeline.get_timesteps (its rounding differs from SD's img2img)
        return int(max(num_steps - num_steps * strength, 0))

    def check_image_size(self, height: int, width: int) -> None:
        multiple = self.pixel_multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"Flux image sides must be multiples of {multiple} (VAE factor x 2), got {height} x {width}"
            )

    def schedule(self, num_steps: int, t_start: int, latent_size: tuple[int, int], reference_guided: bool) -> Schedule:
        scheduler = self.scheduler
        timesteps = set_flow_timesteps(self, num_steps, latent_size)
        sigmas = scheduler.sigmas.to(self.device)
        begin = t_start * scheduler.order
        scheduler.set_begin_index(begin)
        return Schedule(timesteps[begin:], sigmas[begin:])

    def start_latents(self, noise: Tensor, start: Tensor | None, schedule: Schedule) -> Tensor:
        if start is None:
            return noise
        # the reference's latent moved along the flow to the first sigma that runs
        return self.scheduler.scale_noise(start, schedule.timesteps[:1].repeat(noise.shape[0]), noise)

    def predictor(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float,
        *,
        image_size: tuple[int, int],
        gradient_checkpointing: bool,
        autocast: contextlib.AbstractContextManager,
    ) -> Predictor:
        """FluxPipeline's true CFG: a second transformer call on the negative, then extrapolate."""
        transformer, guidance = self.transformer, self.guidance
        dtype = transformer.dtype  # diffusers walks all submodules for this: once per call, not per step

        def velocity(x: Tensor, t: Tensor, c: Conditioning, with_grad: bool) -> Tensor:
            with autocast:
                if with_grad and gradient_checkpointing:
                    return checkpoint(predict_flow, transformer, x, t, c, guidance=guidance, dtype=dtype,
                                      use_reentrant=False)  # fmt: skip
                return predict_flow(transformer, x, t, c, guidance=guidance, dtype=dtype)

        def predict(latents: Tensor, t: Tensor, with_grad: bool) -> Tensor:
            v = velocity(latents, t, cond, with_grad).float()  # scheduler arithmetic in fp32
            if guidance_scale > 1.0:
                v_uncond = velocity(latents, t, uncond, with_grad).float()
                v = v_uncond + guidance_scale * (v - v_uncond)
            return v

        return predict

    def step(self, schedule, i, t, model_output, latents, eta, generator) -> tuple[Tensor, Tensor]:
        pred_x0 = latents - schedule.sigmas[i] * model_output
        return self.scheduler.step(model_output, t, latents, return_dict=False)[0], pred_x0

    def loss(self, z, noise, cond, generator, autocast, image_size) -> Tensor:
        """The rectified-flow loss: sigma ~ U(0, 1) per image, ``x_t = (1 - sigma) x_0 + sigma * noise``, MSE between
        the velocity under ``cond`` and ``noise - x_0`` (uniform sigmas, without the sampling schedule's shift: a
        regularizer, not a pre-training recipe)."""
        device = self.device
        gen_device = generator.device if generator is not None else device
        sigma = torch.rand(z.shape[0], generator=generator, device=gen_device).to(device)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * z + s * noise
        with autocast:
            v = predict_flow(self.transformer, noisy, sigma * 1000, cond.to(device), guidance=self.guidance)
        return F.mse_loss(v.float(), noise - z)

    # ------------------------------------------------------------------------------------------------ loaders
    @classmethod
    def from_pretrained_folder(
        cls,
        path: str | Path,
        config_key: str = "diffusion.path",
        torch_dtype: torch.dtype | None = None,
        weights_variant: str | None = None,
        guidance: float = 3.5,
    ) -> FluxComponents:
        """Load transformer, VAE and scheduler from a local diffusers Flux folder (FLUX.1-dev / -schnell layout).

        Args:
            path: the folder holding ``transformer/``, ``vae/`` and ``scheduler/``.
            config_key: the config key that gave ``path``, named in every error.
            torch_dtype: dtype for transformer and VAE (None keeps the stored dtype).
            weights_variant: diffusers' weight-file variant (e.g. ``"fp16"``).
            guidance: the embedded guidance (see the class).
        """
        root = Path(path).expanduser()
        if not root.is_dir():
            raise MissingComponentError(
                f"{config_key}={str(path)!r}: not a directory; expected a local diffusers Flux folder with "
                "transformer/, vae/ and scheduler/ subfolders (nothing is downloaded)"
            )
        if (root / "unet").is_dir() and not (root / "transformer").is_dir():
            raise MissingComponentError(
                f"{config_key}={str(path)!r} holds a UNet (unet/), not a Flux transformer, but variant='flux' was "
                "requested; set the variant to sd15 or sdxl"
            )
        expected = (("transformer", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json"))
        for sub, cfg in expected:
            if not (root / sub / cfg).is_file():
                raise MissingComponentError(f"{config_key}={str(path)!r}: missing {sub}/{cfg} (diffusers Flux layout)")
        for sub in ("transformer", "vae"):
            if not has_weights(root / sub):
                raise MissingComponentError(
                    f"{config_key}={str(path)!r}: missing weights {sub}/diffusion_pytorch_model*.safetensors (or .bin)"
                )
        kw = dict(local_files_only=True, torch_dtype=torch_dtype, variant=weights_variant)
        transformer = FluxTransformer2DModel.from_pretrained(root, subfolder="transformer", **kw)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
        log.info(
            "loaded Flux components from %s (joint_attention_dim=%s, pooled_projection_dim=%s, guidance_embeds=%s)",
            root,
            transformer.config.joint_attention_dim,
            transformer.config.pooled_projection_dim,
            transformer.config.guidance_embeds,
        )
        return cls(transformer, vae, scheduler, guidance)

    @classmethod
    def tiny(
        cls,
        cross_attention_dim: int = 32,
        pooled_dim: int = 32,
        sample_size: int = 32,
        guidance_embeds: bool = True,
        guidance: float = 3.5,
        seed: int = 0,
    ) -> FluxComponents:
        """A tiny random-weight Flux for tests (one double- and one single-stream block; ~0.1M parameters).

        The VAE downsamples by 2 and Flux packs 2 x 2 latent patches, so image sides are multiples of 4;
        ``sample_size`` is the default image side in pixels.

        Args:
            cross_attention_dim: ``joint_attention_dim``, the token stream's width (4096 mimics T5-XXL).
            pooled_dim: ``pooled_projection_dim`` (768 mimics CLIP-L).
            sample_size: default image side in pixels.
            guidance_embeds: a guidance-distilled transformer (FLUX.1-dev) or not (FLUX.1-schnell).
            guidance: the embedded guidance.
            seed: seed of the random initialization.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = FluxTransformer2DModel(
                patch_size=1,
                in_channels=16,  # 4 latent channels x 2 x 2 patches
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=cross_attention_dim,
                pooled_projection_dim=pooled_dim,
                guidance_embeds=guidance_embeds,
                axes_dims_rope=(4, 6, 6),
            )
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                block_out_channels=(32, 64),
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                latent_channels=4,
                layers_per_block=1,
                norm_num_groups=32,
                sample_size=sample_size,
                scaling_factor=0.3611,
                shift_factor=0.1159,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
        return cls(transformer, vae, FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULE), guidance)

    @classmethod
    def flux_architecture(cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
        """FLUX.1-dev's transformer (12B) and VAE (84M) architecture with random weights, built on ``device``.

        For GPU benchmarks only: same shapes and FLOPs as the real checkpoint, no weights needed. Built directly in
        ``dtype`` (fp32 would need 48 GB for the transformer alone).
        """
        previous = torch.get_default_dtype()
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            torch.set_default_dtype(dtype)
            try:
                transformer = FluxTransformer2DModel(guidance_embeds=True)  # defaults are FLUX.1's blocks
                vae = AutoencoderKL(
                    block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=2,
                    latent_channels=16,
                    sample_size=1024,
                    scaling_factor=0.3611,
                    shift_factor=0.1159,
                    use_quant_conv=False,
                    use_post_quant_conv=False,
                )
            finally:
                torch.set_default_dtype(previous)
        return cls(transformer, vae, FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULE))
