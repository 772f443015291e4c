"""A tiny valid dataset on disk and the data module and stage the data tests build on it."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from PIL import Image

from icg.data.datamodule import ICGDataModule
from icg.data.schema import DatasetMeta, write_dataset


def make_dataset(
    root: Path,
    users: int = 6,
    items: int = 12,
    per_user: int = 5,
    implicit: bool = True,
    table_format: str = "parquet",
    seed: int = 0,
) -> Path:
    """A tiny valid dataset: ``items`` colored PNG covers, each user ``per_user`` interactions at distinct times."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    item_rows = []
    for i in range(items):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (20 + i, 16), color).save(root / "images" / f"i{i:02d}.png")
        item_rows.append({"item_id": f"i{i:02d}", "title": f"title {i}", "image": f"images/i{i:02d}.png"})
    inter_rows = []
    for u in range(users):
        chosen = rng.choice(items, per_user, replace=False)
        for t, i in enumerate(chosen):
            click = 1 if implicit else int(rng.integers(0, 2))
            inter_rows.append({"user_id": f"u{u}", "item_id": f"i{i:02d}", "click": click, "timestamp": 100 * t + u})
    inter = pd.DataFrame(inter_rows).sample(frac=1.0, random_state=seed)  # file order is not time order
    write_dataset(root, pd.DataFrame(item_rows), inter, DatasetMeta("test", implicit), table_format)
    return root


def datamodule_for(root, **kwargs) -> ICGDataModule:
    """An ``ICGDataModule`` on ``root`` at tiny sizes (``kwargs`` override them), set up for fitting."""
    kwargs = {"image_size": 16, "batch_size": 4, "eval_candidates": 3, "negatives_per_positive": 2, **kwargs}
    dm = ICGDataModule(root, **kwargs)
    dm.setup("fit")
    return dm


class RecordingStage(pl.LightningModule):
    """A one-weight stage that records the item indices each epoch trains on (the data module's sampling order)."""

    data_unit = "interactions"
    data_fields = ("user_idx", "item_idx", "click")

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        assert set(batch) == set(self.data_fields)
        self.seen.setdefault(self.current_epoch, []).extend(batch["item_idx"].tolist())
        return (self.weight * batch["click"]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
