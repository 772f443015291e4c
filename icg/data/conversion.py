"""What the PixelRec and MovieLens converters share: covers linked into the dataset, interactions streamed in
chunks, and the conversion report that counts every left-out row (nothing is dropped silently)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from icg.data.schema import (
    IMAGES_DIR,
    INTERACTION_COLUMNS,
    INTERACTIONS_TABLE,
    TABLE_SUFFIXES,
    DatasetFormatError,
)

log = logging.getLogger(__name__)
REPORT_FILE = "conversion_report.json"


def link_or_copy(source: Path, target: Path) -> None:
    """Put ``source`` at ``target``: a hard link when the file system allows (no extra disk), else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another device, or a file system without hard links
        shutil.copy2(source, target)


def attach_covers(items: pd.DataFrame, covers: Path, root: Path, suffix: str = ".jpg") -> tuple[pd.DataFrame, list]:
    """Link ``<covers>/<item_id><suffix>`` into ``<root>/images/`` and set ``image``; items without one are dropped.

    Returns:
        (the items that have a cover, with ``image`` set; the item ids that had none, in table order).
    """
    covers = Path(covers)
    if not covers.is_dir():
        raise FileNotFoundError(f"covers folder {covers} does not exist")
    available = {name for name in os.listdir(covers) if name.endswith(suffix)}  # one listing, not 100k stats
    has_cover = (items["item_id"] + suffix).isin(available).to_numpy()
    images = Path(root) / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    kept = items[has_cover].copy()
    for item_id in kept["item_id"]:
        link_or_copy(covers / f"{item_id}{suffix}", images / f"{item_id}{suffix}")
    kept["image"] = IMAGES_DIR + "/" + kept["item_id"] + suffix
    return kept, items.loc[~has_cover, "item_id"].tolist()


class InteractionsWriter:
    """Streams interaction chunks into ``<root>/interactions.parquet`` with the format's column types.

    Args:
        root: the dataset folder.
    """

    SCHEMA = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("click", pa.int8()), ("timestamp", pa.int64())]
    )

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> InteractionsWriter:
        for suffix in TABLE_SUFFIXES:
            (self.root / f"{INTERACTIONS_TABLE}{suffix}").unlink(missing_ok=True)
        self._writer = pq.ParquetWriter(self.root / f"{INTERACTIONS_TABLE}.parquet", self.SCHEMA)
        return self

    def write(self, chunk: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(
            chunk[list(INTERACTION_COLUMNS)].astype(
                {"user_id": str, "item_id": str, "click": "int8", "timestamp": "int64"}
            ),
            schema=self.SCHEMA,
            preserve_index=False,
        )
        self._writer.write_table(table)
        self.rows += len(chunk)

    def __exit__(self, *exc) -> None:
        self._writer.close()


def convert_interactions_csv(
    source: Path,
    columns: dict[str, str],
    to_click,
    kept_items: set[str],
    left_out_items: set[str],
    root: Path,
    chunk_rows: int = 1_000_000,
) -> dict[str, int]:
    """Stream a source's interactions CSV into ``<root>/interactions.parquet``, counting every row left out.

    Args:
        source: the CSV file.
        columns: source column -> format column (``user_id``, ``item_id``, ``timestamp`` and the click source).
        to_click: function of a chunk (format column names) returning int 0/1 clicks.
        kept_items: item ids that made it into the items table.
        left_out_items: known item ids the converter left out (e.g. no cover); their rows are counted apart.
        root: the dataset folder.
        chunk_rows: rows read at a time (bounded memory at any scale).

    Returns:
        counts: ``written``, ``rows_of_left_out_items``, ``rows_with_unknown_item``, ``rows_with_bad_timestamp``.
    """
    counts = dict.fromkeys(("read", "written", "rows_of_left_out_items", "rows_with_unknown_item"), 0)
    counts["rows_with_bad_timestamp"] = 0
    reader = pd.read_csv(source, dtype=str, keep_default_na=False, chunksize=chunk_rows)
    with InteractionsWriter(root) as writer:
        for chunk in reader:
            missing = [c for c in columns if c not in chunk.columns]
            if missing:
                raise DatasetFormatError(f"{source}: missing column(s) {missing}; expected {list(columns)}")
            chunk = chunk[list(columns)].rename(columns=columns)
            counts["read"] += len(chunk)
            timestamp = pd.to_numeric(chunk["timestamp"], errors="coerce")
            bad_ts = timestamp.isna().to_numpy()
            kept = chunk["item_id"].isin(kept_items).to_numpy()
            left_out = chunk["item_id"].isin(left_out_items).to_numpy()
            counts["rows_of_left_out_items"] += int(left_out.sum())
            counts["rows_with_unknown_item"] += int((~kept & ~left_out).sum())
            counts["rows_with_bad_timestamp"] += int((kept & bad_ts).sum())
            keep = kept & ~bad_ts
            chunk = chunk[keep].assign(timestamp=timestamp[keep].astype("int64"))
            chunk["click"] = to_click(chunk)
            writer.write(chunk)
        counts["written"] = writer.rows
    return counts


def write_conversion_report(
    out: Path, source: str, with_cover, without_cover: list, untitled, duplicates, counts: dict
) -> dict:
    """Write ``<out>/conversion_report.json`` (every left-out row counted) and say loudly what was left out."""
    report = {
        "source": source,
        "items_written": len(with_cover),
        "items_without_cover": len(without_cover),
        "items_without_cover_first": without_cover[:20],
        "items_without_title": int(untitled.sum()),
        "duplicate_item_rows": int(duplicates.sum()),
        "interactions_read": counts["read"],
        "interactions_written": counts["written"],
        "interactions_of_left_out_items": counts["rows_of_left_out_items"],
        "interactions_with_unknown_item": counts["rows_with_unknown_item"],
        "interactions_with_bad_timestamp": counts["rows_with_bad_timestamp"],
    }
    (Path(out) / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    dropped = {
        k: v for k, v in report.items() if k != "source" and not k.endswith(("_first", "_written", "_read")) and v
    }
    if dropped:
        log.warning("%s: left out %s (details in %s)", out, dropped, Path(out) / REPORT_FILE)
    return report
