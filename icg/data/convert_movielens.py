"""Convert MovieLens (Harper & Konstan, 2015; the movie-poster benchmark of ICG, Bian et al., EMNLP 2025) from its
published layout into the icg dataset format (docs/data.md).

Input: ``ratings.csv`` (``userId,movieId,rating,timestamp``), ``movies.csv`` (``movieId,title,genres``; titles
with commas are quoted) and a folder of posters ``<movieId>.jpg`` that the user supplies. A rating at or above
``positive_threshold`` is a click (1), anything below a real non-click (0): the dataset is explicit
(``implicit: false``). Movies without a poster are left out with their ratings; every left-out row is listed with
its reason in ``<out>/left_out_rows.csv`` and counted in ``<out>/conversion_report.json`` (``icg.data.conversion``).
The inputs are never written to; ``<out>`` appears complete or not at all. ``ratings.csv`` is streamed in chunks.
"""

from __future__ import annotations

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

MOVIE_COLUMNS = ("movieId", "title", "genres")
RATING_COLUMNS = {"userId": "user_id", "movieId": "item_id", "rating": "rating", "timestamp": "timestamp"}


def convert_movielens(
    ratings: str | Path,
    movies: str | Path,
    posters: str | Path,
    out: str | Path,
    positive_threshold: float = 4.0,
    chunk_rows: int = 1_000_000,
    encoding: str = "utf-8",
    overwrite: bool = False,
) -> dict:
    """Write ``out`` as an explicit icg dataset from MovieLens files; returns the conversion report.

    Args:
        ratings: ``ratings.csv``.
        movies: ``movies.csv``.
        posters: folder of ``<movieId>.jpg`` posters.
        out: the dataset folder to write: missing or empty, or an earlier conversion with ``overwrite``; it must
            neither hold nor lie inside an input.
        positive_threshold: ratings >= this are clicks.
        chunk_rows: rows of ``ratings.csv`` read at a time.
        encoding: text encoding of both CSV files.
        overwrite: replace an earlier dataset in ``out`` (only once the new one is complete).
    """
    ratings, movies, posters, out = Path(ratings), Path(movies), Path(posters), Path(out)
    check_paths(out, {"--ratings": ratings, "--movies": movies}, {"--posters": posters})
    table = read_table_csv(movies, MOVIE_COLUMNS, "MovieLens movies.csv", encoding).rename(
        columns={"movieId": "item_id"}
    )
    table["title"] = table["title"].str.strip()

    def to_click(chunk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        rating = pd.to_numeric(chunk["rating"], errors="coerce").to_numpy(float)
        ok = np.isfinite(rating)
        return (ok & (rating >= positive_threshold)).astype(np.int8), ok

    with staged_output(out, overwrite) as root:
        left_out = LeftOutRows(root)
        try:
            kept = select_items(table, posters, root, left_out, movies.name, "--posters")
            kept.to_parquet(root / "items.parquet", index=False)
            counts = convert_interactions_csv(
                ratings,
                RATING_COLUMNS,
                to_click,
                set(kept["item_id"]),
                set(table["item_id"]) - set(kept["item_id"]),
                root,
                left_out,
                "MovieLens ratings.csv",
                encoding,
                chunk_rows,
            )
        finally:
            left_out.close()
        write_meta(
            root, DatasetMeta(source="movielens", implicit=False, extra={"positive_threshold": positive_threshold})
        )
        return write_conversion_report(root, out, "movielens", len(table), len(kept), counts, left_out)
