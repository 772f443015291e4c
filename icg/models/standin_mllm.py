"""The demo's stand-in MLLM: a small Qwen2-VL trained to name an item's title words where the meta tokens sit.

ICG's first step (Bian et al., EMNLP 2025) reads an item through a frozen Qwen2-VL-class MLLM and learnable meta
tokens (``icg.models.meta_prompt``). A real Qwen2-VL has learned to read titles and photos; a randomly initialised
tiny one reads nothing, so its meta-token features say little about the item. No pretrained MLLM exists for the
synthetic platform, so the demo trains one, as it trains its stand-in base model: the same model class as a real
release (``Qwen2VLForConditionalGeneration``, built small from ``tiny_qwen2_vl_config``), saved as an ordinary local
folder that ``MetaTokenPrompter(mllm_path=...)`` loads like a downloaded release.

It reads the prompt the prompter builds, followed by ``num_slots`` positions holding one fixed seeded draw of meta
tokens (the MetaQuery layout: queries after the prompt, read at the last layer), and is trained so that at every slot
its own LM head names the title's words (``naming_loss``). What the slots' last hidden states carry is then what
stage 3's adapter reads. Its tokenizer is word-level (``word_tokenizer``): a colour or a shape is one token, which a
model this small can copy from the title or name from the cover; with Qwen's byte-level tokens it could do neither
in the demo's budget (docs/prompting.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icg import ckpt
from icg.models.meta_prompt import (
    _TINY_SPECIALS,
    DEFAULT_PROMPT_TEMPLATE,
    IMAGE_TOKEN,
    TINY_DEFAULTS,
    fill_prompt,
    meta_batch,
    qwen2vl_pixel_values,
    seeded_meta_tokens,
    tiny_pixel_config,
    tiny_qwen2_vl_config,
    tokenize_template,
    write_qwen2vl_folder,
)

log = logging.getLogger(__name__)
UNKNOWN = "[UNK]"


def held_out_items(item_ids: list[str], fraction: float) -> list[bool]:
    """Which items the stand-in MLLM never trains on (the probe's test items): a fixed hash of each id.

    Args:
        item_ids: item ids.
        fraction: the share of items held out, in [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    return [int(hashlib.sha1(str(i).encode()).hexdigest()[:8], 16) / 16**8 < fraction for i in item_ids]


def _words(text: str) -> list[str]:
    from tokenizers import pre_tokenizers

    return [w.lower() for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]


def word_tokenizer(vocabulary: Sequence[str], prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> Any:
    """A word-level tokenizer (``tokenizers``' WordLevel, lower-cased, split at spaces and punctuation) with Qwen's
    special tokens: the template's words and punctuation and ``vocabulary``; any other word is ``[UNK]``.

    Saved as ``tokenizer.json``, it loads with ``AutoTokenizer.from_pretrained(folder)`` as Qwen's does.

    Args:
        vocabulary: the words titles may hold.
        prompt_template: the prompter's template (its words join the vocabulary).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    template = prompt_template
    for token in (*_TINY_SPECIALS, "{image}", "{title}"):
        template = template.replace(token, " ")
    words = dict.fromkeys([*_words(template), *(w.lower() for w in vocabulary), *",.:;()!?'\"-"])
    vocab = {UNKNOWN: 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(_TINY_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=UNKNOWN
    )


def naming_loss(slot_logits: Tensor, targets: Tensor) -> Tensor:
    """Per row: the cross-entropy of every slot's word distribution against the title's words (uniform over them),
    averaged over the slots; ``log(number of words)`` when every slot names them all equally.

    Args:
        slot_logits: B x N x V, the LM head at the slots.
        targets: B x V, each row the title's words with equal weight, summing to 1.
    """
    return -(slot_logits.float().log_softmax(-1) * targets.unsqueeze(1)).sum(-1).mean(-1)


class StandInQwen2VL(nn.Module):
    """A Qwen2-VL built small (with its LM head and a word-level tokenizer) that names a title's words at its slots.

    Args:
        tiny_config: size and seed, keys of ``icg.models.meta_prompt.TINY_DEFAULTS`` (``{}``: the defaults).
        vocabulary: the words titles may hold (None: ``icg.data.synthetic.title_vocabulary()``, the platform's).
        num_slots: positions after the prompt holding the meta tokens (the prompter's ``num_meta_tokens``).
        image_size: side the cover is resized to (a multiple of 28, as the prompter's ``image_size``).
        prompt_template: the prompter's ``prompt_template`` (one ``{image}``, one ``{title}``).
        slot_seed: the slots hold ``seeded_meta_tokens(..., slot_seed)`` at every step; the prompter's
            ``meta_token_seed`` gives stage 3 the same draw to start from. A fresh draw each step (a model that reads
            through any meta tokens) did not train in the demo's budget: the held-out colour probe reached 0.56
            against 1.00 with one fixed draw (docs/prompting.md).
        unnamed_words: words the naming loss leaves out (the titles' filler words: "a", "the", "on"...).
    """

    def __init__(  # noqa: PLR0913  # a module constructor the demo config sets (class_path/init_args)
        self,
        tiny_config: dict | None = None,
        vocabulary: list[str] | None = None,
        num_slots: int = 8,
        image_size: int = 56,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        slot_seed: int = 0,
        unnamed_words: list[str] | None = None,
    ) -> None:
        from transformers import Qwen2VLForConditionalGeneration

        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        tiny_config = dict(tiny_config or {})
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if vocabulary is None:
            from icg.data.synthetic import title_vocabulary

            vocabulary = list(title_vocabulary())
        self.tokenizer = word_tokenizer(vocabulary, prompt_template)
        config = tiny_qwen2_vl_config(tiny_config, self.tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int({**TINY_DEFAULTS, **tiny_config}["seed"]))
            self.model = Qwen2VLForConditionalGeneration(config)
        self.pixel_cfg = tiny_pixel_config()
        self.num_slots = num_slots
        self.slot_seed = slot_seed
        self.image_size = image_size
        merge = self.pixel_cfg["merge_size"]
        self.num_image_tokens = (image_size // self.pixel_cfg["patch_size"] // merge) ** 2
        self.pieces = tokenize_template(self.tokenizer, prompt_template)
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        # What a title's words are scored over: the vocabulary's words, not punctuation, [UNK], special tokens or the
        # unnamed words.
        unnamed = {w.lower() for w in unnamed_words or ()}
        nameable = [w.isalnum() and w not in unnamed for w in self.vocabulary()]
        self.register_buffer("nameable", torch.tensor(nameable), persistent=False)

    def vocabulary(self) -> list[str]:
        """Every token, in id order."""
        return self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))

    def naming_targets(self, titles: Sequence[str]) -> Tensor:
        """B x V: each title's words (lower-cased, each once, punctuation and unknown words left out), weight 1/n.

        Args:
            titles: one title per row; one without a nameable word is an error.
        """
        targets = torch.zeros(len(titles), len(self.tokenizer))
        for row, title in enumerate(titles):
            ids = self.tokenizer(title, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids = [i for i in ids if self.nameable[i]]
            if not ids:
                raise ValueError(f"title {title!r} has no word the stand-in MLLM's vocabulary holds")
            targets[row, ids] = 1.0
        return targets / targets.sum(1, keepdim=True)

    def inputs(self, prompt_titles: list[str]) -> dict[str, Tensor]:
        """Left-padded rows ``prompt + slots``, as the prompter lays them out: ids and masks (CPU tensors, B x L).

        Args:
            prompt_titles: the title put into each row's prompt (``""`` for the cover alone).
        """
        rows = [fill_prompt(self.tokenizer, self.pieces, title, self.num_image_tokens) for title in prompt_titles]
        batch = meta_batch(rows, self.num_slots, self.pad_token_id, self.image_token_id, "left")
        batch["slot_mask"] = batch.pop("meta_mask")
        return batch

    def forward(self, prompt_titles: list[str], images: Tensor) -> Tensor:
        """The LM head's logits at the slots of one read of ``prompt + slots``.

        Args:
            prompt_titles: B titles for the prompt (``""``: the cover alone).
            images: B x 3 x H x W covers in [0, 1].

        Returns:
            B x N x V logits.
        """
        device = images.device
        batch = {k: v.to(device) for k, v in self.inputs(list(prompt_titles)).items()}
        core = self.model.model
        embed = core.get_input_embeddings()
        inputs_embeds = embed(batch["input_ids"])
        # Shared by every row, as the prompter's meta tokens are, at the embeddings' scale.
        scale = float(embed.weight.detach().float().std())
        slots = seeded_meta_tokens(self.num_slots, inputs_embeds.shape[-1], self.slot_seed, scale).to(device)
        slots = slots.repeat(len(prompt_titles), 1).to(inputs_embeds)
        inputs_embeds = inputs_embeds.masked_scatter(batch["slot_mask"].unsqueeze(-1), slots)
        pixel_values, grid = qwen2vl_pixel_values(images, self.pixel_cfg, self.image_size)
        position_ids, _ = core.get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=grid,
            attention_mask=batch["attention_mask"],
        )
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=batch["attention_mask"],
            position_ids=position_ids,
            pixel_values=pixel_values.to(inputs_embeds.dtype),
            image_grid_thw=grid,
            mm_token_type_ids=batch["mm_token_type_ids"],
            use_cache=False,
        )
        return out.logits[:, -self.num_slots :]

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model as a local Qwen2-VL release folder, whole or not at all (a sibling temp folder, renamed).

        Args:
            folder: the target; an existing folder there is replaced.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_qwen2vl_folder(tmp, self.model, self.tokenizer, self.pixel_cfg)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
        return folder

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"num_slots={self.num_slots}, image_size={self.image_size}, parameters={n}"
