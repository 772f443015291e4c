"""The base diffusion model's own text encoder, frozen: titles -> the prompt part of the UNet's conditioning.

ICG's adapter tokens can either replace the base model's prompt (MetaQuery-style) or be appended to it, as
IP-Adapter does with its image tokens: ``encoder_hidden_states = [prompt states of the title ; adapter tokens]``.
Appending starts stage 3 from what the base model already does with the title, so the adapter only has to learn
what the title does not say (the reference cover, the user) and the reward alignment starts from relevant covers.
:class:`PromptEncoder` is that prompt half, read from the same local diffusers folder as the UNet:

* SD 1.5 layout: ``tokenizer/`` + ``text_encoder/`` (CLIP), encoded exactly as ``StableDiffusionPipeline`` does
  (padded to the tokenizer's 77 tokens, last hidden state, no attention mask);
* the demo's stand-in base model: ``title_encoder/`` (``icg.models.title_tokens.TitleTokenEncoder``, with a mask);
* ``tiny``: a seeded random ``TitleTokenEncoder`` built from config, for tests.

SDXL's two text encoders (and the pooled vector they make) are not supported here: SDXL runs adapter-only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from icg import ckpt
from icg.diffusion.conditioning import Conditioning
from icg.errors import ConfigError, MissingFileError
from icg.models.title_tokens import TITLE_ENCODER_DIR, TitleTokenEncoder, load_title_encoder


class PromptEncoder(nn.Module):
    """Frozen ``titles -> Conditioning`` (B x L x C prompt states, mask where the encoder has one).

    Args:
        path: local diffusers folder holding ``tokenizer/`` + ``text_encoder/`` (SD 1.5) or ``title_encoder/`` (the
            demo's stand-in base model); usually the same folder as ``model.init_args.diffusion.path``.
        tiny: keyword arguments of ``TitleTokenEncoder`` for a seeded random encoder (tests); only without ``path``.
        seed: seed of the ``tiny`` encoder's weights.
        config_key: the config key of ``path``, named in errors.
    """

    def __init__(
        self,
        path: str | None = None,
        tiny: dict | None = None,
        seed: int = 0,
        config_key: str = "model.init_args.conditioner.init_args.title_prompt.init_args.path",
    ) -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        if (path is None) == (tiny is None):
            raise ConfigError(f"{config_key}: give either a diffusers folder (path) or tiny: {{...}}, not both/neither")
        self.tokenizer = None
        if tiny is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.encoder: nn.Module = TitleTokenEncoder(**tiny)
        else:
            self.encoder, self.tokenizer = _load(Path(path), config_key)
        ckpt.freeze(self.encoder)

    @property
    def width(self) -> int:
        """C, the width of the prompt states (must equal the UNet's cross-attention width)."""
        if isinstance(self.encoder, TitleTokenEncoder):
            return self.encoder.dim
        return int(self.encoder.config.hidden_size)

    def train(self, mode: bool = True) -> PromptEncoder:
        super().train(mode)
        self.encoder.eval()  # frozen: never dropout, whatever the surrounding module's mode
        return self

    def forward(self, titles: list[str]) -> Conditioning:
        titles = list(titles)
        if self.tokenizer is None:
            states, mask = self.encoder(titles)[:2]
            # No mask where nothing is padding (an encoder with padding="attended"): the UNet call, and a stock
            # diffusers pipeline given these states as prompt_embeds, then compute exactly the same thing.
            return Conditioning(states, None if bool(mask.all()) else mask.long())
        device = next(self.encoder.parameters()).device
        ids = self.tokenizer(
            titles,
            padding="max_length",
            max_length=min(self.tokenizer.model_max_length, self.encoder.config.max_position_embeddings),
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return Conditioning(self.encoder(ids)[0])


def _load(folder: Path, config_key: str) -> tuple[nn.Module, object | None]:
    if (folder / TITLE_ENCODER_DIR).is_dir():
        return load_title_encoder(folder, config_key), None
    if (folder / "text_encoder_2").is_dir():
        raise ConfigError(
            f"{config_key}={folder} is an SDXL folder: its two text encoders are not supported as the title prompt; "
            "leave model.init_args.conditioner.init_args.title_prompt unset (SDXL runs adapter-only)"
        )
    missing = [name for name in ("tokenizer", "text_encoder") if not (folder / name).is_dir()]
    if missing:
        raise MissingFileError(
            f"{config_key}={folder}: no text encoder to read the title with; expected tokenizer/ + text_encoder/ "
            f"(an SD 1.5 diffusers folder) or {TITLE_ENCODER_DIR}/ (the demo's stand-in base model); missing: "
            f"{', '.join(missing)}"
        )
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    return encoder, tokenizer
