"""A random AlexNet backbone file for LPIPS (no download)."""

from pathlib import Path

import torch

from icg.evaluation.lpips import alexnet_features


def save_backbone(path: Path) -> dict[str, torch.Tensor]:
    """A random AlexNet in torchvision's checkpoint layout (features + classifier keys)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in alexnet_features().state_dict().items()}
    torch.save(state | {"classifier.1.weight": torch.zeros(4, 4)}, path)
    return state
