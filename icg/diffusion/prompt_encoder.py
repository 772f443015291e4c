"""The base diffusion model's own text encoder(s), frozen: titles -> the prompt part of the denoiser's conditioning.

ICG's adapter tokens can either replace the base model's prompt (MetaQuery-style) or be appended to it, as
IP-Adapter does with its image tokens: ``encoder_hidden_states = [prompt states of the title ; adapter tokens]``.
Appending starts stage 3 from what the base model already does with the title, so the adapter only has to learn
what the title does not say (the reference cover, the user) and the reward alignment starts from relevant covers.
:class:`PromptEncoder` is that prompt half, read from the same local diffusers folder as the denoiser, and encodes
exactly as the base model's diffusers pipeline does (tests/diffusion/test_prompt_encoder.py compares each with
``encode_prompt``):

* SD 1.5 layout: ``tokenizer/`` + ``text_encoder/`` (CLIP), as ``StableDiffusionPipeline`` (padded to 77 tokens,
  last hidden state, no attention mask);
* SDXL layout: ``tokenizer(_2)/`` + ``text_encoder/`` (CLIP-L) + ``text_encoder_2/`` (OpenCLIP-bigG with projection), as
  ``StableDiffusionXLPipeline``: both encoders' penultimate hidden states side by side (768 + 1280 = 2048-d) and
  ``text_encoder_2``'s projected pooled vector (1280-d);
* Flux layout: ``tokenizer/`` + ``text_encoder/`` (CLIP-L: its pooled output, 768-d) and ``tokenizer_2/`` +
  ``text_encoder_2/`` (T5: the token stream, 4096-d, ``max_length`` tokens), as ``FluxPipeline``;
* the demo's stand-in base model: ``title_encoder/`` (``icg.diffusion.title_tokens.TitleTokenEncoder``, with a mask);
* ``tiny``: a seeded random ``TitleTokenEncoder`` built from config, for tests.

The family (``icg.diffusion.bases``) is read from the folder -- one text encoder is SD 1.5; a ``text_encoder_2/`` is
the family whose ``reads_text_encoder_2`` accepts its architecture -- and does the loading and the encoding; this
class never branches on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from icg import ckpt
from icg.diffusion.bases import FAMILIES, Family, get_family
from icg.diffusion.bases.flux import FLUX_MAX_LENGTH
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.title_tokens import TITLE_ENCODER_DIR, TitleTokenEncoder, load_title_encoder
from icg.errors import ConfigError, MissingFileError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PromptEncoder(nn.Module):
    """Frozen ``titles -> Conditioning`` (B x L x C prompt states, the pooled vector where the base has one, a mask
    where the encoder has one).

    Args:
        path: local diffusers folder holding the base model's tokenizer(s) and text encoder(s) (SD 1.5, SDXL or Flux
            layout) or ``title_encoder/`` (the demo's stand-in base model); usually the same folder as
            ``model.init_args.diffusion.path``.
        tiny: keyword arguments of ``TitleTokenEncoder`` for a seeded random encoder (tests); only without ``path``.
        seed: seed of the ``tiny`` encoder's weights.
        max_length: T5 tokens of a Flux title (None: FluxPipeline's 512; titles are short, 128 is plenty); other
            layouts take their tokenizer's length and refuse this argument.
        dtype: weight dtype of the text encoders read from ``path`` (``float32``, ``bfloat16``, ``float16``; None:
            float32). Flux's T5-XXL takes 19 GB in float32, 9.5 GB in bfloat16 (its usual dtype; it overflows in fp16).
        config_key: the config key of ``path``, named in errors.
    """

    def __init__(
        self,
        path: str | None = None,
        tiny: dict | None = None,
        seed: int = 0,
        max_length: int | None = None,
        dtype: str | None = None,
        config_key: str = "model.init_args.conditioner.init_args.title_prompt.init_args.path",
    ) -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        if (path is None) == (tiny is None):
            raise ConfigError(f"{config_key}: give either a diffusers folder (path) or tiny: {{...}}, not both/neither")
        prefix = config_key.rsplit(".", 1)[0]
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigError(f"{prefix}.dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
        self.tokenizer = self.tokenizer_2 = None
        self.encoder_2: nn.Module | None = None
        # The base family whose text encoders these are; None for a TitleTokenEncoder (tiny, the demo's stand-in).
        self.family: Family | None = None
        if tiny is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.encoder: nn.Module = TitleTokenEncoder(**tiny)
        else:
            loaded = _load(Path(path), config_key, _DTYPES[dtype] if dtype else None)
            self.family, self.encoder, self.tokenizer, self.encoder_2, self.tokenizer_2 = loaded
        if max_length is not None and not (self.family is not None and self.family.takes_max_length):
            raise ConfigError(f"{prefix}.max_length={max_length}: only a Flux title prompt (T5) takes a length")
        self.max_length = max_length or FLUX_MAX_LENGTH
        for encoder in (self.encoder, self.encoder_2):
            if encoder is not None:
                ckpt.freeze(encoder)

    @property
    def width(self) -> int:
        """C, the width of the prompt states (must equal the denoiser's token-stream width)."""
        return self.encoder.dim if self.family is None else self.family.prompt_width(self)

    @property
    def pooled_dim(self) -> int | None:
        """The width of the pooled vector the prompt gives (SDXL: ``text_encoder_2``'s projection; Flux: CLIP's
        pooled output), None where it gives none."""
        return None if self.family is None else self.family.prompt_pooled_dim(self)

    def train(self, mode: bool = True) -> PromptEncoder:
        super().train(mode)
        for encoder in (self.encoder, self.encoder_2):
            if encoder is not None:
                encoder.eval()  # frozen: never dropout, whatever the surrounding module's mode
        return self

    def token_ids(self, tokenizer, titles: list[str], max_length: int) -> torch.Tensor:
        """``titles`` tokenized as diffusers' pipelines do (padded to ``max_length``), on the encoders' device."""
        device = next(self.encoder.parameters()).device
        return tokenizer(
            titles, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)

    def forward(self, titles: list[str]) -> Conditioning:
        titles = list(titles)
        if self.tokenizer is None:
            states, mask = self.encoder(titles)[:2]
            # No mask where nothing is padding (an encoder with padding="attended"): the UNet call, and a stock
            # diffusers pipeline given these states as prompt_embeds, then compute exactly the same thing.
            return Conditioning(states, None if bool(mask.all()) else mask.long())
        return self.family.encode_prompt(self, titles)


def _architecture(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    return " ".join(config.get("architectures") or []) + " " + str(config.get("model_type", ""))


def _load(
    folder: Path, config_key: str, dtype: torch.dtype | None = None
) -> tuple[Family | None, nn.Module, object, nn.Module | None, object]:
    """(family, encoder, tokenizer, encoder_2, tokenizer_2) of a base model folder, encoders in ``dtype``; no family
    for the demo's stand-in title encoder."""
    if (folder / TITLE_ENCODER_DIR).is_dir():
        return None, load_title_encoder(folder, config_key), None, None, None
    two = (folder / "text_encoder_2").is_dir()
    names = ("tokenizer", "text_encoder") + (("tokenizer_2", "text_encoder_2") if two else ())
    missing = [name for name in names if not (folder / name).is_dir()]
    if missing:
        raise MissingFileError(
            f"{config_key}={folder}: no text encoder to read the title with; expected tokenizer/ + text_encoder/ "
            f"(SD 1.5), + tokenizer_2/ + text_encoder_2/ (SDXL, Flux), or {TITLE_ENCODER_DIR}/ (the demo's stand-in "
            f"base model); missing: {', '.join(missing)}"
        )
    family = get_family("sd15")
    if two:
        second = _architecture(folder / "text_encoder_2")
        matches = [f for f in FAMILIES.values() if f.reads_text_encoder_2(second)]
        if not matches:
            raise ConfigError(
                f"{config_key}={folder}: text_encoder_2/ holds {second.strip() or 'an unknown model'}; expected "
                "CLIPTextModelWithProjection (SDXL) or T5EncoderModel (Flux)"
            )
        family = matches[0]
    return (family, *family.load_text_encoders(folder, dtype))
