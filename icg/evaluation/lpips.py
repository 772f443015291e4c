"""LPIPS (Zhang et al., 2018) to the reference cover, with the AlexNet backbone read from a local file.

The paper reports LPIPS (PixelRec 1M: 0.5126, MovieLens: 0.4018). ``torchmetrics`` computes it and ships LPIPS's
learned linear heads (``lpips_models/alex.pth``), but builds the ImageNet backbone through ``torchvision``, which
would download it (and whose wheels here pull a CUDA build of torch). So the backbone comes from a local file: the
torchvision AlexNet checkpoint (``alexnet-owt-7be5be79.pth``, the one LPIPS uses; full model or ``features.*`` only,
``.pth`` or ``.safetensors``), loaded into a torchvision-layout ``features`` stack defined here, and handed to
torchmetrics' own LPIPS module in place of its torchvision call. Everything else -- input scaling, per-layer
normalization, the shipped linear heads, spatial averaging -- is torchmetrics' code.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
import torchmetrics.functional.image.lpips as tm_lpips
from torch import Tensor, nn

from icg.errors import ConfigError, MissingFileError


def alexnet_features() -> nn.Sequential:
    """``torchvision.models.alexnet().features``, layer for layer (so its state-dict keys load unchanged)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def load_alexnet_features(path: str | Path, config_key: str = "lpips_backbone") -> nn.Sequential:
    """The AlexNet ``features`` stack with the weights of a local torchvision checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{config_key}: {path} does not exist (expected torchvision's AlexNet weights, alexnet-owt-7be5be79.pth)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    features = alexnet_features()
    wanted = {f"features.{k}" for k in features.state_dict()}
    missing = sorted(wanted - set(state))
    if missing:
        raise ConfigError(f"{config_key}: {path} is not a torchvision AlexNet checkpoint (missing {missing[:3]} ...)")
    features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k in wanted})
    return features


class LPIPS(nn.Module):
    """``(images, reference) -> B`` LPIPS distances (AlexNet), both in [0, 1]; frozen, eval mode.

    Args:
        backbone: path of torchvision's AlexNet checkpoint.
        config_key: the config key of ``backbone``, named in errors.
    """

    def __init__(self, backbone: str | Path, config_key: str = "lpips_backbone") -> None:
        super().__init__()
        features = load_alexnet_features(backbone, config_key)

        def local_features(net: str, pretrained: bool = False) -> nn.Sequential:
            return features

        # torchmetrics asks torchvision for the backbone here; hand it the local one instead (only this call).
        with mock.patch.object(tm_lpips, "_get_tv_model_features", local_features):
            self.lpips = tm_lpips._NoTrainLpips(pretrained=True, net="alex")
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: Tensor, reference: Tensor) -> Tensor:
        return self.lpips(images.clamp(0, 1), reference.clamp(0, 1), normalize=True).reshape(-1)
