"""Every method's covers of an evaluation's pairs, and every held-out pair's cover of every method as a PNG, with
its cover manifest (ICG, Bian et al., EMNLP 2025).

``generate_covers`` calls each method on the sampled pairs in batches. ``icg evaluate`` writes
``<out_dir>/covers/``: ``<method>/<index>_<user>_<item>.png`` and ``manifest.jsonl`` (``icg.cover_manifest``), the
input of the blind pairwise study (``icg study``, docs/study.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torch import Tensor

from icg.cover_manifest import write_manifest_folder
from icg.data.datamodule import ICGDataModule
from icg.evaluation.methods import CoverMethod
from icg.evaluation.sample import Pair, pairs_batch
from icg.lit.callbacks import save_png

log = logging.getLogger(__name__)


def generate(method: CoverMethod, datamodule: ICGDataModule, pairs: list[Pair], batch_size: int) -> dict:
    """``{pair: 3 x H x W cover}`` of ``method`` for every pair, in batches."""
    covers = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = method(pairs_batch(datamodule, chunk)).detach().float().cpu().clamp(0, 1)
        if images.shape[0] != len(chunk) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"a method returned covers of shape {tuple(images.shape)} for {len(chunk)} pairs")
        covers.update(zip(chunk, images, strict=True))
    return covers


def generate_covers(
    methods: dict[str, CoverMethod], datamodule: ICGDataModule, pairs: list[Pair], batch_size: int
) -> tuple[dict[str, dict | None], dict[str, float]]:
    """Every method's covers of ``pairs`` (``"reference"``: None, the dataset's own covers) and seconds per method."""
    covers: dict[str, dict | None] = {"reference": None}
    timings = {}
    for name, method in methods.items():
        t0 = time.time()
        covers[name] = generate(method, datamodule, pairs, batch_size)
        timings[name] = time.time() - t0
        log.info("%s: %d covers in %.1f s", name, len(pairs), timings[name])
    return covers, timings


def write_held_out_covers(
    folder: str | Path, datamodule: ICGDataModule, pairs: list[tuple[int, int]], covers: dict[str, dict | None]
) -> Path:
    """Write ``covers[method][pair]`` for every method and pair; returns the manifest path.

    Args:
        folder: the covers folder (replaced as a whole; see ``write_manifest_folder``).
        datamodule: maps ``pairs``' indices to user and item ids and titles.
        pairs: (user_idx, item_idx) in the DataModule's vocabularies.
        covers: method -> {pair: 3 x H x W in [0, 1]}; a method mapped to None (the evaluation's placeholder for
            the reference covers, which are the dataset's own) is skipped.
    """
    catalogue = datamodule.catalogue

    def rows():
        for method, by_pair in covers.items():
            if by_pair is None:
                continue
            for user, item in pairs:
                row = {
                    "user_id": str(datamodule.user_ids[user]),
                    "item_id": str(catalogue.item_ids[item]),
                    "method": method,
                    "title": str(catalogue.titles[item]),
                }
                image: Tensor = by_pair[(user, item)]
                yield row, image

    return write_manifest_folder(folder, rows(), save_png)
