"""Convert MovieLens (Harper & Konstan, 2015; the movie-poster benchmark of ICG, Bian et al., EMNLP 2025) from its
published layout into the icg dataset format (docs/data.md).

Input: ``ratings.csv`` (``userId,movieId,rating,timestamp``), ``movies.csv`` (``movieId,title,genres``; titles
with commas are quoted) and a folder of posters ``<movieId>.jpg`` that the user supplies. A rating at or above
``positive_threshold`` is a click (1), anything below a real non-click (0): the dataset is explicit
(``implicit: false``). Movies without a poster are left out with their ratings, counted in
``<out>/conversion_report.json`` and the log. ``ratings.csv`` is streamed in chunks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icg.data.conversion import attach_covers, convert_interactions_csv, write_conversion_report
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
) -> dict:
    """Write ``out`` as an explicit icg dataset from MovieLens files; returns the conversion report.

    Args:
        ratings: ``ratings.csv``.
        movies: ``movies.csv``.
        posters: folder of ``<movieId>.jpg`` posters.
        out: the dataset folder to write (created).
        positive_threshold: ratings >= this are clicks.
        chunk_rows: rows of ``ratings.csv`` read at a time.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(movies, dtype=str, keep_default_na=False)
    missing = [c for c in MOVIE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{movies}: missing column(s) {missing}; MovieLens movies.csv has {list(MOVIE_COLUMNS)}")
    table = table.rename(columns={"movieId": "item_id"})
    duplicates = table["item_id"].duplicated(keep="first")
    table = table[~duplicates].copy()
    table["title"] = table["title"].str.strip()
    untitled = table["title"] == ""
    with_cover, without_cover = attach_covers(table[~untitled], Path(posters), out)
    with_cover.to_parquet(out / "items.parquet", index=False)
    (out / "items.csv").unlink(missing_ok=True)

    def to_click(chunk: pd.DataFrame):
        rating = pd.to_numeric(chunk["rating"], errors="coerce")
        if rating.isna().any():
            row = chunk.index[rating.isna().to_numpy()][0]
            raise ValueError(f"{ratings}: non-numeric rating {chunk['rating'].loc[row]!r} at row {row + 1}")
        return (rating >= positive_threshold).astype("int8").to_numpy()

    counts = convert_interactions_csv(
        Path(ratings),
        RATING_COLUMNS,
        to_click,
        set(with_cover["item_id"]),
        set(without_cover) | set(table.loc[untitled, "item_id"]),
        out,
        chunk_rows,
    )
    write_meta(out, DatasetMeta(source="movielens", implicit=False, extra={"positive_threshold": positive_threshold}))
    return write_conversion_report(out, "movielens", with_cover, without_cover, untitled, duplicates, counts)
