"""Where the stock diffusion model comes from, as one small config block (``model.init_args.diffusion``).

ICG keeps the denoiser (UNet or Flux transformer), VAE and scheduler stock and frozen, so a stage only needs to know
where they are: a local diffusers folder (SD 1.5 -- or a fine-tune of it in the same layout, such as Realistic
Vision --, SDXL or Flux layout) or, for tests, a tiny model built from config with random weights. The family
(``variant``) is looked up in the registry ``icg.diffusion.bases.FAMILIES``, which does the loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from icg.diffusion.bases import FAMILIES, BaseComponents, get_family
from icg.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = tuple(FAMILIES)  # the family names, the values of ``variant``


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
    """

    path: str | None = None
    variant: str = "sd15"
    tiny: dict = field(default_factory=dict)
    dtype: str = "float32"
    guidance: float = 3.5

    def load(self, config_key: str = "model.init_args.diffusion.path") -> BaseComponents:
        """The frozen components; errors name ``config_key``."""
        prefix = config_key.rsplit(".", 1)[0]
        if self.dtype not in DTYPES:
            raise ConfigError(f"{prefix}.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
        family = get_family(self.variant, f"{prefix}.variant")
        if self.path is None:
            components = family.tiny(**{"guidance": self.guidance, **self.tiny})
            return components if self.dtype == "float32" else components.to(dtype=DTYPES[self.dtype])
        return family.load(self.path, config_key, torch_dtype=DTYPES[self.dtype], guidance=self.guidance)
