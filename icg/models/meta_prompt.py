"""MLLM-based prompting with learnable meta tokens (ICG step 1; Bian et al., EMNLP 2025).

A multimodal LLM of the Qwen2-VL class reads a prompt built from the item's title and its reference image, followed
by N learnable *meta tokens*; the last hidden states at the meta-token positions are the item's semantic features
(B x N x D). This is the MetaQuery recipe (Pan et al., 2025: frozen MLLM + learnable queries read out at the last
layer). The MLLM is frozen by default, optionally adapted with peft LoRA on its language model's attention.

Two ways to get the MLLM, both offline:

* ``mllm_path``: a local folder holding a Qwen2-VL / Qwen2.5-VL checkpoint (``config.json`` + weights), its
  tokenizer and ``preprocessor_config.json``, loaded through the transformers Auto classes;
* ``tiny_config``: a tiny Qwen2-VL built from config with seeded random weights and a byte-level tokenizer made with
  the ``tokenizers`` library (no download), for tests and the demo.

Pixels never go through PIL: the reference image (a [0, 1] tensor) is resized and normalized with torch ops and cut
into the exact patch layout of ``Qwen2VLImageProcessor`` (14 px patches, temporal patch 2, 2 x 2 merge), so the
whole path stays on the device. Prompts are tokenized per row and padded here, so the meta tokens of every row sit
right after that row's prompt with left or right padding alike; multimodal RoPE positions come from the model's own
``get_rope_index``, computed on the unpadded tokens of each row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg import ckpt
from icg.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    from icg.models.feature_cache import MLLMFeatureCache

log = logging.getLogger(__name__)

#: Qwen chat layout; ``{image}`` becomes ``<|vision_start|><|image_pad|>...<|vision_end|>``, ``{title}`` the title.
DEFAULT_PROMPT_TEMPLATE = (
    "<|im_start|>system\nYou are a designer of cover images.<|im_end|>\n"
    "<|im_start|>user\n{image}Title: {title}\n"
    "Describe the cover image that best presents this item.<|im_end|>\n"
    "<|im_start|>assistant\n"
)

IMAGE_TOKEN = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", VISION_START, VISION_END, IMAGE_TOKEN, "<|video_pad|>")

#: Defaults of the tiny Qwen2-VL; ``tiny_config`` overrides any of these keys (~95k parameters as given).
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vision_depth": 1,
    "vision_embed_dim": 32,
    "vision_num_heads": 4,
    "vision_mlp_ratio": 2,
    "seed": 0,
}
# The Qwen2-VL vision tower's geometry is fixed by its processor; the tiny model keeps the real one.
_PATCH, _TEMPORAL_PATCH, _MERGE = 14, 2, 2
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MetaTokenPrompter(nn.Module):
    """A Qwen2-VL-class MLLM plus N learnable meta tokens -> B x N x D item features.

    Args:
        mllm_path: local folder with a Qwen2-VL-class model, its tokenizer and ``preprocessor_config.json``.
        tiny_config: build a tiny Qwen2-VL from config instead (keys of ``TINY_DEFAULTS``; ``{}`` for the defaults).
        num_meta_tokens: N, the number of learnable meta tokens appended after the prompt.
        prompt_template: prompt text with one ``{image}`` and one ``{title}`` placeholder.
        image_size: side in pixels the reference image is resized to (square, a multiple of 28, at least 56).
        lora_rank: peft LoRA rank on the language model's attention projections; 0 keeps the MLLM fully frozen.
        lora_alpha: LoRA scaling numerator (scale = alpha / rank).
        freeze_meta_tokens: keep the meta tokens fixed (then nothing here trains and features can be cached).
        padding_side: where prompts of different length are padded, ``"left"`` or ``"right"``.
        mllm_dtype: dtype the MLLM weights are held in (``float32``, ``bfloat16``, ``float16``); features are
            returned as float32.
        config_key: the config key of ``mllm_path``, quoted in every error about it.
        meta_token_seed: draw the meta tokens' initial values from this seed alone (``seeded_meta_tokens``), e.g. the
            draw an MLLM was trained to read through (the demo's stand-in); None: from the global generator.
    """

    def __init__(  # noqa: PLR0913  # a module constructor the stage-3 config sets (class_path/init_args)
        self,
        mllm_path: str | None = None,
        tiny_config: dict | None = None,
        num_meta_tokens: int = 16,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        image_size: int = 336,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        freeze_meta_tokens: bool = False,
        padding_side: str = "left",
        mllm_dtype: str = "float32",
        config_key: str = "model.init_args.conditioner.init_args.prompter.init_args.mllm_path",
        meta_token_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        _check_args(mllm_path, tiny_config, num_meta_tokens, prompt_template, image_size, lora_rank, padding_side)
        if mllm_dtype not in _DTYPES:
            raise ConfigError(f"mllm_dtype={mllm_dtype!r}: expected one of {sorted(_DTYPES)}")
        self.num_meta_tokens = num_meta_tokens
        self.prompt_template = prompt_template
        self.image_size = image_size
        self.lora_rank = lora_rank
        self.padding_side = padding_side
        if mllm_path is not None:
            model, tokenizer, pixel_cfg, identity = _load_local(mllm_path, _DTYPES[mllm_dtype], config_key)
        else:
            model, tokenizer, pixel_cfg, identity = _build_tiny(tiny_config or {}, _DTYPES[mllm_dtype])
        self._identity = identity
        self.tokenizer = tokenizer
        self._pixel_cfg = pixel_cfg
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_token_id:
            raise ConfigError(
                f"{config_key}: the tokenizer maps {IMAGE_TOKEN} to {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)} "
                f"but the model's config.image_token_id is {self.image_token_id}; tokenizer and model do not match"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ConfigError(f"{config_key}: the tokenizer has neither a pad nor an eos token to pad prompts with")
        self.pad_token_id = int(pad)
        merge = pixel_cfg["merge_size"]
        self.num_image_tokens = (image_size // pixel_cfg["patch_size"] // merge) ** 2
        self.hidden_size = int(model.get_input_embeddings().embedding_dim)

        model.requires_grad_(False)
        model.eval()
        if lora_rank > 0:
            model = _add_lora(model, lora_rank, lora_alpha)
        self.mllm = model
        # Start meta tokens at the scale of real token embeddings so the MLLM sees in-distribution inputs.
        std = float(self._core().get_input_embeddings().weight.float().std())
        self.meta_tokens = nn.Parameter(seeded_meta_tokens(num_meta_tokens, self.hidden_size, meta_token_seed, std))
        self.meta_tokens.requires_grad_(not freeze_meta_tokens)
        self._template_pieces = self._tokenize_template(prompt_template)
        self._key_memo: tuple[tuple, str] | None = None

    # ----------------------------------------------------------------------------------------------- plumbing
    def _core(self) -> nn.Module:
        """The underlying Qwen2-VL-class model, under a peft wrapper when LoRA is on."""
        return self.mllm.get_base_model() if hasattr(self.mllm, "get_base_model") else self.mllm

    def train(self, mode: bool = True) -> MetaTokenPrompter:
        # The MLLM always runs as at inference (no dropout), trained or not: LoRA only adds low-rank deltas.
        super().train(mode)
        self.mllm.eval()
        return self

    def _tokenize_template(self, template: str) -> list[list[int] | str]:
        return tokenize_template(self.tokenizer, template)

    def prompt_ids(self, title: str) -> list[int]:
        """The token ids of one title's filled-in prompt template (image placeholders expanded), before the meta tokens.

        Args:
            title: the item title; special-token strings in it are spelled out as text.
        """
        return fill_prompt(self.tokenizer, self._template_pieces, title, self.num_image_tokens)

    def pixel_values(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Qwen2-VL ``pixel_values`` (sum of patches x C*T*P*P) and ``image_grid_thw`` (B x 3) from [0, 1] images.

        Matches ``Qwen2VLImageProcessor`` on an image already at ``image_size`` (resize is bicubic with antialias
        here, PIL bicubic there).
        """
        return qwen2vl_pixel_values(images, self._pixel_cfg, self.image_size)

    def batch_inputs(self, titles: list[str]) -> dict[str, Tensor]:
        """The padded batch the MLLM reads: each row's prompt ids followed by ``num_meta_tokens`` meta positions.

        Rows are padded on ``padding_side``. Returns ``input_ids``, ``attention_mask``, ``meta_mask`` (True at each
        row's meta positions) and ``mm_token_type_ids``, all B x L on the CPU.

        Args:
            titles: one title per row.
        """
        rows = [self.prompt_ids(t) for t in titles]
        return meta_batch(rows, self.num_meta_tokens, self.pad_token_id, self.image_token_id, self.padding_side)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, titles: list[str], images: Tensor) -> Tensor:
        """Features at the meta-token positions.

        Args:
            titles: B item titles.
            images: B x 3 x H x W reference images in [0, 1].

        Returns:
            B x N x D float32 features (D = ``hidden_size``).
        """
        titles = list(titles)
        if len(titles) != images.shape[0]:
            raise ValueError(f"got {len(titles)} titles but {images.shape[0]} images")
        core = self._core()
        device = self.meta_tokens.device
        batch = {k: v.to(device) for k, v in self.batch_inputs(titles).items()}
        pixel_values, grid = self.pixel_values(images.to(device))
        embed = core.get_input_embeddings()
        inputs_embeds = embed(batch["input_ids"])
        b, n, d = len(titles), self.num_meta_tokens, self.hidden_size
        meta = self.meta_tokens.to(inputs_embeds.dtype).unsqueeze(0).expand(b, n, d)
        # masked_scatter fills True positions in row-major order: row i's N slots get row i's copy of the tokens.
        inputs_embeds = inputs_embeds.masked_scatter(batch["meta_mask"].unsqueeze(-1), meta)
        # Positions from the model's own M-RoPE rule, on each row's unpadded tokens; passing them explicitly also
        # keeps the model from reusing rope deltas cached by an earlier call.
        position_ids, _ = core.get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=grid,
            attention_mask=batch["attention_mask"],
        )
        out = self.mllm(
            inputs_embeds=inputs_embeds,
            attention_mask=batch["attention_mask"],
            position_ids=position_ids,
            pixel_values=pixel_values.to(inputs_embeds.dtype),
            image_grid_thw=grid,
            mm_token_type_ids=batch["mm_token_type_ids"],
            use_cache=False,
        )
        hidden = out.last_hidden_state
        return hidden[batch["meta_mask"]].view(b, n, d).float()

    def forward_cached(self, item_ids: list[str], titles: list[str], images: Tensor, cache: MLLMFeatureCache) -> Tensor:
        """``forward`` through an on-disk per-item cache; the MLLM runs only for items not cached yet.

        Valid only while nothing here trains (frozen meta tokens, no LoRA being trained): the cache's key must equal
        ``cache_key()``, so features computed under other weights, prompt or image size are never served.
        """
        if any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(
                "forward_cached needs a fully frozen prompter: set freeze_meta_tokens=true and lora_rank=0 "
                "(cached features cannot carry gradients)"
            )
        key = self.cache_key()
        if cache.model_key != key:
            raise ValueError(f"feature cache key {cache.model_key!r} != this prompter's cache_key() {key!r}")
        titles = list(titles)

        def compute(idx: list[int]) -> Tensor:
            with torch.no_grad():
                return self([titles[i] for i in idx], images[idx])

        return cache.get_or_compute(list(item_ids), compute, device=self.meta_tokens.device)

    # ----------------------------------------------------------------------------------------------- caching
    def cache_key_parts(self) -> dict[str, Any]:
        """What the features depend on, as plain data: the MLLM's identity, prompt, image size and trained values."""
        trained = hashlib.sha256()
        for name, tensor in self._trained_tensors():
            trained.update(name.encode())
            trained.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return {
            "mllm": self._identity,
            "mllm_dtype": self.spec["init_args"]["mllm_dtype"],
            "prompt_template": self.prompt_template,
            "image_size": self.image_size,
            "num_meta_tokens": self.num_meta_tokens,
            "padding_side": self.padding_side,
            "trained_values_sha256": trained.hexdigest(),
        }

    def cache_key(self) -> str:
        """A hex digest naming (model, prompt template, image size, meta-token and LoRA values)."""
        # Recomputed only when a trained tensor is replaced or modified in place (optimizer step, load_state_dict).
        stamp = tuple((n, t.data_ptr(), t._version, t.dtype) for n, t in self._trained_tensors())
        if self._key_memo is None or self._key_memo[0] != stamp:
            parts = json.dumps(self.cache_key_parts(), sort_keys=True, default=str)
            self._key_memo = (stamp, hashlib.sha256(parts.encode()).hexdigest()[:32])
        return self._key_memo[1]

    def _trained_tensors(self) -> list[tuple[str, Tensor]]:
        return [(n, p) for n, p in self.named_parameters() if n == "meta_tokens" or "lora_" in n]

    def trained_state_dict(self) -> dict[str, Tensor]:
        """Only what this module trains (meta tokens, LoRA weights): what an export needs besides the spec."""
        return {n: p.detach().clone() for n, p in self._trained_tensors()}

    def load_trained_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load ``trained_state_dict()`` output; every trained tensor must be present with its shape."""
        own = dict(self._trained_tensors())
        if set(state) != set(own):
            raise KeyError(f"trained state has keys {sorted(state)}, expected {sorted(own)}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state[name])


# --------------------------------------------------------------------------------------------- prompt layout
# Plain functions, so that whatever else reads or trains a Qwen2-VL here (the demo's stand-in MLLM) lays prompts and
# pixels out exactly as the prompter does.
def meta_batch(
    rows: list[list[int]], num_meta_tokens: int, pad_token_id: int, image_token_id: int, padding_side: str = "left"
) -> dict[str, Tensor]:
    """Prompt rows padded into one batch, each followed by ``num_meta_tokens`` meta positions: ``input_ids``,
    ``attention_mask``, ``meta_mask`` (True at each row's meta positions) and ``mm_token_type_ids``, B x L on the CPU.

    Args:
        rows: each row's prompt ids.
        num_meta_tokens: meta positions after each prompt.
        pad_token_id: the id padding (and the meta positions, which are never embedded) carry.
        image_token_id: the image placeholder's id (``mm_token_type_ids`` 1 there).
        padding_side: ``"left"`` or ``"right"``.
    """
    n = num_meta_tokens
    length = max(len(r) for r in rows) + n
    b = len(rows)
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(b, length, dtype=torch.long)
    meta_mask = torch.zeros(b, length, dtype=torch.bool)
    for i, row in enumerate(rows):
        start = length - len(row) - n if padding_side == "left" else 0
        input_ids[i, start : start + len(row)] = torch.tensor(row)
        attention_mask[i, start : start + len(row) + n] = 1
        meta_mask[i, start + len(row) : start + len(row) + n] = True
    # Meta positions keep the pad id in input_ids: it is only read for RoPE (text type) and never embedded.
    mm_token_type_ids = (input_ids == image_token_id).long() * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "meta_mask": meta_mask,
        "mm_token_type_ids": mm_token_type_ids,
    }


def seeded_meta_tokens(num: int, width: int, seed: int | None, scale: float) -> Tensor:
    """``num`` x ``width`` normal draws times ``scale`` (the prompter's meta-token initialisation) from ``seed`` alone.

    Args:
        num: tokens.
        width: the MLLM's hidden size.
        seed: a seed of its own generator (the global one is left alone); None: the global generator.
        scale: the token embeddings' standard deviation.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.randn(num, width, generator=generator) * scale


def tokenize_template(tokenizer: Any, template: str) -> list[list[int] | str]:
    """``template`` cut at ``{image}`` and ``{title}``: the fixed text as token ids, the placeholders as strings."""
    pieces: list[list[int] | str] = []
    for part in re.split(r"(\{image\}|\{title\})", template):
        if part in ("{image}", "{title}"):
            pieces.append(part)
        elif part:
            pieces.append(tokenizer(part, add_special_tokens=False)["input_ids"])
    return pieces


def fill_prompt(tokenizer: Any, pieces: list[list[int] | str], title: str, num_image_tokens: int) -> list[int]:
    """The token ids of ``tokenize_template``'s pieces with the image placeholders and ``title`` filled in.

    Args:
        tokenizer: the MLLM's tokenizer.
        pieces: ``tokenize_template(tokenizer, template)``.
        title: the item title; special-token strings in it are spelled out as text.
        num_image_tokens: ``<|image_pad|>`` tokens between ``<|vision_start|>`` and ``<|vision_end|>``.
    """
    vocab = tokenizer.convert_tokens_to_ids
    ids: list[int] = []
    for piece in pieces:
        if piece == "{image}":
            ids += [vocab(VISION_START), *[vocab(IMAGE_TOKEN)] * num_image_tokens, vocab(VISION_END)]
        elif piece == "{title}":
            # A title is user data: special-token strings inside it are spelled out, never obeyed.
            ids += tokenizer(str(title), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        else:
            ids += piece
    return ids


def qwen2vl_pixel_values(images: Tensor, pixel_cfg: dict, image_size: int) -> tuple[Tensor, Tensor]:
    """Qwen2-VL ``pixel_values`` (sum of patches x C*T*P*P) and ``image_grid_thw`` (B x 3) from [0, 1] images.

    Args:
        images: B x 3 x H x W in [0, 1], resized to ``image_size``² when they are not that size.
        pixel_cfg: ``patch_size``, ``merge_size``, ``temporal_patch_size``, ``image_mean``, ``image_std``.
        image_size: the square side the vision tower reads.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W in [0, 1], got shape {tuple(images.shape)}")
    cfg, size = pixel_cfg, image_size
    p, m, t = cfg["patch_size"], cfg["merge_size"], cfg["temporal_patch_size"]
    x = images.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(cfg["image_mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["image_std"], device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    b, c = x.shape[:2]
    g = size // p  # patches per side
    x = x.reshape(b, c, g // m, m, p, g // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)  # B, gh, gw, mh, mw, C, p, p
    x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)  # a still image is repeated over the temporal patch
    grid = torch.tensor([[1, g, g]] * b, dtype=torch.long, device=x.device)
    return x.reshape(b * g * g, c * t * p * p), grid


# --------------------------------------------------------------------------------------------------- builders
def _check_args(
    mllm_path: str | None,
    tiny_config: dict | None,
    num_meta_tokens: int,
    prompt_template: str,
    image_size: int,
    lora_rank: int,
    padding_side: str,
) -> None:
    if mllm_path is None and tiny_config is None:
        raise ConfigError(
            "mllm_path is not set: give a local folder with a Qwen2-VL-class model, tokenizer and "
            "preprocessor_config.json (or tiny_config: {} for a tiny random MLLM)"
        )
    if mllm_path is not None and tiny_config is not None:
        raise ConfigError("set either mllm_path or tiny_config, not both")
    if num_meta_tokens < 1:
        raise ConfigError(f"num_meta_tokens must be >= 1, got {num_meta_tokens}")
    for placeholder in ("{image}", "{title}"):
        if prompt_template.count(placeholder) != 1:
            raise ConfigError(f"prompt_template must contain {placeholder} exactly once: {prompt_template!r}")
    if image_size < 56 or image_size % (_PATCH * _MERGE):
        raise ConfigError(f"image_size must be a multiple of {_PATCH * _MERGE} and at least 56, got {image_size}")
    if lora_rank < 0:
        raise ConfigError(f"lora_rank must be >= 0, got {lora_rank}")
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")


def _load_local(path: str, dtype: torch.dtype, config_key: str) -> tuple[nn.Module, Any, dict, dict]:
    """Model (base, no LM head), tokenizer, pixel settings and an identity record from a local folder."""
    from safetensors import SafetensorError
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingFileError(
            f"{config_key}: {folder} is not a folder (expected a local Qwen2-VL-class checkpoint with config.json, "
            "weights, tokenizer files and preprocessor_config.json)"
        )
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise MissingFileError(f"{config_key}: {folder} has no {name}")
    try:
        model = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, SafetensorError) as err:  # a truncated or foreign weights file: SafetensorError
        raise ConfigError(f"{config_key}: cannot load a Qwen2-VL-class model from {folder}: {err}") from err
    if not hasattr(model, "get_rope_index") or not hasattr(model.config, "image_token_id"):
        raise ConfigError(f"{config_key}: {folder} holds a {type(model).__name__}, not a Qwen2-VL-class model")
    pixel_cfg = {
        "patch_size": int(image_processor.patch_size),
        "merge_size": int(image_processor.merge_size),
        "temporal_patch_size": int(image_processor.temporal_patch_size),
        "image_mean": [float(v) for v in image_processor.image_mean],
        "image_std": [float(v) for v in image_processor.image_std],
    }
    # Cheap identity for the feature cache: config + every file's name, size and modification time.
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    identity = {"path": str(folder.resolve()), "config": model.config.to_dict(), "files": files}
    return model, tokenizer, pixel_cfg, identity


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with Qwen's special tokens and no merges: covers any text, needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_TINY_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_qwen2_vl_config(tiny_config: dict, tokenizer: Any) -> Any:
    """A ``Qwen2VLConfig`` from ``TINY_DEFAULTS`` overridden by ``tiny_config``, token ids taken from ``tokenizer``."""
    from transformers import Qwen2VLConfig

    unknown = set(tiny_config) - set(TINY_DEFAULTS)
    if unknown:
        raise ConfigError(f"tiny_config: unknown keys {sorted(unknown)} (known: {sorted(TINY_DEFAULTS)})")
    c = {**TINY_DEFAULTS, **tiny_config}
    if c["hidden_size"] % c["num_attention_heads"] or c["num_attention_heads"] % c["num_key_value_heads"]:
        raise ConfigError(
            "tiny_config: hidden_size must divide by num_attention_heads, and that by num_key_value_heads"
        )
    half = c["hidden_size"] // c["num_attention_heads"] // 2
    if half < 3:
        raise ConfigError("tiny_config: hidden_size / num_attention_heads must be at least 6 for 3-axis M-RoPE")
    # M-RoPE splits each head's rotary frequencies over (time, height, width); give text-time the largest share.
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _TINY_SPECIALS}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": c["hidden_size"],
            "intermediate_size": c["intermediate_size"],
            "num_hidden_layers": c["num_hidden_layers"],
            "num_attention_heads": c["num_attention_heads"],
            "num_key_value_heads": c["num_key_value_heads"],
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": c["vision_depth"],
            "embed_dim": c["vision_embed_dim"],
            "hidden_size": c["hidden_size"],
            "num_heads": c["vision_num_heads"],
            "mlp_ratio": c["vision_mlp_ratio"],
            "patch_size": _PATCH,
            "spatial_merge_size": _MERGE,
            "temporal_patch_size": _TEMPORAL_PATCH,
        },
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
    )


def tiny_pixel_config() -> dict:
    """The tiny MLLM's pixel settings: the real Qwen2-VL patch geometry and CLIP's mean and std."""
    return {
        "patch_size": _PATCH,
        "merge_size": _MERGE,
        "temporal_patch_size": _TEMPORAL_PATCH,
        "image_mean": list(_OPENAI_CLIP_MEAN),
        "image_std": list(_OPENAI_CLIP_STD),
    }


def _build_tiny(tiny_config: dict, dtype: torch.dtype) -> tuple[nn.Module, Any, dict, dict]:
    from transformers import Qwen2VLModel

    tokenizer = tiny_tokenizer()
    config = tiny_qwen2_vl_config(dict(tiny_config), tokenizer)
    seed = int({**TINY_DEFAULTS, **tiny_config}["seed"])
    # Seeded, so the tiny MLLM is a pure function of its config (the feature cache relies on that).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLModel(config).to(dtype)
    pixel_cfg = tiny_pixel_config()
    identity = {"tiny_config": {**TINY_DEFAULTS, **tiny_config}, "transformers_config": config.to_dict()}
    return model, tokenizer, pixel_cfg, identity


def save_tiny_mllm(folder: str | Path, tiny_config: dict | None = None) -> Path:
    """Write the tiny Qwen2-VL as a local checkpoint folder that ``mllm_path`` loads (tests, demo, benchmarks).

    The layout is that of a real Qwen2-VL release: a ``Qwen2VLForConditionalGeneration`` (with its LM head),
    ``tokenizer.json`` and ``preprocessor_config.json``.
    """
    from transformers import Qwen2VLForConditionalGeneration

    model, tokenizer, pixel_cfg, _ = _build_tiny(tiny_config or {}, torch.float32)
    full = Qwen2VLForConditionalGeneration(model.config)
    full.model.load_state_dict(model.state_dict())
    return write_qwen2vl_folder(folder, full, tokenizer, pixel_cfg)


def write_qwen2vl_folder(folder: str | Path, model: nn.Module, tokenizer: Any, pixel_cfg: dict) -> Path:
    """Write a ``Qwen2VLForConditionalGeneration``, its tokenizer and its image processor as a local release folder.

    Args:
        folder: the folder to write (created; files already in it are overwritten).
        model: the model with its LM head.
        tokenizer: its tokenizer (``tokenizer.json`` and its config are written).
        pixel_cfg: ``tiny_pixel_config()``-style settings, written as ``preprocessor_config.json``.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(
        patch_size=pixel_cfg["patch_size"],
        merge_size=pixel_cfg["merge_size"],
        temporal_patch_size=pixel_cfg["temporal_patch_size"],
        image_mean=pixel_cfg["image_mean"],
        image_std=pixel_cfg["image_std"],
    ).save_pretrained(folder)
    return folder


def _add_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("lora_rank > 0 needs peft: pip install 'icg[lora]'") from err
    # q/k/v/o_proj name only the language model's attention (the vision tower uses qkv/proj).
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    return get_peft_model(model, config)
