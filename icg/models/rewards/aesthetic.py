"""LAION aesthetic reward: the improved-aesthetic-predictor MLP on L2-normalized CLIP ViT-L/14 image embeddings.

ICG's public aesthetic reward (Bian et al., EMNLP 2025). The head is the published LAION predictor
(``sac+logos+ava1-l14-linearMSE.pth``, christophschuhmann/improved-aesthetic-predictor): a state dict of a purely
linear MLP 768→1024→128→64→16→1 with dropout between layers (keys ``layers.0``, ``layers.2``, ``layers.4``,
``layers.6``, ``layers.7``), trained on normalized CLIP embeddings; unnormalized embeddings silently give scores
above 10, so the normalization is part of this reward.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from icg.ckpt import init_spec
from icg.errors import ConfigError, require_path
from icg.models.clip_loading import clip_image_settings, load_clip_vision
from icg.models.image_ops import check_images, clip_preprocess
from icg.models.rewards.base import Reward, RewardContext
from icg.models.rewards.blip import RewardMLP

log = logging.getLogger(__name__)

HEAD_EXPECTED = (
    "the LAION aesthetic head state dict (sac+logos+ava1-l14-linearMSE.pth or .safetensors with keys "
    "layers.0/2/4/6/7.weight|bias)"
)


class LaionAestheticHead(RewardMLP):
    """The LAION predictor's MLP: the same published layout as ImageReward's head (linear 768->1024->128->64->16->1,
    no activations, dropout off in eval), so the published state dict (``layers.0/2/4/6/7``) loads strictly."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__(input_size)
        self.input_size = input_size


def load_state_dict_file(path: Path, key: str) -> dict[str, Tensor]:
    """A plain state dict from ``.safetensors`` or a ``torch.save`` file, loaded with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ConfigError(f"{key}: cannot read {path} as a state dict: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a Lightning checkpoint of the predictor, as its training script writes
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {path} is not a state dict of tensors")
    return state


class AestheticReward(Reward):
    """LAION aesthetic score of each image; higher is prettier.

    Score range: roughly 1–10 for real CLIP ViT-L/14 + the published head (most photos 4–7); unbounded in principle
    (a linear head). With random tiny weights the scale is meaningless.

    Args:
        clip_path: local CLIP ``save_pretrained`` folder (real: clip-vit-large-patch14, projection 768).
        head_path: the LAION head state dict (``.pth`` via ``torch.load(weights_only=True)`` or ``.safetensors``).
        name: metric name (``val/reward/<name>``).
        config_key: where this reward sits in the config, prefixed to the parameter name in error messages.
    """

    name = "aesthetic"

    def __init__(self, clip_path: str, head_path: str, name: str = "aesthetic", config_key: str | None = None) -> None:
        super().__init__()
        self.spec = init_spec(self, locals())
        self.name = name
        clip_key, head_key = self._key(config_key, "clip_path"), self._key(config_key, "head_path")
        head_file = require_path(head_path, head_key, HEAD_EXPECTED, kind="file")
        self.vision = load_clip_vision(clip_path, clip_key)
        self.image_size, self.mean, self.std = clip_image_settings(Path(clip_path), self.vision.config.image_size)
        state = {k: v.float() for k, v in load_state_dict_file(head_file, head_key).items()}
        if "layers.0.weight" not in state:
            raise ConfigError(f"{head_key}: {head_file} has no 'layers.0.weight'; expected {HEAD_EXPECTED}")
        input_size = state["layers.0.weight"].shape[1]
        embed_dim = self.vision.config.projection_dim
        if input_size != embed_dim:
            raise ConfigError(
                f"{head_key}: the head takes {input_size}-d embeddings but the CLIP at {clip_key} projects to "
                f"{embed_dim}-d (the LAION head needs ViT-L/14, 768-d)"
            )
        self.head = LaionAestheticHead(input_size)
        try:
            self.head.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ConfigError(f"{head_key}: {head_file} does not fit the LAION head layout: {err}") from err
        self.freeze()

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalized CLIP image embeddings of [0, 1] images (B×D), differentiable."""
        pixels = clip_preprocess(images, self.image_size, self.mean, self.std)
        features = self.vision(pixel_values=pixels).image_embeds
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, images: Tensor, context: RewardContext | None = None) -> Tensor:
        """Aesthetic score per image (B), see the class docstring for its range."""
        check_images(images, f"{type(self).__name__}.forward")
        return self.head(self.embed(images)).squeeze(-1)
