"""The demo's stand-in MLLM: a small Qwen2-VL trained on the synthetic platform to write an item's title.

ICG's first step (Bian et al., EMNLP 2025) reads an item through a frozen Qwen2-VL-class MLLM and learnable meta
tokens (``icg.models.meta_prompt``). A real Qwen2-VL has learned to read titles and photos; a randomly initialised
tiny one reads nothing, so its meta-token features say little about the item. No pretrained MLLM exists for the
synthetic platform, so the demo trains one, as it trains its stand-in base model: the same model class as a real
release (``Qwen2VLForConditionalGeneration``, built small from ``tiny_qwen2_vl_config``), trained briefly to write an
item's title after reading the prompt the prompter builds (the cover, and the title or, with probability
``title_dropout``, an empty one), then saved as an ordinary local folder that ``MetaTokenPrompter(mllm_path=...)``
loads like a downloaded release.

Between the prompt and the title sit ``num_slots`` positions filled with fresh random embeddings at the token
embeddings' scale: the distribution the prompter draws its meta tokens from. The title is written after them, so the
model learns to read the item *through* such positions, which is where ICG reads its features (the MetaQuery layout:
queries after the prompt, read at the last layer). Captioning from the cover alone makes the vision path matter.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg import ckpt
from icg.models.meta_prompt import (
    DEFAULT_PROMPT_TEMPLATE,
    IMAGE_TOKEN,
    TINY_DEFAULTS,
    fill_prompt,
    qwen2vl_pixel_values,
    tiny_pixel_config,
    tiny_qwen2_vl_config,
    tiny_tokenizer,
    tokenize_template,
    write_qwen2vl_folder,
)

log = logging.getLogger(__name__)
IGNORE = -100  # label of positions that are not scored (prompt, slots, padding)


def held_out_items(item_ids: list[str], fraction: float) -> list[bool]:
    """Which items the stand-in MLLM never trains on (the probe's test items): a fixed hash of each id.

    Args:
        item_ids: item ids.
        fraction: the share of items held out, in [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    return [int(hashlib.sha1(str(i).encode()).hexdigest()[:8], 16) / 16**8 < fraction for i in item_ids]


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


def matching_loss(image_features: Tensor, title_features: Tensor, temperature: float = 0.1) -> Tensor:
    """CLIP's symmetric InfoNCE: each item's cover-read features must pick its own title-read ones in the batch.

    Args:
        image_features: B x D, read from the cover alone.
        title_features: B x D, read from the title alone, same item order.
        temperature: softmax temperature of the cosine similarities.
    """
    # Centred first: at initialisation every row's slots read mostly the shared prompt and slot embeddings, so raw
    # cosines all sit near 1 and the loss barely moves; what differs between items is what must match.
    a = F.normalize(image_features - image_features.mean(0), dim=-1)
    b = F.normalize(title_features - title_features.mean(0), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class StandInQwen2VL(nn.Module):
    """A Qwen2-VL built small (with its LM head) that learns to write an item's title from the prompter's prompt.

    Args:
        tiny_config: size and seed, keys of ``icg.models.meta_prompt.TINY_DEFAULTS`` (``{}``: the defaults).
        num_slots: random-embedding positions between the prompt and the title (the prompter's meta tokens' place).
        image_size: side the cover is resized to (a multiple of 28, as the prompter's ``image_size``).
        prompt_template: the prompter's ``prompt_template`` (one ``{image}``, one ``{title}``).
        slot_seed: the slots are ``seeded_meta_tokens(..., slot_seed)`` at every step; None draws fresh ones each
            step. Fresh draws would make the model read through any meta tokens, but a random query each step gives
            its attention nothing stable to learn: on the demo platform the cover-title matching loss stayed near
            chance (2.5 against log 16 = 2.77 after 200 steps), where one fixed draw reached 0.53 in 100.
    """

    def __init__(
        self,
        tiny_config: dict | None = None,
        num_slots: int = 8,
        image_size: int = 56,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        slot_seed: int | None = 0,
    ) -> None:
        from transformers import Qwen2VLForConditionalGeneration

        super().__init__()
        self.spec = ckpt.init_spec(self, locals())
        tiny_config = dict(tiny_config or {})
        if num_slots < 0:
            raise ValueError(f"num_slots must be >= 0, got {num_slots}")
        self.tokenizer = tiny_tokenizer()
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
        self.end_id = int(self.tokenizer.eos_token_id)  # <|im_end|>: the answer ends as a chat turn does

    def inputs(self, prompt_titles: list[str], targets: list[str]) -> dict[str, Tensor]:
        """Right-padded rows ``prompt + slots + target + <|im_end|>``: ids, labels, masks (CPU tensors, B x L).

        Args:
            prompt_titles: the title put into each row's prompt (``""`` for the cover alone).
            targets: the text each row must write after the slots.
        """
        rows, labels, starts = [], [], []
        for title, target in zip(prompt_titles, targets, strict=True):
            prompt = fill_prompt(self.tokenizer, self.pieces, title, self.num_image_tokens)
            answer = [*self.tokenizer(target, add_special_tokens=False, split_special_tokens=True)["input_ids"]]
            answer.append(self.end_id)
            rows.append(prompt + [self.pad_token_id] * self.num_slots + answer)
            labels.append([IGNORE] * (len(prompt) + self.num_slots) + answer)
            starts.append(len(prompt))
        length = max(len(r) for r in rows)
        b = len(rows)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        label_ids = torch.full((b, length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros(b, length, dtype=torch.long)
        slot_mask = torch.zeros(b, length, dtype=torch.bool)
        for i, (row, label, start) in enumerate(zip(rows, labels, starts, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(row)] = torch.tensor(label)
            attention_mask[i, : len(row)] = 1
            slot_mask[i, start : start + self.num_slots] = True
        mm_token_type_ids = (input_ids == self.image_token_id).long() * attention_mask
        return {
            "input_ids": input_ids,
            "labels": label_ids,
            "attention_mask": attention_mask,
            "slot_mask": slot_mask,
            "mm_token_type_ids": mm_token_type_ids,
        }

    def forward(self, prompt_titles: list[str], images: Tensor, targets: list[str]) -> tuple[Tensor, Tensor]:
        """Per-row caption loss and slot features of one pass over ``prompt + slots + target``.

        Args:
            prompt_titles: B titles for the prompt (``""``: the cover alone).
            images: B x 3 x H x W covers in [0, 1].
            targets: B texts to write.

        Returns:
            B mean cross-entropies (nats per target token), and B x D last hidden states averaged over the slots
            (what the prompter's features are, as the title cannot reach back to the slots under causal attention).
        """
        device = images.device
        batch = {k: v.to(device) for k, v in self.inputs(list(prompt_titles), list(targets)).items()}
        core = self.model.model
        embed = core.get_input_embeddings()
        inputs_embeds = embed(batch["input_ids"])
        if self.num_slots:
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
            output_hidden_states=True,
        )
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        scored = (labels != IGNORE).float()
        caption = (nll * scored).sum(1) / scored.sum(1).clamp_min(1.0)
        hidden = out.hidden_states[-1]
        slots = batch["slot_mask"].unsqueeze(-1).to(hidden.dtype)
        features = (hidden * slots).sum(1) / slots.sum(1).clamp_min(1.0)
        return caption, features.float()

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
