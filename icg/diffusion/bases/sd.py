"""The Stable Diffusion families, SD 1.5 (and its fine-tunes) and SDXL: UNet, VAE, DDIM scheduler, CLIP prompts.

ICG (Bian et al., EMNLP 2025) keeps the diffusion model stock and frozen so the trained adapter is plug-and-play on
common checkpoints. :class:`DiffusionComponents` loads the three parts alignment needs from a local diffusers folder
in the SD 1.5 or SDXL layout (``unet/``, ``vae/``, ``scheduler/``; text encoders are read by the title prompt only),
or builds them from config with random weights: ``tiny`` for tests and the demo, ``sd15_architecture`` (SD 1.5's
architecture, random weights) for GPU benchmarks. Nothing is downloaded (``local_files_only=True``) and no diffusers
code is edited. Fine-tuned SD 1.5 checkpoints (Realistic Vision, Anything...) are diffusers folders in the same layout
and load the same way. The sampling hooks run DDIM as ``StableDiffusion(XL)Pipeline`` does
(tests/diffusion/test_diffusion.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from icg.diffusion.bases.base import (
    BaseComponents,
    Family,
    MissingComponentError,
    Predictor,
    Schedule,
    has_weights,
    randint_on,
)
from icg.diffusion.conditioning import Conditioning, predict_noise
from icg.errors import ConfigError

log = logging.getLogger(__name__)

Variant = Literal["sd15", "sdxl"]

# SD 1.5's noise schedule (its scheduler_config.json), used for built-from-config components.
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


class SDFamily(Family):
    """SD 1.5 (``sd15``: one CLIP text encoder) or SDXL (``sdxl``: CLIP-L + OpenCLIP-bigG, a pooled vector)."""

    denoiser_folder = "unet"

    def __init__(self, name: Variant) -> None:
        self.name = name

    def load(self, path, config_key, torch_dtype=None, guidance=3.5) -> DiffusionComponents:
        return DiffusionComponents.from_pretrained_folder(
            path, config_key=config_key, variant=self.name, torch_dtype=torch_dtype
        )

    def tiny(self, guidance: float = 3.5, **kwargs: Any) -> DiffusionComponents:
        return DiffusionComponents.tiny(**{"variant": self.name, **kwargs})

    # ------------------------------------------------------------------------------------------------ title prompt
    def reads_text_encoder_2(self, architecture: str) -> bool:
        return self.name == "sdxl" and "CLIPTextModelWithProjection" in architecture

    def load_text_encoders(self, folder: Path, dtype: torch.dtype | None):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        kw = {"local_files_only": True} | ({"dtype": dtype} if dtype is not None else {})
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **kw)
        if self.name == "sd15":
            return encoder, tokenizer, None, None
        encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **kw)
        tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
        return encoder, tokenizer, encoder_2, tokenizer_2

    def encode_prompt(self, prompt, titles: list[str]) -> Conditioning:
        if self.name == "sd15":  # StableDiffusionPipeline.encode_prompt: padded to 77 tokens, last hidden state
            max_length = min(prompt.tokenizer.model_max_length, prompt.encoder.config.max_position_embeddings)
            return Conditioning(prompt.encoder(prompt.token_ids(prompt.tokenizer, titles, max_length))[0])
        # StableDiffusionXLPipeline.encode_prompt (clip_skip=None)
        parts, pooled = [], None
        for tokenizer, encoder in ((prompt.tokenizer, prompt.encoder), (prompt.tokenizer_2, prompt.encoder_2)):
            out = encoder(prompt.token_ids(tokenizer, titles, tokenizer.model_max_length), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the projected pooled vector of CLIPTextModelWithProjection
                pooled = out[0]
            parts.append(out.hidden_states[-2])
        return Conditioning(torch.cat(parts, dim=-1), None, pooled)

    def prompt_width(self, prompt) -> int:
        if self.name == "sdxl":
            return int(prompt.encoder.config.hidden_size) + int(prompt.encoder_2.config.hidden_size)
        return int(prompt.encoder.config.hidden_size)

    def prompt_pooled_dim(self, prompt) -> int | None:
        return int(prompt.encoder_2.config.projection_dim) if self.name == "sdxl" else None

    # ------------------------------------------------------------------------------------------------ LoRA, pipelines
    def lora_loader(self) -> type:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

        return StableDiffusionXLLoraLoaderMixin if self.name == "sdxl" else StableDiffusionLoraLoaderMixin

    def pipeline_name(self, mode: str) -> str:
        xl = "XL" if self.name == "sdxl" else ""
        return "StableDiffusion" + xl + ("Img2Img" if mode == "img2img" else "") + "Pipeline"


SD15 = SDFamily("sd15")
SDXL = SDFamily("sdxl")


@dataclass
class DiffusionComponents(BaseComponents):
    """The frozen UNet, VAE and DDIM scheduler that the sampler uses (SD 1.5 or SDXL layout).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        vae: a diffusers ``AutoencoderKL``.
        scheduler: a ``DDIMScheduler`` (other schedulers' configs are converted by the loaders).
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDIMScheduler

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def family(self) -> SDFamily:
        """``SDXL`` for a UNet with SDXL's added embeddings (``text_time``), ``SD15`` otherwise."""
        return SDXL if self.unet.config.addition_embed_type == "text_time" else SD15

    @property
    def denoiser(self) -> UNet2DConditionModel:
        """The network that predicts the noise (what a LoRA adapts)."""
        return self.unet

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def default_image_size(self) -> int:
        """The image side the UNet was configured for (its latent ``sample_size`` x the VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def pipeline_parts(self) -> dict:
        parts = dict(vae=self.vae, text_encoder=None, tokenizer=None, unet=self.unet, scheduler=self.scheduler)
        if self.family is SDXL:
            return parts | dict(text_encoder_2=None, tokenizer_2=None)
        return parts | dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def pipeline_guidance(self, guidance_scale: float) -> dict:
        return {"guidance_scale": guidance_scale}

    def pipeline_takes_size(self, img2img: bool) -> bool:
        return not img2img  # SD's img2img pipelines take the image's size

    # ----------------------------------------------------------------------------------------------- sampling hooks
    def first_step(self, num_steps: int, strength: float) -> int:
        # StableDiffusionImg2ImgPipeline.get_timesteps: int(T * strength) steps run.
        return num_steps - min(int(num_steps * strength), num_steps)

    def check_image_size(self, height: int, width: int) -> None:
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ConfigError(f"height and width must be multiples of the VAE factor {factor}, got {height} x {width}")

    def schedule(self, num_steps: int, t_start: int, latent_size: tuple[int, int], reference_guided: bool) -> Schedule:
        scheduler = self.scheduler
        scheduler.set_timesteps(num_steps, device=self.device)
        timesteps = scheduler.timesteps
        if reference_guided:
            timesteps = timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
        return Schedule(timesteps)

    def start_latents(self, noise: Tensor, start: Tensor | None, schedule: Schedule) -> Tensor:
        if start is None:
            return noise * self.scheduler.init_noise_sigma
        return self.scheduler.add_noise(start, noise, schedule.timesteps[:1].repeat(noise.shape[0]))

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
        """CFG as diffusers' SD pipelines: one UNet call on the batch ``[uncond, cond]``, then extrapolate."""
        unet, scheduler = self.unet, self.scheduler
        do_cfg = guidance_scale > 1.0
        unet_cond = Conditioning.cat([uncond, cond]) if do_cfg else cond
        unet_dtype = unet.dtype  # diffusers walks all submodules for this: once per call, not per step

        def predict(latents: Tensor, t: Tensor, with_grad: bool) -> Tensor:
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            with autocast:
                if with_grad and gradient_checkpointing:
                    eps = checkpoint(predict_noise, unet, model_in, t, unet_cond, image_size=image_size,
                                     dtype=unet_dtype, use_reentrant=False)  # fmt: skip
                else:
                    eps = predict_noise(unet, model_in, t, unet_cond, image_size=image_size, dtype=unet_dtype)
            eps = eps.to(latents.dtype)  # scheduler arithmetic in fp32
            if do_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            return eps

        return predict

    def step(self, schedule, i, t, model_output, latents, eta, generator) -> tuple[Tensor, Tensor]:
        out = self.scheduler.step(model_output, t, latents, eta=eta, generator=generator)
        return out.prev_sample, out.pred_original_sample

    def loss(self, z, noise, cond, generator, autocast, image_size) -> Tensor:
        """Epsilon (or v) prediction MSE at a uniformly drawn training timestep."""
        unet, scheduler, device = self.unet, self.scheduler, self.device
        t = randint_on(0, scheduler.config.num_train_timesteps, (z.shape[0],), generator, device)
        noisy = scheduler.add_noise(z, noise, t)
        with autocast:
            pred = predict_noise(unet, noisy, t, cond.to(device), image_size=image_size)
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        elif scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(z, noise, t)
        else:
            raise ConfigError(
                f"denoising_loss supports epsilon and v_prediction, not {scheduler.config.prediction_type!r}"
            )
        return F.mse_loss(pred.float(), target)

    # ------------------------------------------------------------------------------------------------ loaders
    @classmethod
    def from_pretrained_folder(
        cls,
        path: str | Path,
        config_key: str = "diffusion.path",
        variant: Variant = "sd15",
        torch_dtype: torch.dtype | None = None,
        weights_variant: str | None = None,
    ) -> DiffusionComponents:
        """Load UNet, VAE and scheduler from a local diffusers folder (SD 1.5 or SDXL layout).

        Args:
            path: the folder holding ``unet/``, ``vae/`` and ``scheduler/``.
            config_key: the config key that gave ``path``, named in every error.
            variant: ``"sd15"`` (UNet without added embeddings) or ``"sdxl"`` (``addition_embed_type="text_time"``);
                checked against the loaded UNet.
            torch_dtype: dtype for UNet and VAE (None keeps the stored dtype).
            weights_variant: diffusers' weight-file variant (e.g. ``"fp16"`` for ``*.fp16.safetensors``).
        """
        if variant not in ("sd15", "sdxl"):
            raise ConfigError(f"variant must be 'sd15' or 'sdxl', got {variant!r}")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise MissingComponentError(
                f"{config_key}={str(path)!r}: not a directory; expected a local diffusers folder with unet/, vae/ "
                "and scheduler/ subfolders (nothing is downloaded)"
            )
        if (root / "transformer").is_dir() and not (root / "unet").is_dir():
            raise MissingComponentError(
                f"{config_key}={str(path)!r} holds a transformer/ (a Flux folder), not a UNet, but variant={variant!r} "
                "was requested; set the variant to flux"
            )
        for sub, cfg in (("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json")):
            if not (root / sub / cfg).is_file():
                raise MissingComponentError(f"{config_key}={str(path)!r}: missing {sub}/{cfg} (diffusers layout)")
        for sub in ("unet", "vae"):
            if not has_weights(root / sub):
                raise MissingComponentError(
                    f"{config_key}={str(path)!r}: missing weights {sub}/diffusion_pytorch_model.safetensors (or .bin)"
                )
        kw = dict(local_files_only=True, torch_dtype=torch_dtype, variant=weights_variant)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
        # SD 1.5 ships a PNDM config and SDXL an Euler one; the noise schedule is what matters, DDIM reuses it.
        scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
        is_sdxl = unet.config.addition_embed_type == "text_time"
        if is_sdxl != (variant == "sdxl"):
            found = "sdxl" if is_sdxl else "sd15"
            raise ConfigError(
                f"{config_key}={str(path)!r} holds an {found}-layout UNet but variant={variant!r} was requested"
            )
        log.info(
            "loaded diffusion components from %s (%s, cross_attention_dim=%s)",
            root,
            variant,
            unet.config.cross_attention_dim,
        )
        return cls(unet, vae, scheduler)

    @classmethod
    def tiny(
        cls,
        cross_attention_dim: int = 32,
        sample_size: int = 8,
        variant: Variant = "sd15",
        pooled_dim: int = 32,
        seed: int = 0,
    ) -> DiffusionComponents:
        """Tiny random-weight components for tests and the demo (diffusers' own test sizes; ~1M parameters).

        The VAE downsamples by 2, so ``sample_size`` latents decode to ``2 * sample_size`` pixels.

        Args:
            cross_attention_dim: UNet cross-attention width (768 / 2048 mimic SD 1.5 / SDXL conditioning shapes).
            sample_size: latent side the UNet is configured for (8 or 16).
            variant: ``"sd15"`` or ``"sdxl"`` (adds the ``text_time`` embedding taking pooled + 6 time ids).
            pooled_dim: pooled-vector width of the ``sdxl`` variant (1280 mimics SDXL).
            seed: seed of the random initialization.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            extra = {}
            if variant == "sdxl":
                extra = dict(
                    addition_embed_type="text_time",
                    addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=pooled_dim + 6 * 8,
                    use_linear_projection=True,
                )
            elif variant != "sd15":
                raise ConfigError(f"variant must be 'sd15' or 'sdxl', got {variant!r}")
            unet = UNet2DConditionModel(
                sample_size=sample_size,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=cross_attention_dim,
                attention_head_dim=8,
                norm_num_groups=32,
                **extra,
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
                sample_size=2 * sample_size,
            )
        return cls(unet, vae, DDIMScheduler(**SD_SCHEDULE))

    @classmethod
    def sd15_architecture(cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
        """SD 1.5's UNet (860M) and VAE (84M) architecture with random weights, built directly on ``device``.

        For benchmarks: same shapes and FLOPs as the real checkpoint at 512 px, no weights needed.
        """
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # defaults are SD 1.x's blocks
            vae = AutoencoderKL(
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                latent_channels=4,
                sample_size=512,
            )
        return cls(unet, vae, DDIMScheduler(**SD_SCHEDULE)).to(dtype=dtype)
