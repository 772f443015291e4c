"""The cover generators compared in ICG's evaluation (Bian et al., EMNLP 2025): baselines and ICG itself.

A *method* is any callable ``method(batch) -> B x 3 x H x W covers in [0, 1]`` for a batch of the DataModule's
``pairs`` unit (``user_idx``, ``user_id``, ``item_idx``, ``item_id``, ``title``, ``image``). Each method samples through
``icg.generation.generator.sample_covers`` with the same per-pair seeds (``icg.generation.seeds.pair_seed``) and the
same mode (``strength``: pure noise, or reference-guided from the item's cover), so the methods differ only in their
conditioning. Both
take explicit ``seeds`` too (one per pair), which the user-swap test (``icg.evaluation.user_swap``) uses to give every
user's cover of an item the same seed:

* ``TitleOnlyMethod``: the base diffusion model conditioned on the title alone through its own text encoder
  (``icg.diffusion.prompt_encoder.PromptEncoder``: CLIP for SD 1.5, ``title_encoder/`` for the demo stand-in) --
  the paper's "same diffusion model prompted with the title".
* ``PersonalizedPromptMethod``: the same, prompted with the title plus keywords of the user's train clicks' titles
  (``icg.evaluation.keywords``): the handcrafted personalized prompting (PMG-style) ICG's MLLM prompting replaces.
* ``AlignmentMethod``: a trained ICG (a ``CoverGenerator``). ``user="own"`` is ICG; ``user="fallback"`` replaces every
  user by the stage-1 cold-start embedding, i.e. ICG without user refinement, without a second training run (an
  ablation trained with ``fusion_type: none`` is evaluated with ``user="own"`` instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.prompt_encoder import PromptEncoder
from icg.diffusion.source import respaced
from icg.errors import ConfigError
from icg.evaluation.keywords import HistoryKeywords
from icg.generation.generator import CoverGenerator, reference_batch, sample_covers
from icg.generation.seeds import pair_seed

log = logging.getLogger(__name__)
USER_MODES = ("own", "fallback")

CoverMethod = Callable[[dict[str, Any]], Tensor]


class TitleOnlyMethod:
    """The base diffusion model prompted with the title only (no user; the reference only as the start of a
    reference-guided chain, as for every method).

    Args:
        components: the frozen base UNet/VAE/scheduler.
        title_encoder: ``titles -> Conditioning``, the base model's text encoder (a ``PromptEncoder``).
        num_steps: T, DDIM steps.
        image_size: side of the covers (None: the UNet's default).
        guidance_scale: classifier-free guidance (> 1 uses the empty title as the negative).
        strength: 1 from pure noise; < 1 reference-guided (use ICG's, so both run in the same mode).
        seed: base of the per-pair seeds (use ICG's so both start from the same noise).
    """

    def __init__(
        self,
        components: DiffusionComponents,
        title_encoder: Callable[[list[str]], Conditioning],
        num_steps: int = 20,
        image_size: int | None = None,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.components = components
        self.title_encoder = title_encoder
        self.num_steps, self.image_size = num_steps, image_size
        self.guidance_scale, self.strength, self.seed = guidance_scale, strength, seed

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        config_key: str = "base_model",
        device: torch.device | str = "cpu",
        timestep_spacing: str | None = None,
        **kwargs: Any,
    ) -> TitleOnlyMethod:
        """From a local diffusers folder with its text encoder (SD 1.5, or the demo's stand-in base model), on
        ``device``; ``timestep_spacing`` in place of the folder's scheduler's (use ICG's, ``DiffusionSource``)."""
        components = DiffusionComponents.from_pretrained_folder(folder, config_key=config_key)
        components = respaced(components, timestep_spacing, "timestep_spacing").to(device)
        return cls(components, PromptEncoder(str(folder), config_key=config_key).to(device), **kwargs)

    def prompts(self, batch: dict[str, Any]) -> list[str]:
        """The text each pair's cover is prompted with: its title."""
        return list(batch["title"])

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], seeds: Sequence[int] | None = None) -> Tensor:
        """Covers of ``batch``; ``seeds``: one per pair (None: ``pair_seed(seed, user, item)``)."""
        if seeds is None:
            seeds = [pair_seed(self.seed, u, i) for u, i in zip(batch["user_id"], batch["item_id"], strict=True)]
        uncond = self.title_encoder([""]) if self.guidance_scale > 1 else None
        return sample_covers(
            self.components,
            self.title_encoder(self.prompts(batch)),
            seeds,
            batch["image"],
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            strength=self.strength,
            image_size=self.image_size,
            uncond=uncond,
        ).cpu()


class PersonalizedPromptMethod(TitleOnlyMethod):
    """A handcrafted personalized prompt (PMG-style): the title followed by keywords of the user's train clicks'
    titles (``icg.evaluation.keywords``), through the base model's own text encoder, no training; otherwise exactly
    ``TitleOnlyMethod`` (same sampler, mode and per-pair seeds), so a user without train clicks gets its covers.

    Args:
        components, title_encoder, num_steps, image_size, guidance_scale, strength, seed: as ``TitleOnlyMethod``'s.
        keywords: each user's ranked keywords (``HistoryKeywords.from_datamodule``: train clicks only).
        num_words: keywords appended to the title (those it does not already contain).
    """

    def __init__(
        self,
        components: DiffusionComponents,
        title_encoder: Callable[[list[str]], Conditioning],
        keywords: HistoryKeywords,
        num_words: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(components, title_encoder, **kwargs)
        if num_words < 1:
            raise ConfigError(f"PersonalizedPromptMethod.num_words must be >= 1, got {num_words}")
        self.keywords, self.num_words = keywords, num_words

    def prompts(self, batch: dict[str, Any]) -> list[str]:
        """Each pair's title followed by its user's keywords."""
        return [self.keywords.prompt(str(u), str(t), self.num_words)
                for u, t in zip(batch["user_id"], batch["title"], strict=True)]  # fmt: skip


class AlignmentMethod:
    """Covers of a trained ICG (its seeds, steps, guidance and mode unless overridden).

    Args:
        generator: the trained ICG (``CoverGenerator.from_pretrained`` or
            ``CoverGenerator.from_checkpoint``).
        user: ``own`` conditions on the pair's user (ICG); ``fallback`` on the stage-1 cold-start embedding for
            everyone (ICG without user refinement).
        strength: override of the generator's mode (e.g. 1.0: "ICG from pure noise" beside a reference-guided run).
    """

    def __init__(self, generator: CoverGenerator, user: str = "own", strength: float | None = None) -> None:
        if user not in USER_MODES:
            raise ConfigError(f"AlignmentMethod.user must be one of {USER_MODES}, got {user!r}")
        self.generator, self.user, self.strength = generator, user, strength

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        user: str = "own",
        config_key: str = "stage3_ckpt",
        device: torch.device | str = "cpu",
        base_model: str | None = None,
        strength: float | None = None,
    ) -> AlignmentMethod:
        """From a stage-3 checkpoint on ``device``: stage 1 from the path it recorded, the base model from
        ``base_model`` (None: the recorded one too; a tiny diffusion model built from config keeps its own);
        ``strength`` overrides the mode it was trained in (an ablation run in the mode of the method it ablates)."""
        generator = CoverGenerator.from_checkpoint(path, base_model=base_model, config_key=config_key, device=device,
                                              keep_tiny=True)  # fmt: skip
        return cls(generator, user, strength)

    @property
    def num_steps(self) -> int:
        return int(self.generator.settings.num_steps)

    @property
    def seed(self) -> int:
        return int(self.generator.settings.seed)

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @property
    def timestep_spacing(self) -> str | None:
        """The spacing of the generator's DDIM timesteps where its diffusion source sets one (None: the folder's)."""
        return self.generator.source.timestep_spacing if self.generator.source is not None else None

    @property
    def mode_strength(self) -> float:
        return float(self.generator.settings.strength if self.strength is None else self.strength)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], seeds: Sequence[int] | None = None) -> Tensor:
        """Covers of ``batch``; ``seeds``: one per pair (None: the generator's per-pair seeds; the user-swap test
        passes one seed per item, ``icg.evaluation.user_swap``)."""
        gen = self.generator
        users = list(batch["user_id"])
        if self.user == "fallback":
            user_emb = gen.users.fallback(len(users))
        else:
            user_emb, _ = gen.users.lookup(users)
        references = reference_batch(batch["image"], gen.image_size, gen.device)
        cond, negative = gen.pair_conditioning(user_emb, batch["title"], references)  # the export's user guidance
        seeds = gen.seeds(users, batch["item_id"]) if seeds is None else seeds
        return gen.sample(cond, seeds, references, strength=self.strength, user_negative=negative).cpu()
