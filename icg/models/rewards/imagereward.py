"""ImageReward relevance reward (Xu et al., NeurIPS 2023), loaded from local files only.

ICG's public relevance reward (Bian et al., EMNLP 2025): a human-preference model of text-to-image alignment and
quality. Everything comes from config paths: the official ``ImageReward.pt`` (a plain state dict, loaded strictly
with ``weights_only=True``), its ``med_config.json`` and a BERT-base-uncased vocabulary folder. The tokenizer is
built exactly as BLIP's ``init_tokenizer`` (``[DEC]`` added as bos, ``[ENC]`` as an additional special token) and
prompts are padded/truncated to 35 tokens as in ImageReward's scoring and ReFL. Pixels go through the ReFL path
(bicubic resize of the shorter side to 224, center crop, CLIP normalization) in torch ops, so the score carries a
gradient to the image.

Two backends compute the same number: ``icg`` (default; the network re-written in :mod:`icg.models.rewards.blip`,
runs on transformers 5, no torchvision) and ``package`` (the ``image-reward`` package's own ``ImageReward`` class,
for environments where it imports; it is only imported when selected).
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import BertTokenizer

from icg.ckpt import init_spec
from icg.errors import ConfigError, MissingFileError, require_path
from icg.models.image_ops import check_images, clip_preprocess
from icg.models.rewards.aesthetic import load_state_dict_file
from icg.models.rewards.base import Reward, RewardContext, require_titles
from icg.models.rewards.blip import ImageRewardModel, MedConfig

log = logging.getLogger(__name__)

BACKENDS = ("icg", "package")
CHECKPOINT_EXPECTED = "the official ImageReward.pt state dict (blip.visual_encoder.*, blip.text_encoder.*, mlp.*)"
MED_CONFIG_EXPECTED = "BLIP's med_config.json as published with ImageReward"
VOCAB_EXPECTED = "a BERT-base-uncased tokenizer folder with vocab.txt (or the vocab.txt file itself)"


def build_blip_tokenizer(tokenizer_path: str | Path, key: str = "tokenizer_path") -> BertTokenizer:
    """BLIP's ``init_tokenizer`` from a local BERT-uncased vocabulary: ``[DEC]`` bos, ``[ENC]`` extra special token.

    Args:
        tokenizer_path: a folder containing ``vocab.txt`` or the ``vocab.txt`` file.
        key: the config key quoted in errors.
    """
    path = require_path(tokenizer_path, key, VOCAB_EXPECTED)
    vocab_file = path / "vocab.txt" if path.is_dir() else path
    if not vocab_file.is_file():
        raise MissingFileError(f"{key}: {path} has no vocab.txt; expected {VOCAB_EXPECTED}")
    # bert-base-uncased's settings (lower case, accents stripped by lower-casing); only the vocabulary is read so
    # other files in the folder (a sentence-transformers tokenizer_config, say) cannot change them.
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers >= 5
        lines = vocab_file.read_text(encoding="utf-8").splitlines()
        tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)
    else:  # transformers 4 (the parity environment)
        tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")
    return tokenizer


@contextmanager
def _package_tokenizer(tokenizer: BertTokenizer):
    """Make the package's BLIP build our local tokenizer instead of fetching bert-base-uncased from a hub."""
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain  # noqa: PLC0415 - optional backend

    original = blip_pretrain.init_tokenizer
    blip_pretrain.init_tokenizer = lambda: tokenizer
    try:
        yield
    finally:
        blip_pretrain.init_tokenizer = original


class ImageRewardRelevance(Reward):
    """ImageReward score of each image for its title; higher means better text alignment and quality.

    Score range: standardized, roughly N(0, 1) over SD 1.4 samples (about 98 % within [-2, 2]); negative scores are
    normal. With random tiny weights the scale is meaningless.

    Args:
        checkpoint_path: the official ``ImageReward.pt`` (a state dict; loaded strictly, ``weights_only=True``).
        med_config_path: the ``med_config.json`` published with it.
        tokenizer_path: BERT-base-uncased vocabulary folder (``vocab.txt``) or file.
        backend: ``icg`` (icg's re-implementation) or ``package`` (the ``image-reward`` package's model class).
        max_length: prompt token budget; 35 as in ImageReward.
        name: metric name (``val/reward/<name>``).
        config_key: where this reward sits in the config, prefixed to the parameter name in error messages.
    """

    name = "imagereward"

    def __init__(
        self,
        checkpoint_path: str,
        med_config_path: str,
        tokenizer_path: str,
        backend: str = "icg",
        max_length: int = 35,
        name: str = "imagereward",
        config_key: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = init_spec(self, locals())
        self.name = name
        if backend not in BACKENDS:
            raise ConfigError(f"{self._key(config_key, 'backend')}: must be one of {BACKENDS}, got {backend!r}")
        ckpt_key = self._key(config_key, "checkpoint_path")
        med_key = self._key(config_key, "med_config_path")
        ckpt_file = require_path(checkpoint_path, ckpt_key, CHECKPOINT_EXPECTED, kind="file")
        med_file = require_path(med_config_path, med_key, MED_CONFIG_EXPECTED, kind="file")
        self.tokenizer = build_blip_tokenizer(tokenizer_path, self._key(config_key, "tokenizer_path"))
        self.config = MedConfig.from_json(med_file, med_key)
        if len(self.tokenizer) > self.config.vocab_size:
            raise ConfigError(
                f"{self._key(config_key, 'tokenizer_path')}: the tokenizer has {len(self.tokenizer)} tokens but "
                f"{med_key} ({med_file}) declares vocab_size {self.config.vocab_size}"
            )
        self.backend = backend
        self.max_length = max_length
        state = load_state_dict_file(ckpt_file, ckpt_key)
        self.model = self._build(backend, med_file)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ConfigError(
                f"{ckpt_key}: {ckpt_file} does not match the ImageReward layout of {med_key} ({med_file}): {err}"
            ) from err
        log.info("loaded ImageReward (%s backend) from %s", backend, ckpt_file)
        self.freeze()

    def _build(self, backend: str, med_file: Path) -> nn.Module:
        if backend == "icg":
            return ImageRewardModel(self.config)
        try:
            from ImageReward.ImageReward import ImageReward as PackageImageReward  # noqa: PLC0415
        except ImportError as err:
            raise ImportError(
                "backend='package' needs the image-reward package importable (it does not import on transformers 5; "
                "see docs/rewards.md); use backend='icg'"
            ) from err
        with _package_tokenizer(self.tokenizer):
            return PackageImageReward(med_config=str(med_file), device="cpu")

    def tokenize(self, titles: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (B×max_length) for the titles, as ImageReward pads them."""
        tokens = self.tokenizer(
            titles, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    def forward(self, images: Tensor, context: RewardContext) -> Tensor:
        """Standardized ImageReward score per image (B), see the class docstring for its range."""
        where = f"{type(self).__name__}.forward"
        check_images(images, where)
        titles = require_titles(context, images.shape[0], where)
        input_ids, attention_mask = self.tokenize(titles, images.device)
        pixels = clip_preprocess(images, self.config.image_size)
        if self.backend == "icg":
            return self.model(input_ids, attention_mask, pixels)
        # The package builds its image mask on self.device; keep it where the images are.
        self.model.device = images.device
        return self.model.score_gard(input_ids, attention_mask, pixels).squeeze(-1)
