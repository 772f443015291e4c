"""Image encoders for the stage-1 preference model: cover pixels in [0, 1] -> B x F features, differentiably.

ICG (Bian et al., EMNLP 2025) scores covers with a personalized click model whose image features come from a frozen
image encoder, so that the click score is differentiable w.r.t. the cover pixels and can serve as the personalized
reward of stage 3. Two encoders, chosen in config with ``class_path``:

* ``ClipVisionEncoder``: a CLIP vision tower (``transformers.CLIPVisionModelWithProjection``) loaded from a local
  ``save_pretrained`` folder, or built with random weights from a small config dict (tests). Real runs use
  CLIP ViT-L/14 (768-d projected embeddings).
* ``TinyImageEncoder``: built from config, no weights to load. A fixed differentiable colour front end (per-channel
  mean/std, luma and saturation statistics, soft colour histograms) beside a small conv net. The colour part is what
  lets a *frozen* tiny encoder still expose the colour/brightness tastes of the synthetic platform's users.

Every encoder takes float images B x 3 x H x W in [0, 1], resizes and normalizes with torch ops (no PIL, no
``*Processor``) so gradients reach the pixels, and exposes ``feature_dim``. Neither uses ``@torch.no_grad()``.
"""

from __future__ import annotations

import colorsys
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from icg.ckpt import init_spec
from icg.errors import ConfigError
from icg.models.clip_loading import clip_image_settings, load_clip_vision
from icg.models.image_ops import CLIP_MEAN, CLIP_STD, check_images, clip_preprocess, resize_center_crop

log = logging.getLogger(__name__)

# ITU-R BT.601 luma weights: brightness as people perceive it, not the plain channel mean.
LUMA = (0.299, 0.587, 0.114)


class ColorStatistics(nn.Module):
    """Fixed, differentiable colour descriptors of an image: no weights.

    Features (in order): per-channel mean (3) and std (3); luma mean and std (2); mean saturation (max - min
    channel, 1); edge energy (mean luma gradient magnitude, 1); a joint soft RGB histogram (``bins``^3 cells,
    separable Gaussian kernels one bin wide, sums to 1), which tells colours apart that per-channel histograms
    would mix up.

    Args:
        bins: bins per RGB axis of the joint histogram; 0 leaves it out.
    """

    def __init__(self, bins: int = 4) -> None:
        super().__init__()
        self.bins = bins
        self.register_buffer("centers", (torch.arange(bins, dtype=torch.float32) + 0.5) / max(bins, 1), False)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), False)

    @property
    def feature_dim(self) -> int:
        return 10 + self.bins**3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(2)  # B x 3 x P
        mean = flat.mean(-1)
        # sqrt(var + eps), not .std(): a finite gradient on flat images
        std = ((flat - mean.unsqueeze(-1)) ** 2).mean(-1).add(1e-6).sqrt()
        luma_map = (images * self.luma).sum(1)  # B x H x W
        luma = luma_map.flatten(1)
        luma_mean = luma.mean(-1, keepdim=True)
        luma_std = ((luma - luma_mean) ** 2).mean(-1, keepdim=True).add(1e-6).sqrt()
        saturation = (images.amax(1) - images.amin(1)).flatten(1).mean(-1, keepdim=True)
        dx = luma_map[:, :-1, 1:] - luma_map[:, :-1, :-1]
        dy = luma_map[:, 1:, :-1] - luma_map[:, :-1, :-1]
        edges = (dx**2 + dy**2 + 1e-6).sqrt().flatten(1).mean(-1, keepdim=True)
        parts = [mean, std, luma_mean, luma_std, saturation, edges]
        if self.bins:
            width = 1.0 / self.bins
            weights = torch.exp(-0.5 * ((flat.unsqueeze(-1) - self.centers) / width) ** 2)  # B x 3 x P x bins
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-8)
            joint = torch.einsum("bpi,bpj,bpk->bijk", weights[:, 0], weights[:, 1], weights[:, 2])
            parts.append(joint.flatten(1) / flat.shape[-1])
        return torch.cat(parts, dim=1)


# (saturation, value) of the two rings of hue anchors: vivid colours and their pastel versions (pink, sky blue...).
PALETTE_TONES = ((0.85, 0.9), (0.5, 0.95))
# Neutral anchors absorb background, stripe and outline pixels so that greys do not count as any hue.
PALETTE_GREYS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class PaletteOccupancy(nn.Module):
    """Fixed, differentiable soft colour occupancy: the fraction of pixels near each of a generic set of hues.

    Every pixel gets a softmax over negative squared RGB distances (temperature ``tau``) to ``hues`` evenly spaced
    hue anchors in each of the ``PALETTE_TONES`` plus the ``PALETTE_GREYS``; the hue part is averaged over the
    image. This is the kind of statistic colour tastes are defined on (the synthetic platform's click model uses
    the same construction over its own palette), without knowing any platform's palette. No weights.

    Args:
        hues: hue anchors per tone; ``feature_dim = hues * len(PALETTE_TONES)``.
        tau: softmax temperature on squared RGB distances (smaller = crisper).
    """

    def __init__(self, hues: int = 12, tau: float = 0.02) -> None:
        super().__init__()
        if hues < 1 or tau <= 0:
            raise ConfigError(f"PaletteOccupancy: hues must be >= 1 and tau > 0, got hues={hues}, tau={tau}")
        colours = [colorsys.hsv_to_rgb(h / hues, s, v) for s, v in PALETTE_TONES for h in range(hues)]
        self.num_colours = len(colours)
        anchors = torch.tensor(colours + [(g, g, g) for g in PALETTE_GREYS], dtype=torch.float32)
        self.register_buffer("anchors", anchors, False)
        self.tau = tau

    @property
    def feature_dim(self) -> int:
        return self.num_colours

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 2, 3, 1)  # B x H x W x 3
        # |p - a|^2 expanded: one matmul instead of a B x H x W x A x 3 difference tensor
        dist2 = (pixels**2).sum(-1, keepdim=True) - 2.0 * pixels @ self.anchors.T + (self.anchors**2).sum(-1)
        return torch.softmax(-dist2 / self.tau, dim=-1)[..., : self.num_colours].mean(dim=(1, 2))


class TinyImageEncoder(nn.Module):
    """A small encoder built from config: colour statistics beside a conv net, concatenated.

    Architecture: resize to ``input_size``; (a) ``ColorStatistics(color_bins)``; (b) with ``palette_hues > 0``,
    ``PaletteOccupancy(palette_hues)``; (c) conv 3x3 stride 2 + GELU per entry of ``channels``, global average
    pooling. ``feature_dim = 10 + color_bins**3 + 2 * palette_hues + channels[-1]`` (``channels=[]`` keeps only the
    colour part). Few, well-chosen features matter on small data: on the demo platform (then ~25 clicks per user) the
    click model learns more from 10 statistics + 24 hue occupancies than from 64 histogram cells + 32 random conv
    features (docs/stage1.md). Random conv weights are fine frozen for colour tastes; set the
    preference model's ``freeze_encoder: false`` to train them for shape/texture tastes.

    Args:
        input_size: side the covers are resized to before encoding.
        channels: output channels of each conv layer.
        color_bins: bins per RGB axis of the joint soft colour histogram (0: statistics only).
        palette_hues: hue anchors per tone of the soft palette occupancy (0: left out).
    """

    def __init__(
        self, input_size: int = 32, channels: list[int] | None = None, color_bins: int = 4, palette_hues: int = 0
    ) -> None:
        super().__init__()
        self.spec = init_spec(self, locals())
        channels = [16, 32] if channels is None else list(channels)
        self.input_size = input_size
        self.color = ColorStatistics(color_bins)
        self.palette = PaletteOccupancy(palette_hues) if palette_hues > 0 else None
        layers: list[nn.Module] = []
        width = 3
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GELU()]
            width = out
        self.conv = nn.Sequential(*layers)
        self.conv_dim = channels[-1] if channels else 0

    @property
    def feature_dim(self) -> int:
        palette_dim = self.palette.feature_dim if self.palette is not None else 0
        return self.color.feature_dim + palette_dim + self.conv_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features B x ``feature_dim`` of images B x 3 x H x W in [0, 1]."""
        check_images(images, type(self).__name__)
        images = resize_center_crop(images, self.input_size, "bilinear")
        parts = [self.color(images)]
        if self.palette is not None:
            parts.append(self.palette(images))
        if self.conv_dim:
            # Centre pixels so random conv filters respond to contrast, not just to overall brightness.
            parts.append(self.conv(images * 2.0 - 1.0).mean((-2, -1)))
        return torch.cat(parts, dim=1)


class ClipVisionEncoder(nn.Module):
    """CLIP vision tower: resize + center-crop, CLIP-normalize, projected ``image_embeds`` -> B x F.

    Loading goes through ``icg.models.clip_loading`` (local folder only, clear error naming ``config_key``).

    Args:
        path: local folder of a CLIP checkpoint saved with ``save_pretrained`` (``config.json`` +
            ``model.safetensors``); for real runs CLIP ViT-L/14 (``feature_dim`` 768). Nothing is downloaded.
        config: instead of ``path``, a ``transformers.CLIPVisionConfig`` dict built with random weights (tests).
        image_size: input side of the vision tower; default: the folder's ``preprocessor_config.json`` crop size,
            else the vision config's ``image_size``.
        normalize_features: L2-normalize the embeddings (as CLIP does before similarities).
        config_key: the config key quoted in errors about ``path``.
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        image_size: int | None = None,
        normalize_features: bool = True,
        config_key: str = "model.init_args.model.init_args.image_encoder.init_args.path",
    ) -> None:
        super().__init__()
        self.spec = init_spec(self, locals())
        if (path is None) == (config is None):
            raise ConfigError(f"{config_key}: give exactly one of 'path' (a local CLIP folder) or 'config' (random)")
        mean, std = CLIP_MEAN, CLIP_STD
        if config is not None:
            self.vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
            size = int(self.vision.config.image_size)
        else:
            self.vision = load_clip_vision(path, config_key)
            size, mean, std = clip_image_settings(path, int(self.vision.config.image_size))
        self.image_size = int(image_size or size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize_features = normalize_features

    @property
    def feature_dim(self) -> int:
        return int(self.vision.config.projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings B x ``feature_dim`` of images B x 3 x H x W in [0, 1]."""
        check_images(images, type(self).__name__)
        pixels = clip_preprocess(images, self.image_size, self.mean, self.std)
        feats = self.vision(pixel_values=pixels).image_embeds
        return F.normalize(feats, dim=-1) if self.normalize_features else feats
