"""Where the stock diffusion model comes from, as one small config block (``model.init_args.diffusion``).

ICG keeps the denoiser (UNet or Flux transformer), VAE and scheduler stock and frozen, so a stage only needs to know
where they are: a local diffusers folder (SD 1.5 -- or a fine-tune of it in the same layout, such as Realistic
Vision --, SDXL or Flux layout) or, for tests, a tiny model built from config with random weights. The family
(``variant``) is looked up in the registry ``icg.diffusion.bases.FAMILIES``, which does the loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from icg.diffusion.bases import FAMILIES, BaseComponents, get_family
from icg.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = tuple(FAMILIES)  # the family names, the values of ``variant``
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")  # diffusers' DDIMScheduler options


def respaced(components: BaseComponents, spacing: str | None, config_key: str) -> BaseComponents:
    """``components`` with their scheduler's ``timestep_spacing`` set to ``spacing`` (None: as loaded).

    Few-step chains want ``trailing`` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed"): SD 1.5's ``leading`` runs 751, 501, 251, 1 at 4 steps, so a reference-guided chain at strength 0.8 starts
    at t=501 and keeps more of the reference than at 10 steps (from t=701); ``trailing`` runs 999, 749, 499, 249.
    Errors name ``config_key``: an unknown spacing, or a scheduler without one (Flux's flow-matching schedule)."""
    if spacing is None:
        return components
    if spacing not in TIMESTEP_SPACINGS:
        raise ConfigError(f"{config_key}={spacing!r}: expected one of {', '.join(TIMESTEP_SPACINGS)}")
    scheduler = components.scheduler
    if "timestep_spacing" not in scheduler.config:
        name = type(scheduler).__name__
        raise ConfigError(f"{config_key}={spacing!r}: {name} has no timestep spacing; leave it null")
    spaced = type(scheduler).from_config(scheduler.config, timestep_spacing=spacing)
    return replace(components, scheduler=spaced)


@dataclass
class DiffusionSource:
    """A stock diffusion model by path, or a tiny one from config.

    Args:
        path: local diffusers folder with ``unet/`` (SD 1.5, SDXL) or ``transformer/`` (Flux), ``vae/`` and
            ``scheduler/``; None builds ``tiny`` instead.
        variant: the base family, a key of ``icg.diffusion.bases.FAMILIES``: ``sd15``, ``sdxl`` or ``flux`` (checked
            against the loaded folder). The key keeps its name so that existing configs build.
        tiny: keyword arguments of the family's ``tiny`` builder (``DiffusionComponents.tiny`` /
            ``FluxComponents.tiny``; only when ``path`` is None).
        dtype: denoiser/VAE weight dtype: ``float32``, ``bfloat16`` or ``float16``.
        guidance: FLUX.1-dev's embedded (distilled) guidance, ``FluxPipeline``'s ``guidance_scale``; bases without a
            guidance embedding (SD, FLUX.1-schnell) ignore it.
        timestep_spacing: the DDIM scheduler's spacing of the sampled timesteps, ``leading``, ``trailing`` or
            ``linspace``, in place of the folder's (None: the folder's; SD 1.5's is ``leading``). ``trailing`` for few
            steps (``respaced``). Exports and checkpoints record it, so covers are generated as they were trained.
    """

    path: str | None = None
    variant: str = "sd15"
    tiny: dict = field(default_factory=dict)
    dtype: str = "float32"
    guidance: float = 3.5
    timestep_spacing: str | None = None

    def load(self, config_key: str = "model.init_args.diffusion.path") -> BaseComponents:
        """The frozen components; errors name ``config_key``."""
        prefix = config_key.rsplit(".", 1)[0]
        if self.dtype not in DTYPES:
            raise ConfigError(f"{prefix}.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
        family = get_family(self.variant, f"{prefix}.variant")
        if self.path is None:
            components = family.tiny(**{"guidance": self.guidance, **self.tiny})
            components = components if self.dtype == "float32" else components.to(dtype=DTYPES[self.dtype])
        else:
            components = family.load(self.path, config_key, torch_dtype=DTYPES[self.dtype], guidance=self.guidance)
        return respaced(components, self.timestep_spacing, f"{prefix}.timestep_spacing")
