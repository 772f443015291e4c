"""Loading CLIP (Radford et al., 2021) from a local ``save_pretrained`` folder, or building a tiny one from config.

ICG's aesthetic reward (LAION predictor on CLIP ViT-L/14 embeddings), its CLIP relevance/fidelity reward and the
CLIP-style image encoder of the preference model all start here. Nothing is ever fetched: a path that is missing or
not a CLIP folder raises FileNotFoundError naming the config key and the files expected. The tiny builders write the
exact on-disk layout of a real checkpoint (``CLIPModel.save_pretrained`` + a ``CLIPTokenizer`` saved alongside, with
a small byte-level BPE vocabulary written here, since no PyPI package we depend on ships CLIP's), so tests and the
demo load through the same code path as the real config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from icg.errors import MissingFileError, require_path
from icg.models.image_ops import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

CLIP_EXPECTED = "a CLIP save_pretrained folder (config.json, model.safetensors, tokenizer files)"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def _clip_dir(path: str | Path, key: str) -> Path:
    folder = require_path(path, key, CLIP_EXPECTED, kind="dir")
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{key}: {folder} has no config.json; expected {CLIP_EXPECTED}")
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")) and not any(
        folder.glob("model*.safetensors*")
    ):
        raise MissingFileError(f"{key}: {folder} has no model.safetensors; expected {CLIP_EXPECTED}")
    return folder


def load_clip_model(path: str | Path, key: str = "clip_path") -> CLIPModel:
    """The full CLIP model (both towers and projections) from a local folder, float32, frozen, eval."""
    folder = _clip_dir(path, key)
    model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    log.info("loaded CLIP from %s (%s)", folder, key)
    return model.requires_grad_(False).eval()


def load_clip_vision(path: str | Path, key: str = "clip_path") -> CLIPVisionModelWithProjection:
    """Only the vision tower + visual projection of a full CLIP folder (what image-only users need), frozen."""
    folder = _clip_dir(path, key)
    config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    vision_config = config.vision_config
    # Older CLIP folders keep projection_dim only at the top level; the vision config's default (512) would not fit.
    vision_config.projection_dim = config.projection_dim
    # The text tower's weights are in the same file by design; hide transformers' "unexpected keys" report for them.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(
            folder, config=vision_config, local_files_only=True, dtype=torch.float32
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    log.info("loaded CLIP vision tower from %s (%s)", folder, key)
    return model.requires_grad_(False).eval()


def load_clip_tokenizer(path: str | Path, key: str = "clip_path") -> CLIPTokenizer:
    """The CLIPTokenizer saved in the CLIP folder (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``)."""
    folder = require_path(path, key, CLIP_EXPECTED, kind="dir")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise MissingFileError(
            f"{key}: {folder} has no tokenizer files (tokenizer.json or vocab.json + merges.txt); "
            f"expected {CLIP_EXPECTED}"
        )
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def clip_image_settings(path: str | Path, image_size: int) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) for a CLIP folder: its ``preprocessor_config.json`` if any, else CLIP's defaults.

    Args:
        path: the CLIP folder.
        image_size: the vision config's ``image_size`` (used when no preprocessor config is saved).
    """
    proc = Path(path) / "preprocessor_config.json"
    if not proc.is_file():
        return image_size, CLIP_MEAN, CLIP_STD
    cfg = json.loads(proc.read_text())
    crop = cfg.get("crop_size", image_size)
    size = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    return int(size), tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))


# ----------------------------------------------------------------------------------------------- tiny, from config


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2's reversible byte -> printable-unicode table (256 symbols), the base alphabet of its BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


# A few merges so that common words become single tokens, as with a real BPE; the rest splits into characters.
_TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "f</w>"), ("i", "n</w>")]


def build_tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer over a 520-entry byte-level BPE vocabulary: CLIP's real tokenization rules, tiny vocab."""
    vocab: dict[str, int] = {}
    alphabet = _bytes_to_unicode()
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    for symbol in alphabet:
        vocab[symbol + "</w>"] = len(vocab)
    for left, right in _TINY_MERGES:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab, list(_TINY_MERGES))


def tiny_clip_config(
    vocab_size: int = 520,
    hidden_size: int = 32,
    projection_dim: int = 16,
    image_size: int = 32,
    patch_size: int = 8,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 77,
    bos_token_id: int = 518,
    eos_token_id: int = 519,
) -> CLIPConfig:
    """A CLIPConfig with tiny towers (defaults match :func:`build_tiny_clip_tokenizer`'s special-token ids)."""
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        projection_dim=projection_dim,
    )
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def save_tiny_clip(directory: str | Path, seed: int = 0, **config_kwargs: int) -> Path:
    """Write a random tiny CLIP in the real layout: ``CLIPModel.save_pretrained`` + the tokenizer alongside.

    Args:
        directory: the folder to create (what a config's ``clip_path`` would name).
        seed: weight initialization seed.
        **config_kwargs: overrides for :func:`tiny_clip_config` (hidden_size, projection_dim, image_size, ...).
    """
    directory = Path(directory)
    tokenizer = build_tiny_clip_tokenizer()
    config = tiny_clip_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config_kwargs,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
