"""Convert PixelRec (Cheng et al., 2023; its Pixel1M subset is a benchmark of ICG, Bian et al., EMNLP 2025) from its
published layout into the icg dataset format (docs/data.md).

Input: an interactions CSV per subset (e.g. ``Pixel1M.csv``, header ``item_id,user_id,timestamp``, string ids,
every row an implicit positive), ``item_info.csv`` (``item_id, view_number, comment_number, thumbup_number,
share_number, coin_number, favorite_number, barrage_number, title_en, title, description, tag``) and a folder of
covers ``<item_id>.jpg``. The English title is used when it is non-empty. Items without a cover (or without any
title) are left out together with their interactions; every left-out row is counted in
``<out>/conversion_report.json`` and in the log. The interactions CSV is streamed in chunks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from icg.data.conversion import attach_covers, convert_interactions_csv, write_conversion_report
from icg.data.schema import DatasetMeta, write_meta

log = logging.getLogger(__name__)

ITEM_INFO_COLUMNS = ("item_id", "title_en", "title")
INTERACTION_COLUMNS = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}


def convert_pixelrec(
    interactions: str | Path,
    items: str | Path,
    covers: str | Path,
    out: str | Path,
    chunk_rows: int = 1_000_000,
) -> dict:
    """Write ``out`` as an implicit icg dataset from PixelRec files; returns the conversion report.

    Args:
        interactions: the subset's interactions CSV (``item_id,user_id,timestamp``).
        items: ``item_info.csv``.
        covers: folder of ``<item_id>.jpg`` covers.
        out: the dataset folder to write (created).
        chunk_rows: rows of the interactions CSV read at a time.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = pd.read_csv(items, dtype=str, keep_default_na=False)
    missing = [c for c in ITEM_INFO_COLUMNS if c not in info.columns]
    if missing:
        raise ValueError(
            f"{items}: missing column(s) {missing}; PixelRec's item_info.csv has {list(ITEM_INFO_COLUMNS)}"
        )
    duplicates = info["item_id"].duplicated(keep="first")
    info = info[~duplicates].copy()
    english = info["title_en"].str.strip()
    info["title"] = english.where(english != "", info["title"].str.strip())
    untitled = info["title"] == ""
    with_cover, without_cover = attach_covers(info[~untitled], Path(covers), out)
    left_out = set(without_cover) | set(info.loc[untitled, "item_id"])
    with_cover.drop(columns=["title_en"]).to_parquet(out / "items.parquet", index=False)
    (out / "items.csv").unlink(missing_ok=True)
    counts = convert_interactions_csv(
        Path(interactions),
        INTERACTION_COLUMNS,
        lambda chunk: 1,  # PixelRec logs only clicks: every row is a positive
        set(with_cover["item_id"]),
        left_out,
        out,
        chunk_rows,
    )
    write_meta(out, DatasetMeta(source="pixelrec", implicit=True, extra={"interactions_file": Path(interactions).name}))
    return write_conversion_report(out, "pixelrec", with_cover, without_cover, untitled, duplicates, counts)
