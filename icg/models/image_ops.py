"""Differentiable image preprocessing shared by every reward and image encoder: resize, center crop, normalize.

Rewards score images on the training path, where gradients must reach the pixels (ReFL, Xu et al. 2023; DRaFT,
Clark et al. 2024), so nothing here goes through PIL or a ``*Processor``. The resize mirrors torchvision's tensor
``Resize(size)`` + ``CenterCrop(size)`` (shorter side to ``size``, aspect kept, antialiased bicubic, then a center
crop), which is the exact preprocessing ImageReward's ReFL loop applies to decoded images and the tensor analogue of
CLIP's image processor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# OpenAI CLIP's pixel statistics; BLIP/ImageReward normalize with the same numbers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: Tensor, where: str) -> None:
    """Raise a ValueError naming ``where`` unless ``images`` is a float B×3×H×W batch."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{where}: expected images as a float tensor B x 3 x H x W in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{where}: expected float images in [0, 1], got dtype {images.dtype}")


def resized_shorter_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of torchvision's ``Resize(size)``: shorter side to ``size``, longer side truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_center_crop(images: Tensor, size: int, interpolation: str = "bicubic", antialias: bool = True) -> Tensor:
    """Resize the shorter side to ``size`` and center-crop to ``size`` × ``size``, differentiably.

    Args:
        images: B×C×H×W float tensor.
        size: output side in pixels.
        interpolation: ``F.interpolate`` mode (``bicubic`` as in CLIP and BLIP, ``bilinear``, ...).
        antialias: low-pass before downsampling, as torchvision does for tensors (ignored when upsampling).

    Returns:
        B×C×size×size tensor; values may overshoot [0, 1] slightly with bicubic, as in torchvision (no clamp).
    """
    height, width = images.shape[-2:]
    new_h, new_w = resized_shorter_side(height, width, size)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(
            images,
            size=(new_h, new_w),
            mode=interpolation,
            align_corners=False if interpolation in ("bilinear", "bicubic") else None,
            antialias=antialias and interpolation in ("bilinear", "bicubic"),
        )
    # torchvision's CenterCrop rounds the offsets the same way.
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def normalize(images: Tensor, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` with the statistics on the images' device and dtype."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(
    images: Tensor,
    size: int,
    mean: tuple[float, ...] | list[float] = CLIP_MEAN,
    std: tuple[float, ...] | list[float] = CLIP_STD,
) -> Tensor:
    """[0, 1] images to the normalized ``size``-pixel input of a CLIP/BLIP vision tower (bicubic, center crop)."""
    return normalize(resize_center_crop(images, size, "bicubic"), mean, std)
