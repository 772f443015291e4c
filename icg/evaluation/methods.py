"""The cover generators compared in ICG's evaluation (Bian et al., EMNLP 2025): baselines and ICG itself.

A *method* is any callable ``method(batch) -> B x 3 x H x W covers in [0, 1]`` for a batch of the DataModule's
``pairs`` unit (``user_idx``, ``user_id``, ``item_idx``, ``item_id``, ``title``, ``image``). Every method here starts
each cover from the same per-pair noise (``icg.lit.alignment.pair_seed``), so the methods differ only in their
conditioning:

* ``TitleOnlyMethod``: the base diffusion model conditioned on the title alone through its own text encoder
  (``icg.diffusion.prompt_encoder.PromptEncoder``: CLIP for SD 1.5, ``title_encoder/`` for the demo stand-in) --
  the paper's "same diffusion model prompted with the title".
* ``AlignmentMethod``: a trained stage-3 checkpoint. ``user="own"`` is ICG; ``user="fallback"`` replaces every user
  by the stage-1 cold-start embedding, i.e. ICG without user refinement, without a second training run (an
  ablation checkpoint trained with ``fusion_type: none`` is evaluated with ``user="own"`` instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.prompt_encoder import PromptEncoder
from icg.diffusion.sampler import sample
from icg.errors import ConfigError
from icg.lit.alignment import AlignmentStage, load_alignment_stage, pair_seed

log = logging.getLogger(__name__)
USER_MODES = ("own", "fallback")

CoverMethod = Callable[[dict[str, Any]], Tensor]


def pair_latents(
    components: DiffusionComponents, seeds: list[int], image_size: int | None, device: torch.device | str = "cpu"
) -> Tensor:
    """The starting noise of each cover from its own seed; identical to ``AlignmentStage.initial_latents``."""
    size = image_size or components.default_image_size
    side = size // components.vae_scale_factor
    noise = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        noise.append(torch.randn(1, components.latent_channels, side, side, generator=generator))
    return torch.cat(noise).to(device) * components.scheduler.init_noise_sigma


class TitleOnlyMethod:
    """The base diffusion model prompted with the title only (no reference image, no user).

    Args:
        components: the frozen base UNet/VAE/scheduler.
        title_encoder: ``titles -> Conditioning``, the base model's text encoder (a ``PromptEncoder``).
        num_steps: T, DDIM steps.
        image_size: side of the covers (None: the UNet's default).
        guidance_scale: classifier-free guidance (> 1 uses the empty title as the negative).
        seed: base of the per-pair seeds (use the stage-3 ``seed`` so both start from the same noise).
    """

    def __init__(
        self,
        components: DiffusionComponents,
        title_encoder: Callable[[list[str]], Conditioning],
        num_steps: int = 20,
        image_size: int | None = None,
        guidance_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.components = components
        self.title_encoder = title_encoder
        self.num_steps, self.image_size = num_steps, image_size
        self.guidance_scale, self.seed = guidance_scale, seed

    @classmethod
    def from_folder(cls, folder: str | Path, config_key: str = "base_model", **kwargs: Any) -> TitleOnlyMethod:
        """From a local diffusers folder with its text encoder (SD 1.5, or the demo's stand-in base model)."""
        components = DiffusionComponents.from_pretrained_folder(folder, config_key=config_key)
        return cls(components, PromptEncoder(str(folder), config_key=config_key), **kwargs)

    def _conditioning(self, titles: list[str]) -> Conditioning:
        return self.title_encoder(titles)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> Tensor:
        seeds = [pair_seed(self.seed, u, i) for u, i in zip(batch["user_id"], batch["item_id"], strict=True)]
        latents = pair_latents(self.components, seeds, self.image_size, self.components.device)
        titles = list(batch["title"])
        uncond = self._conditioning([""]) if self.guidance_scale > 1 else None
        size = self.image_size
        return sample(
            self.components,
            self._conditioning(titles),
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            uncond=uncond,
            latents=latents,
            height=size,
            width=size,
        ).cpu()


class AlignmentMethod:
    """Covers of a trained stage-3 model (``AlignmentStage.predict_step``: its seeds, steps and guidance).

    Args:
        stage: a ready stage (``icg.lit.alignment.load_alignment_stage``).
        user: ``own`` conditions on the pair's user (ICG); ``fallback`` on the stage-1 cold-start embedding for
            everyone (ICG without user refinement).
    """

    def __init__(self, stage: AlignmentStage, user: str = "own") -> None:
        if user not in USER_MODES:
            raise ConfigError(f"AlignmentMethod.user must be one of {USER_MODES}, got {user!r}")
        self.stage, self.user = stage, user

    @classmethod
    def from_checkpoint(cls, path: str | Path, user: str = "own", config_key: str = "stage3_ckpt") -> AlignmentMethod:
        """Load a stage-3 checkpoint (stage 1, stage 2 and the base model come from the paths it recorded)."""
        return cls(load_alignment_stage(path, config_key), user)

    @property
    def num_steps(self) -> int:
        return int(self.stage.hparams.num_steps)

    @property
    def seed(self) -> int:
        return int(self.stage.hparams.seed)

    @property
    def image_size(self) -> int:
        return int(self.stage.hparams.image_size or self.stage.frozen["diffusion"].default_image_size)

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        if self.user == "fallback":
            batch = dict(batch, user_idx=torch.full_like(torch.as_tensor(batch["user_idx"]), -1))
        return self.stage.predict_step(batch, 0)["images"]
