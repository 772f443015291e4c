"""Stage-1 per-item image-feature cache: training time per epoch with and without it (ICG stage 1, docs/stage1.md).

With a frozen image encoder, ``PreferenceStage(feature_cache=True)`` encodes every cover once at the start of
training and the DataModule then skips decoding and collating covers per row; without it every row's cover is
decoded, collated and encoded in every epoch. This times both on a small synthetic platform, for the tiny encoder
and for a small random CLIP vision tower (a stand-in for ViT-L/14, whose saving is far larger).

    .venv/bin/python -m benchmarks.image_feature_cache [--users 100 --items 150 --epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from icg.data.datamodule import ICGDataModule
from icg.data.synthetic import generate_platform
from icg.lit.preference import PreferenceStage
from icg.models.image_encoders import ClipVisionEncoder, TinyImageEncoder
from icg.models.preference import PreferenceModel

SMALL_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "image_size": 64, "patch_size": 8, "projection_dim": 32}  # fmt: skip


class EpochTimer(pl.Callback):
    """Wall time of each training epoch (the first includes the cache fill, done in on_fit_start)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self.start)


def time_fit(root: Path, encoder: str, cache: bool, epochs: int) -> dict:
    torch.manual_seed(0)
    image_encoder = ClipVisionEncoder(config=SMALL_CLIP) if encoder == "clip" else TinyImageEncoder()
    model = PreferenceModel(image_encoder, num_users=1000)
    stage = PreferenceStage(model, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), feature_cache=cache)
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(stage, datamodule=ICGDataModule(root, image_size=64, batch_size=128))
    return {
        "encoder": encoder,
        "cache": cache,
        "fit_s": round(time.perf_counter() - start, 2),
        "epoch_s": [round(t, 2) for t in timer.times],
        "cache_hits": stage.cache.hits if stage.cache is not None else 0,
        "cache_misses": stage.cache.misses if stage.cache is not None else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--items", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--encoders", nargs="+", default=["tiny", "clip"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_platform(Path(tmp) / "data", users=args.users, items=args.items, image_size=64)
        rows = [time_fit(root, enc, cache, args.epochs) for enc in args.encoders for cache in (False, True)]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
