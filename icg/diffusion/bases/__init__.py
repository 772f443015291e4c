"""The base-model families, registered by one name: ``family`` (the config key ``model.init_args.diffusion.variant``).

Each family is one module implementing ``icg.diffusion.bases.base`` (a ``Family`` + a ``BaseComponents`` subclass):
``sd.py`` (SD 1.5 and its fine-tunes, SDXL) and ``flux.py`` (FLUX.1). Adding a family is one module and one line
here; docs/diffusion.md walks through it.
"""

from __future__ import annotations

import torch

from icg.diffusion.bases.base import BaseComponents, Family, MissingComponentError
from icg.diffusion.bases.flux import FLUX, FluxComponents
from icg.diffusion.bases.sd import SD15, SDXL, DiffusionComponents
from icg.errors import ConfigError

FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SDXL, FLUX)}

__all__ = [
    "FAMILIES",
    "BaseComponents",
    "DiffusionComponents",
    "Family",
    "FluxComponents",
    "MissingComponentError",
    "from_preset",
    "get_family",
]


def get_family(name: str, config_key: str = "model.init_args.diffusion.variant") -> Family:
    """The registered family called ``name``; an unknown name is a ``ConfigError`` naming ``config_key``."""
    family = FAMILIES.get(name)
    if family is None:
        raise ConfigError(f"{config_key}={name!r}: expected one of {', '.join(FAMILIES)}")
    return family


def from_preset(preset: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> BaseComponents:
    """``tiny`` | ``tiny_sdxl`` | ``tiny_flux`` | ``sd15`` | ``flux`` (architectures only, random weights), on
    ``device`` in ``dtype``."""
    if preset == "tiny":
        return DiffusionComponents.tiny().to(device, dtype)
    if preset == "tiny_sdxl":
        return DiffusionComponents.tiny(variant="sdxl").to(device, dtype)
    if preset == "tiny_flux":
        return FluxComponents.tiny().to(device, dtype)
    if preset == "sd15":
        return DiffusionComponents.sd15_architecture(device, dtype)
    if preset == "flux":
        return FluxComponents.flux_architecture(device, dtype)
    raise ConfigError(f"unknown diffusion preset {preset!r}; expected tiny, tiny_sdxl, tiny_flux, sd15 or flux")
