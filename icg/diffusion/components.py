"""The SD families' components under their historical import path; they live in ``icg.diffusion.bases.sd``."""

from icg.diffusion.bases.base import MissingComponentError
from icg.diffusion.bases.sd import SD_SCHEDULE, DiffusionComponents, Variant

__all__ = ["SD_SCHEDULE", "DiffusionComponents", "MissingComponentError", "Variant"]
