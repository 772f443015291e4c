"""A tiny study whose true order is known by construction: covers recoloured towards / away from a user's taste.

For each (user, item) the reference cover is blended halfway towards the palette colour the user's true click model
weights most (``recolour_towards``), left as it is (``recolour_none``), or blended towards the colour it weights
least (``recolour_away``). On the tiny platform the oracle's mean click probability is then in that order (the
tests check this on the PNGs as written before relying on it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icg.cover_manifest import write_manifest_folder
from icg.data.oracle import Oracle
from icg.data.schema import read_dataset
from icg.lit.callbacks import save_png

METHODS_BEST_FIRST = ("recolour_towards", "recolour_none", "recolour_away")


def load_image(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def recoloured_run(platform: Path, out: Path, users: int = 12, items_per_user: int = 2, alpha: float = 0.5) -> Path:
    """Write ``out/covers/{manifest.jsonl, <method>/*.png}`` for ``users`` x ``items_per_user`` pairs; returns out."""
    oracle = Oracle.from_dataset(platform)
    items, interactions, _ = read_dataset(platform)
    k = oracle.num_palette
    palette = oracle.anchors[:k]
    weight = (oracle.population_taste[None, :k] + oracle.strength * oracle.user_taste[:, :k]) / oracle.feature_std[:k]
    rng = np.random.default_rng(0)
    rows = []
    for u, user_id in enumerate(oracle.user_ids[:users]):
        for item in items.iloc[rng.choice(len(items), size=items_per_user, replace=False)].itertuples():
            x = load_image(platform / item.image)
            towards = (1 - alpha) * x + alpha * palette[weight[u].argmax()].view(3, 1, 1)
            away = (1 - alpha) * x + alpha * palette[weight[u].argmin()].view(3, 1, 1)
            for method, cover in zip(METHODS_BEST_FIRST, (towards, x, away), strict=True):
                rows.append(({"user_id": user_id, "item_id": item.item_id, "method": method}, cover))
    write_manifest_folder(out / "covers", rows, save_png)
    return out


def oracle_means(platform: Path, run: Path) -> dict[str, float]:
    """Mean true click probability per method over the covers as written."""
    from icg.cover_manifest import read_manifest

    oracle = Oracle.from_dataset(platform)
    values: dict[str, list[float]] = {}
    with torch.no_grad():
        for entry in read_manifest(run):
            p = oracle(load_image(entry.file)[None], oracle.user_index([entry.user_id]))
            values.setdefault(entry.method, []).append(float(p[0]))
    return {method: float(np.mean(v)) for method, v in values.items()}
