"""The one interface every base family implements, and the component base class they share.

STYLE habit 19: a model family is one module behind one interface. Whatever differs between SD 1.5, SDXL and Flux --
loading a local folder or building a tiny model from config, the denoiser call, the scheduler step and the strength
rounding of a reference-guided chain, the denoising loss, the title prompt (text encoders), the LoRA loader and the
diffusers pipeline arguments -- is asked of the family; the sampling loop (``icg.diffusion.sampler``), the prompt
encoder, the LoRA export and the generator never branch on it. Two classes carry that:

* :class:`Family`, a stateless descriptor registered by name in ``icg.diffusion.bases.FAMILIES`` (``sd15``, ``sdxl``,
  ``flux``): what can be asked before anything is loaded (builders, title-prompt hooks, LoRA loader, pipeline class);
* :class:`BaseComponents`, the frozen denoiser + VAE + scheduler of one family, with the shared properties
  (widths, latent geometry, device moves, saving) and the per-call sampling hooks the loop asks for.

Adding a family is one module under ``icg/diffusion/bases/`` (a ``Family`` subclass + a ``BaseComponents``
subclass) and one line in ``FAMILIES``; docs/diffusion.md shows it.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from icg.diffusion.conditioning import Conditioning, unet_cross_attention_dim, unet_pooled_dim
from icg.errors import MissingFileError


class MissingComponentError(MissingFileError):
    """A diffusers folder lacks a subfolder or file; the message names the config key and what is expected."""


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def move(modules: tuple[nn.Module, ...], device: torch.device | str | None, dtype: torch.dtype | None) -> None:
    """Move (and optionally cast) each module in place."""
    for module in modules:
        # Any dtype keyword (even None or the same dtype) triggers diffusers' "keep in float32" warning.
        kwargs = {"dtype": dtype} if dtype is not None and dtype != module.dtype else {}
        module.to(device=device, **kwargs)


def has_weights(folder: Path) -> bool:
    return any(folder.glob("diffusion_pytorch_model*.safetensors")) or any(folder.glob("diffusion_pytorch_model*.bin"))


def autocast_for(device: torch.device, autocast_dtype: torch.dtype | str | None) -> contextlib.AbstractContextManager:
    """The autocast context around denoiser and VAE calls: ``"auto"`` is bf16 on CUDA and off elsewhere."""
    if autocast_dtype == "auto":
        autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    if autocast_dtype is None:
        return contextlib.nullcontext()
    if isinstance(autocast_dtype, str):
        autocast_dtype = getattr(torch, autocast_dtype)
    return torch.autocast(device.type, dtype=autocast_dtype)


def randint_on(low: int, high: int, size: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """``torch.randint`` on the generator's own device (a CUDA generator cannot draw on CPU), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(low, high, size, generator=generator, device=gen_device).to(device)


class Schedule(NamedTuple):
    """The timesteps that run (after a reference-guided chain's skipped start) and, for flow families, their sigmas."""

    timesteps: Tensor
    sigmas: Tensor | None = None


# A guided denoiser prediction for one step: (latents, timestep, with_grad) -> the model output after guidance.
Predictor = Callable[[Tensor, Tensor, bool], Tensor]


class Family(abc.ABC):
    """A base-model family by name: what is asked of it before (or without) loading its components.

    Attributes:
        name: the registry key, the value of ``model.init_args.diffusion.variant`` (``sd15``, ``sdxl``, ``flux``).
        denoiser_folder: the denoiser's subfolder (``unet``, ``transformer``), also the prefix under which its
            diffusers LoRA loader files the denoiser's LoRA keys.
    """

    name: str
    denoiser_folder: str

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # ------------------------------------------------------------------------------------------------ builders
    @abc.abstractmethod
    def load(
        self, path: str | Path, config_key: str, torch_dtype: torch.dtype | None = None, guidance: float = 3.5
    ) -> BaseComponents:
        """The frozen components of a local diffusers folder of this family; errors name ``config_key``."""

    @abc.abstractmethod
    def tiny(self, **kwargs: Any) -> BaseComponents:
        """Tiny random-weight components built from config (tests, the demo)."""

    # ------------------------------------------------------------------------------------------------ title prompt
    def reads_text_encoder_2(self, architecture: str) -> bool:
        """Whether a folder whose ``text_encoder_2/config.json`` names ``architecture`` is this family's (a family
        with one text encoder answers False)."""
        return False

    @abc.abstractmethod
    def load_text_encoders(self, folder: Path, dtype: torch.dtype | None) -> tuple[nn.Module, object, Any, Any]:
        """(encoder, tokenizer, encoder_2, tokenizer_2) of the base folder, encoders in ``dtype`` (None: stored)."""

    @abc.abstractmethod
    def encode_prompt(self, prompt: Any, titles: list[str]) -> Conditioning:
        """The title prompt as this family's pipeline's ``encode_prompt`` makes it (``prompt``: a ``PromptEncoder``)."""

    @abc.abstractmethod
    def prompt_width(self, prompt: Any) -> int:
        """The prompt states' width C."""

    def prompt_pooled_dim(self, prompt: Any) -> int | None:
        """The width of the pooled vector the prompt gives; None where it gives none."""
        return None

    takes_max_length = False  # whether the title prompt takes a token length (Flux's T5)

    # ------------------------------------------------------------------------------------------------ LoRA, pipelines
    @abc.abstractmethod
    def lora_loader(self) -> type:
        """diffusers' LoRA loader mixin of this family's pipelines (``save_lora_weights``)."""

    @abc.abstractmethod
    def pipeline_name(self, mode: str) -> str:
        """diffusers' pipeline class for ``mode`` (``text2img`` | ``img2img``)."""


@dataclass
class BaseComponents(abc.ABC):
    """The frozen denoiser, VAE and scheduler of one family; subclasses add the denoiser field first.

    The shared properties read the denoiser and VAE configs; the sampling hooks (``first_step``, ``check_image_size``,
    ``schedule``, ``start_latents``, ``predictor``, ``step``, ``loss``) are what ``icg.diffusion.sampler`` asks.
    """

    def __post_init__(self) -> None:
        # Stock and frozen by contract: only the adapter (and an optional LoRA, icg.diffusion.lora) trains.
        freeze(self.denoiser)
        freeze(self.vae)

    # ----------------------------------------------------------------------------------------------- identity
    @property
    @abc.abstractmethod
    def family(self) -> Family:
        """The registered family these components belong to."""

    @property
    @abc.abstractmethod
    def denoiser(self) -> nn.Module:
        """The network that predicts the noise or the flow (what a LoRA adapts)."""

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def cross_attention_dim(self) -> int:
        """The token stream's width (a UNet's ``cross_attention_dim``, a Flux transformer's ``joint_attention_dim``)."""
        return unet_cross_attention_dim(self.denoiser)

    @property
    def pooled_dim(self) -> int | None:
        """The pooled vector's width the denoiser expects; None where it takes none (SD 1.5)."""
        return unet_pooled_dim(self.denoiser)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for the real bases), as diffusers' pipelines compute it."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this."""
        return self.vae_scale_factor

    @property
    def default_image_size(self) -> int:
        """The image side the base was configured for."""
        return int(self.vae.config.sample_size)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BaseComponents:
        """Move (and optionally cast) denoiser and VAE in place; returns self."""
        move((self.denoiser, self.vae), device, dtype)
        return self

    def save_pretrained(self, path: str | Path) -> None:
        """Write the denoiser's folder, ``vae/`` and ``scheduler/`` in the layout the family's loader reads."""
        root = Path(path)
        self.denoiser.save_pretrained(root / self.family.denoiser_folder)
        self.vae.save_pretrained(root / "vae")
        self.scheduler.save_pretrained(root / "scheduler")

    def reference_pipeline(self, mode: str = "text2img"):
        """diffusers' stock pipeline over these same components (no text encoders: call it with ``prompt_embeds``
        and the rest, e.g. ``CoverGenerator.pipeline_inputs(...)``). For comparisons and diffusers-native use."""
        import diffusers

        if mode not in ("text2img", "img2img"):
            raise ValueError(f"mode must be 'text2img' or 'img2img', got {mode!r}")
        pipe = getattr(diffusers, self.family.pipeline_name(mode))(**self.pipeline_parts())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @abc.abstractmethod
    def pipeline_parts(self) -> dict:
        """The keyword arguments of the family's pipeline constructor (no text encoders or tokenizers)."""

    @abc.abstractmethod
    def pipeline_guidance(self, guidance_scale: float) -> dict:
        """The pipeline call's guidance arguments for ICG's classifier-free ``guidance_scale`` on its negative."""

    @abc.abstractmethod
    def pipeline_takes_size(self, img2img: bool) -> bool:
        """Whether the pipeline call takes ``height`` / ``width`` (an img2img pipeline may take the image's)."""

    # ----------------------------------------------------------------------------------------------- sampling hooks
    def check_sampler_options(self, eta: float) -> None:  # noqa: B027 - optional hook, accepts all by default
        """Refuse sampler options this family has no use for."""

    @abc.abstractmethod
    def first_step(self, num_steps: int, strength: float) -> int:
        """Index of the first of ``num_steps`` steps that runs at ``strength`` (its pipeline's ``get_timesteps``)."""

    @abc.abstractmethod
    def check_image_size(self, height: int, width: int) -> None:
        """Raise when the image sides do not fit the VAE (and patching)."""

    @abc.abstractmethod
    def schedule(self, num_steps: int, t_start: int, latent_size: tuple[int, int], reference_guided: bool) -> Schedule:
        """Set the scheduler for ``num_steps`` at this latent size and return the steps from ``t_start`` on."""

    @abc.abstractmethod
    def start_latents(self, noise: Tensor, start: Tensor | None, schedule: Schedule) -> Tensor:
        """The chain's first latents: pure noise scaled for the scheduler, or the reference's latent ``start``
        noised to the first step that runs."""

    @abc.abstractmethod
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
        """The guided denoiser call of one sampling run (``uncond`` is given, with B rows, when guidance > 1)."""

    @abc.abstractmethod
    def step(
        self, schedule: Schedule, i: int, t: Tensor, model_output: Tensor, latents: Tensor, eta: float, generator
    ) -> tuple[Tensor, Tensor]:
        """One scheduler step from step ``i``: (next latents, predicted x0)."""

    @abc.abstractmethod
    def loss(
        self,
        z: Tensor,
        noise: Tensor,
        cond: Conditioning,
        generator: torch.Generator | None,
        autocast: contextlib.AbstractContextManager,
        image_size: tuple[int, int],
    ) -> Tensor:
        """The family's training loss on clean latents ``z`` with drawn ``noise`` (the denoising regularizer)."""
