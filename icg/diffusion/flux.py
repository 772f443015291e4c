"""Flux as a stock, frozen base: ``FluxTransformer2DModel``, its VAE and ``FlowMatchEulerDiscreteScheduler``.

ICG (Bian et al., EMNLP 2025) reports results on Flux beside SD 1.5. Flux is a flow-matching rectified-flow
transformer (MMDiT): it reads a token stream (T5-XXL's 4096-d states) and a pooled vector (CLIP-L's 768-d pooled
output) instead of a UNet's cross-attention, so the adapter targets ``joint_attention_dim`` and
``pooled_projection_dim``. :class:`FluxComponents` mirrors ``DiffusionComponents`` (same properties and loaders) so
that stage 3, the generator and the export treat both alike; ``icg.diffusion.flow_sampler`` is its sampling loop.
Built from a local diffusers Flux folder (``transformer/``, ``vae/``, ``scheduler/``), tiny from config for tests, or
as FLUX.1-dev's architecture with random weights for GPU benchmarks. Nothing is downloaded and no diffusers code is
edited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from icg.diffusion.components import DiffusionComponents, MissingComponentError, _freeze, _has_weights, _move
from icg.diffusion.conditioning import unet_cross_attention_dim, unet_pooled_dim

log = logging.getLogger(__name__)

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


@dataclass
class FluxComponents:
    """The frozen Flux transformer, VAE and flow-matching scheduler that ``icg.diffusion.flow_sampler`` uses.

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

    kind = "flux"

    def __post_init__(self) -> None:
        # Stock and frozen by contract: only the adapter (and an optional LoRA) trains.
        _freeze(self.transformer)
        _freeze(self.vae)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def denoiser(self) -> FluxTransformer2DModel:
        """The network that predicts the flow (what a LoRA adapts)."""
        return self.transformer

    @property
    def cross_attention_dim(self) -> int:
        """The token stream's width (``joint_attention_dim``; T5-XXL's 4096 for FLUX.1)."""
        return unet_cross_attention_dim(self.transformer)

    @property
    def pooled_dim(self) -> int:
        """The pooled vector's width (``pooled_projection_dim``; CLIP-L's 768 for FLUX.1)."""
        return int(unet_pooled_dim(self.transformer))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for FLUX.1), as ``FluxPipeline`` computes it."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the 2 x 2 latent patches."""
        return 2 * self.vae_scale_factor

    @property
    def default_image_size(self) -> int:
        """The VAE's configured image side (1024 for FLUX.1)."""
        return int(self.vae.config.sample_size)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FluxComponents:
        """Move (and optionally cast) transformer and VAE in place; returns self."""
        _move((self.transformer, self.vae), device, dtype)
        return self

    def reference_pipeline(self, mode: str = "text2img"):
        """diffusers' stock ``FluxPipeline`` (``FluxImg2ImgPipeline`` with ``mode="img2img"``) over these components.

        No text encoders: call it with ``prompt_embeds`` + ``pooled_prompt_embeds`` (and the negatives with
        ``true_cfg_scale``), e.g. ``CoverGenerator.pipeline_inputs(...)``.
        """
        import diffusers

        if mode not in ("text2img", "img2img"):
            raise ValueError(f"mode must be 'text2img' or 'img2img', got {mode!r}")
        name = "FluxImg2ImgPipeline" if mode == "img2img" else "FluxPipeline"
        pipe = getattr(diffusers, name)(
            scheduler=self.scheduler, vae=self.vae, transformer=self.transformer, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

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
            if not _has_weights(root / sub):
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

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``transformer/``, ``vae/``, ``scheduler/`` in the layout ``from_pretrained_folder`` reads."""
        root = Path(path)
        self.transformer.save_pretrained(root / "transformer")
        self.vae.save_pretrained(root / "vae")
        self.scheduler.save_pretrained(root / "scheduler")

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


AnyComponents = DiffusionComponents | FluxComponents
