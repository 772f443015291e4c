"""icg: personalized cover image generation (ICG, Bian et al., EMNLP 2025) as a Lightning pipeline."""

from icg import process_group

__version__ = "0.1.0"

process_group.register()
