"""CLIP relevance/fidelity reward: cosine similarity of a cover to its title and/or to the item's reference image.

ICG's semantic-fidelity axis (Bian et al., EMNLP 2025): CLIP image–title similarity as in CLIPScore (Hessel et al.,
2021, without its 2.5×max(·, 0) rescaling) and CLIP image–reference similarity as in Pigeon's and PMG's evaluations.
Computed with torch ops end to end so the score is differentiable in the pixels (torchmetrics' CLIPScore sends images
through a CPU processor and carries no gradient).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from icg.ckpt import init_spec
from icg.errors import ConfigError
from icg.models.clip_loading import clip_image_settings, load_clip_model, load_clip_tokenizer
from icg.models.image_ops import check_images, clip_preprocess
from icg.models.rewards.base import Reward, RewardContext, require_titles

MODES = ("title", "reference", "both")


class ClipRelevance(Reward):
    """Cosine similarity in CLIP space between each image and its title, its reference image, or both.

    Score range: [-1, 1]. For real CLIP ViT-L/14, image–title cosines of matching pairs are typically 0.2–0.35
    and image–image cosines of related pictures 0.5–0.9. ``mode="both"`` averages the two cosines.

    Args:
        clip_path: local CLIP ``save_pretrained`` folder with its tokenizer saved alongside.
        mode: ``title`` (needs ``RewardContext.titles``), ``reference`` (needs ``RewardContext.reference``) or
            ``both``.
        max_length: title token budget (CLIP's context is 77); longer titles are truncated.
        name: metric name; defaults to ``clip_<mode>`` so two CLIP rewards can sit in one reward list.
        config_key: where this reward sits in the config, prefixed to the parameter name in error messages.
    """

    def __init__(
        self,
        clip_path: str,
        mode: str = "title",
        max_length: int = 77,
        name: str | None = None,
        config_key: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = init_spec(self, locals())
        if mode not in MODES:
            raise ConfigError(f"{self._key(config_key, 'mode')}: must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.name = name or f"clip_{mode}"
        clip_key = self._key(config_key, "clip_path")
        self.clip = load_clip_model(clip_path, clip_key)
        self.tokenizer = load_clip_tokenizer(clip_path, clip_key) if mode != "reference" else None
        self.max_length = min(max_length, self.clip.config.text_config.max_position_embeddings)
        self.image_size, self.mean, self.std = clip_image_settings(
            Path(clip_path), self.clip.config.vision_config.image_size
        )
        self.freeze()

    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalized projected CLIP image features (B×D) of [0, 1] images, differentiable."""
        pixels = clip_preprocess(images, self.image_size, self.mean, self.std)
        # The towers are called directly (not get_image_features) because its return type changed in transformers 5.
        features = self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)
        return features / features.norm(dim=-1, keepdim=True)

    def text_features(self, titles: list[str]) -> Tensor:
        """L2-normalized projected CLIP text features (B×D) of the titles."""
        device = self.clip.logit_scale.device
        tokens = self.tokenizer(
            titles, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        output = self.clip.text_model(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        features = self.clip.text_projection(output.pooler_output)
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, images: Tensor, context: RewardContext) -> Tensor:
        """Cosine similarity per image (B), in [-1, 1]."""
        where = f"{type(self).__name__}({self.name}).forward"
        check_images(images, where)
        image_features = self.image_features(images)
        scores = []
        if self.mode in ("title", "both"):
            titles = require_titles(context, images.shape[0], where)
            scores.append((image_features * self.text_features(titles)).sum(-1))
        if self.mode in ("reference", "both"):
            reference = context.reference
            if reference is None:
                raise ValueError(f"{where}: mode {self.mode!r} needs RewardContext.reference (B x 3 x H x W), got None")
            check_images(reference, f"{where} (RewardContext.reference)")
            if reference.shape[0] != images.shape[0]:
                raise ValueError(
                    f"{where}: {reference.shape[0]} reference images for {images.shape[0]} generated images"
                )
            reference_features = self.image_features(reference.to(images.device, images.dtype))
            scores.append((image_features * reference_features).sum(-1))
        return scores[0] if len(scores) == 1 else (scores[0] + scores[1]) / 2
