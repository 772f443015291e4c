"""Stock, frozen diffusion components (UNet, VAE, DDIM scheduler): from a local diffusers folder or tiny from config.

ICG (Bian et al., EMNLP 2025) keeps the diffusion model stock and frozen so the trained adapter is plug-and-play on
common checkpoints. This file loads the three parts alignment needs from a local diffusers folder in the SD 1.5 or
SDXL layout (``unet/``, ``vae/``, ``scheduler/``; text encoders are not needed since the adapter replaces them), or
builds them from config with random weights: ``tiny`` for tests and the demo, ``sd15`` (SD 1.5 architecture, random
weights) for GPU benchmarks. Nothing is downloaded (``local_files_only=True``) and no diffusers code is edited.
Fine-tuned SD 1.5 checkpoints (Realistic Vision, Anything...) are diffusers folders in the same layout and load the
same way. Flux's transformer-based components live in ``icg.diffusion.flux`` with the same interface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from icg.diffusion.conditioning import unet_cross_attention_dim, unet_pooled_dim
from icg.errors import ConfigError, MissingFileError

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


class MissingComponentError(MissingFileError):
    """A diffusers folder lacks a subfolder or file; the message names the config key and what is expected."""


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def _move(modules: tuple[torch.nn.Module, ...], device: torch.device | str | None, dtype: torch.dtype | None) -> None:
    """Move (and optionally cast) each module in place."""
    for module in modules:
        # Any dtype keyword (even None or the same dtype) triggers diffusers' "keep in float32" warning.
        kwargs = {"dtype": dtype} if dtype is not None and dtype != module.dtype else {}
        module.to(device=device, **kwargs)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("diffusion_pytorch_model*.safetensors")) or any(folder.glob("diffusion_pytorch_model*.bin"))


@dataclass
class DiffusionComponents:
    """The frozen UNet, VAE and DDIM scheduler that the sampler uses.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        vae: a diffusers ``AutoencoderKL``.
        scheduler: a ``DDIMScheduler`` (other schedulers' configs are converted by the loaders).
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDIMScheduler

    def __post_init__(self) -> None:
        # Stock and frozen by contract: only the adapter (and an optional UNet LoRA, icg.diffusion.lora) trains.
        _freeze(self.unet)
        _freeze(self.vae)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def kind(self) -> str:
        """``sd15`` or ``sdxl`` (``icg.diffusion.flux.FluxComponents`` is ``flux``)."""
        return "sdxl" if self.pooled_dim is not None else "sd15"

    @property
    def denoiser(self) -> UNet2DConditionModel:
        """The network that predicts the noise (what a LoRA adapts)."""
        return self.unet

    @property
    def cross_attention_dim(self) -> int:
        return unet_cross_attention_dim(self.unet)

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled vector an SDXL-style UNet expects; None for SD 1.5."""
        return unet_pooled_dim(self.unet)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD 1.5 / SDXL), as diffusers' pipelines compute it."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE factor)."""
        return self.vae_scale_factor

    @property
    def default_image_size(self) -> int:
        """The image side the UNet was configured for (its latent ``sample_size`` x the VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiffusionComponents:
        """Move (and optionally cast) UNet and VAE in place; returns self."""
        _move((self.unet, self.vae), device, dtype)
        return self

    def reference_pipeline(self, mode: str = "text2img"):
        """diffusers' stock pipeline over these same components: ``StableDiffusionPipeline`` (SDXL-layout UNets:
        ``StableDiffusionXLPipeline``), or its ``Img2Img`` variant with ``mode="img2img"``.

        No text encoder or tokenizer: call it with ``prompt_embeds`` / ``negative_prompt_embeds`` (+ pooled for
        SDXL), e.g. ``CoverGenerator.pipeline_inputs(...)``. For inference comparisons and diffusers-native use.
        """
        import diffusers

        if mode not in ("text2img", "img2img"):
            raise ValueError(f"mode must be 'text2img' or 'img2img', got {mode!r}")
        xl = self.pooled_dim is not None
        name = "StableDiffusion" + ("XL" if xl else "") + ("Img2Img" if mode == "img2img" else "") + "Pipeline"
        parts = dict(vae=self.vae, text_encoder=None, tokenizer=None, unet=self.unet, scheduler=self.scheduler)
        if xl:
            parts |= dict(text_encoder_2=None, tokenizer_2=None)
        else:
            parts |= dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = getattr(diffusers, name)(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

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
            if not _has_weights(root / sub):
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

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``unet/``, ``vae/``, ``scheduler/`` in the diffusers layout that ``from_pretrained_folder`` reads."""
        root = Path(path)
        self.unet.save_pretrained(root / "unet")
        self.vae.save_pretrained(root / "vae")
        self.scheduler.save_pretrained(root / "scheduler")

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

    @classmethod
    def from_preset(cls, preset: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        """``tiny`` | ``tiny_sdxl`` | ``tiny_flux`` | ``sd15`` | ``flux`` (architectures only, random weights), on
        ``device`` in ``dtype``; the Flux presets return ``icg.diffusion.flux.FluxComponents``."""
        from icg.diffusion.flux import FluxComponents

        if preset == "tiny":
            return cls.tiny().to(device, dtype)
        if preset == "tiny_sdxl":
            return cls.tiny(variant="sdxl").to(device, dtype)
        if preset == "tiny_flux":
            return FluxComponents.tiny().to(device, dtype)
        if preset == "sd15":
            return cls.sd15_architecture(device, dtype)
        if preset == "flux":
            return FluxComponents.flux_architecture(device, dtype)
        raise ConfigError(f"unknown diffusion preset {preset!r}; expected tiny, tiny_sdxl, tiny_flux, sd15 or flux")
