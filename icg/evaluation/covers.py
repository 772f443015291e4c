"""Every held-out pair's cover of every method as a PNG, with its cover manifest (ICG, Bian et al., EMNLP 2025).

``icg evaluate`` writes ``<out_dir>/covers/``: ``<method>/<index>_<user>_<item>.png`` and ``manifest.jsonl``
(``icg.cover_manifest``), the input of the blind pairwise study (``icg study``, docs/study.md).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from icg.cover_manifest import write_manifest_folder
from icg.data.datamodule import ICGDataModule
from icg.lit.callbacks import save_png


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
