"""On-disk per-item cache of frozen MLLM meta-token features (ICG step 1; Bian et al., EMNLP 2025).

When the MLLM and the meta tokens are both frozen, an item's B x N x D features depend only on the item and on the
prompter's configuration, so they are computed once and read back from disk afterwards: the MLLM leaves the
training step. Entries live under a folder named by the prompter's ``cache_key()`` (a hash of the MLLM's identity,
the prompt template, the image size and the meta-token / LoRA values), so a changed model, prompt or meta-token
value lands in a different folder and stale features are never served. Each entry is one safetensors file that
also records its item id and key, checked on every read.

Layout::

    <folder>/<model_key>/key.json                       what went into the key (for people; optional)
    <folder>/<model_key>/<h[:2]>/<h>.safetensors         h = sha1(item_id); tensor "features" (N x D)

Writes go to a temporary file then ``os.replace``, so concurrent DDP ranks writing the same item are harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class MLLMFeatureCache:
    """Per-item features on disk, for one model key.

    Args:
        folder: root folder of the cache (shared by all keys).
        model_key: the producer's key, e.g. ``MetaTokenPrompter.cache_key()``; letters, digits, ``_.-`` only.
        description: plain data that went into the key, written once to ``key.json`` for people to read.
        dtype: storage dtype (e.g. ``torch.float16`` to halve the disk); None stores what ``compute_fn`` returns.
    """

    def __init__(
        self,
        folder: str | Path,
        model_key: str,
        description: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not _KEY_RE.match(model_key):
            raise ValueError(f"model_key must match {_KEY_RE.pattern} (it names a folder), got {model_key!r}")
        self.folder = Path(folder)
        self.model_key = model_key
        self.dtype = dtype
        self.root = self.folder / model_key
        self.hits = 0
        self.misses = 0
        self._description = description

    def path(self, item_id: str) -> Path:
        """The file that holds ``item_id``'s features (it may not exist yet)."""
        digest = hashlib.sha1(str(item_id).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def read(self, item_id: str) -> Tensor | None:
        """The cached features of ``item_id`` on the CPU, or None if absent or written under another key/item."""
        path = self.path(item_id)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("item_id") != str(item_id) or meta.get("model_key") != self.model_key:
                    log.warning("feature cache entry %s belongs to %s; recomputing", path, meta)
                    return None
                return f.get_tensor("features")
        except Exception as err:  # noqa: BLE001 - a torn or foreign file is a miss, never a crash
            log.warning("unreadable feature cache entry %s (%s); recomputing", path, err)
            return None

    def write(self, item_id: str, features: Tensor) -> None:
        """Store one item's features atomically."""
        path = self.path(item_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._description is not None and not (self.root / "key.json").exists():
            _atomic_write_text(self.root / "key.json", json.dumps(self._description, indent=1, default=str))
        tensor = features.detach().to("cpu", dtype=self.dtype).contiguous()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": tensor}, tmp, metadata={"item_id": str(item_id), "model_key": self.model_key})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get_or_compute(
        self,
        item_ids: list[str],
        compute_fn: Callable[[list[int]], Tensor],
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Features for ``item_ids`` (B x N x D), computing and storing only the missing ones.

        Args:
            item_ids: the batch's item ids.
            compute_fn: given the batch positions of the missing items, returns their features (len x N x D).
            device: where the result goes; defaults to the computed features' device, else the CPU.
        """
        found: list[Tensor | None] = [self.read(i) for i in item_ids]
        missing = [pos for pos, f in enumerate(found) if f is None]
        self.hits += len(item_ids) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute_fn(missing)
            if computed.shape[0] != len(missing):
                raise ValueError(f"compute_fn returned {computed.shape[0]} rows for {len(missing)} missing items")
            device = device if device is not None else computed.device
            for row, pos in enumerate(missing):
                self.write(item_ids[pos], computed[row])
                # Serve what was stored, so a first read and every later read return the same values.
                found[pos] = computed[row].detach().to("cpu", dtype=self.dtype) if self.dtype else computed[row]
        shapes = {tuple(f.shape) for f in found}
        if len(shapes) > 1:
            raise ValueError(f"cached features under key {self.model_key} have different shapes: {sorted(shapes)}")
        device = device if device is not None else "cpu"
        return torch.stack([f.detach().to(device) for f in found])


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
