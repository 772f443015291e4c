"""Where the stock diffusion model comes from, as one small config block (``model.init_args.diffusion``).

ICG keeps the UNet, VAE and scheduler stock and frozen, so a stage only needs to know where they are: a local
diffusers folder (SD 1.5 or SDXL layout) or, for tests, a tiny model built from config with random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from icg.diffusion.components import DiffusionComponents
from icg.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DiffusionSource:
    """A stock diffusion model by path, or a tiny one from config.

    Args:
        path: local diffusers folder with ``unet/``, ``vae/``, ``scheduler/``; None builds ``tiny`` instead.
        variant: ``sd15`` or ``sdxl`` (checked against the loaded UNet).
        tiny: keyword arguments of ``DiffusionComponents.tiny`` (used only when ``path`` is None).
        dtype: UNet/VAE weight dtype: ``float32``, ``bfloat16`` or ``float16``.
    """

    path: str | None = None
    variant: str = "sd15"
    tiny: dict = field(default_factory=dict)
    dtype: str = "float32"

    def load(self, config_key: str = "model.init_args.diffusion.path") -> DiffusionComponents:
        """The frozen components; errors name ``config_key``."""
        if self.dtype not in DTYPES:
            raise ConfigError(f"{config_key.rsplit('.', 1)[0]}.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
        if self.path is None:
            components = DiffusionComponents.tiny(**{"variant": self.variant, **self.tiny})
            return components if self.dtype == "float32" else components.to(dtype=DTYPES[self.dtype])
        return DiffusionComponents.from_pretrained_folder(
            self.path, config_key=config_key, variant=self.variant, torch_dtype=DTYPES[self.dtype]
        )
