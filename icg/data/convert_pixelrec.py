"""Convert PixelRec (Cheng et al., 2023; its Pixel1M subset is a benchmark of ICG, Bian et al., EMNLP 2025) from its
published layout into the icg dataset format (docs/data.md).

Input: an interactions CSV per subset (e.g. ``Pixel1M.csv``, header ``item_id,user_id,timestamp``, string ids,
every row an implicit positive), ``item_info.csv`` (``item_id, view_number, comment_number, thumbup_number,
share_number, coin_number, favorite_number, barrage_number, title_en, title, description, tag``) and a folder of
covers ``<item_id>.jpg``. The English title is used when it is non-empty. Items without a cover (or without any
title) are left out together with their interactions; every left-out row is listed with its reason in
``<out>/left_out_rows.csv`` and counted in ``<out>/conversion_report.json`` (``icg.data.conversion``). The inputs are
never written to; ``<out>`` appears complete or not at all. The interactions CSV is streamed in chunks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from icg.data.conversion import (
    LeftOutRows,
    check_paths,
    convert_interactions_csv,
    read_table_csv,
    select_items,
    staged_output,
    write_conversion_report,
)
from icg.data.schema import DatasetMeta, write_meta

log = logging.getLogger(__name__)

ITEM_INFO_COLUMNS = ("item_id", "title_en", "title")
INTERACTION_COLUMNS = {"item_id": "item_id", "user_id": "user_id", "timestamp": "timestamp"}


def _all_clicks(chunk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """PixelRec logs only clicks: every row is a positive."""
    return np.ones(len(chunk), np.int8), np.ones(len(chunk), bool)


def convert_pixelrec(
    interactions: str | Path,
    items: str | Path,
    covers: str | Path,
    out: str | Path,
    chunk_rows: int = 1_000_000,
    encoding: str = "utf-8",
    overwrite: bool = False,
) -> dict:
    """Write ``out`` as an implicit icg dataset from PixelRec files; returns the conversion report.

    Args:
        interactions: the subset's interactions CSV (``item_id,user_id,timestamp``).
        items: ``item_info.csv``.
        covers: folder of ``<item_id>.jpg`` covers.
        out: the dataset folder to write: missing or empty, or an earlier conversion with ``overwrite``; it must
            neither hold nor lie inside an input.
        chunk_rows: rows of the interactions CSV read at a time.
        encoding: text encoding of both CSV files (PixelRec exports are often ``gbk``).
        overwrite: replace an earlier dataset in ``out`` (only once the new one is complete).
    """
    interactions, items, covers, out = Path(interactions), Path(items), Path(covers), Path(out)
    check_paths(out, {"--interactions": interactions, "--items": items}, {"--covers": covers})
    info = read_table_csv(items, ITEM_INFO_COLUMNS, "PixelRec's item_info.csv", encoding)
    english = info["title_en"].str.strip()
    info["title"] = english.where(english != "", info["title"].str.strip())
    with staged_output(out, overwrite) as root:
        left_out = LeftOutRows(root)
        try:
            kept = select_items(info, covers, root, left_out, items.name, "--covers")
            kept.drop(columns=["title_en"]).to_parquet(root / "items.parquet", index=False)
            counts = convert_interactions_csv(
                interactions,
                INTERACTION_COLUMNS,
                _all_clicks,
                set(kept["item_id"]),
                set(info["item_id"]) - set(kept["item_id"]),
                root,
                left_out,
                "PixelRec's interactions CSV",
                encoding,
                chunk_rows,
            )
        finally:
            left_out.close()
        write_meta(root, DatasetMeta(source="pixelrec", implicit=True, extra={"interactions_file": interactions.name}))
        return write_conversion_report(root, out, "pixelrec", len(info), len(kept), counts, left_out)
