"""icg: personalized cover image generation (ICG, Bian et al., EMNLP 2025) as a Lightning pipeline."""

__version__ = "0.1.0"
