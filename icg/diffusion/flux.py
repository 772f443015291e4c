"""Flux's components under their historical import path; they live in ``icg.diffusion.bases.flux``."""

from icg.diffusion.bases.base import BaseComponents
from icg.diffusion.bases.flux import FLUX_SCHEDULE, FluxComponents

AnyComponents = BaseComponents  # any family's components

__all__ = ["FLUX_SCHEDULE", "AnyComponents", "FluxComponents"]
