"""The on-disk dataset format shared by every source (synthetic platform, PixelRec, MovieLens).

A dataset is a folder::

    <root>/
      meta.json            {"format": "icg-dataset", "version": 1, "source": "...", "implicit": true|false, ...}
      items.parquet        item_id (str), title (str), image (str, path relative to <root>), [extra columns]
      interactions.parquet user_id (str), item_id (str), click (int 0/1), timestamp (int, seconds)
      images/              the reference covers, any format PIL reads

``.csv`` may stand in for ``.parquet`` (one of the two per table). ``implicit: true`` means every interaction is
an observed positive (PixelRec): the DataModule samples negatives. ``implicit: false`` means the table holds real
non-clicks as well (MovieLens ratings below a threshold). docs/data.md documents this with an example.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

FORMAT_NAME = "icg-dataset"
FORMAT_VERSION = 1
META_FILE = "meta.json"
ITEMS_TABLE = "items"
INTERACTIONS_TABLE = "interactions"
IMAGES_DIR = "images"
ITEM_COLUMNS = ("item_id", "title", "image")
INTERACTION_COLUMNS = ("user_id", "item_id", "click", "timestamp")
TABLE_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class Record:
    """One (user, item) interaction joined with its item: the unit every stage reads."""

    user_id: str
    item_id: str
    title: str
    image: str  # path relative to the dataset root
    click: int
    timestamp: int


@dataclass
class DatasetMeta:
    """What ``meta.json`` holds.

    Args:
        source: where the data came from (``synthetic``, ``pixelrec``, ``movielens``, ...).
        implicit: every interaction is a positive; negatives must be sampled.
        extra: source-specific facts (e.g. the MovieLens positive threshold, the synthetic seed).
    """

    source: str
    implicit: bool
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)


class DatasetFormatError(ValueError):
    """The folder is not a readable icg dataset; the message says which file and what is wrong."""


def table_path(root: str | Path, name: str) -> Path:
    """The existing file of table ``name`` (``items`` or ``interactions``) under ``root``."""
    root = Path(root)
    found = [root / f"{name}{suffix}" for suffix in TABLE_SUFFIXES if (root / f"{name}{suffix}").is_file()]
    if not found:
        raise DatasetFormatError(f"{root}: no {name}.parquet or {name}.csv (see docs/data.md)")
    if len(found) > 1:
        raise DatasetFormatError(f"{root}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0]


def read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a table with string ids, keeping empty strings (so empty titles are seen, not turned into NaN)."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; expected at least {list(columns)}")
    for column in ("user_id", "item_id", "title", "image"):
        if column in frame.columns:
            frame[column] = frame[column].astype(str)
    return frame


def read_meta(root: str | Path) -> DatasetMeta:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing; every icg dataset has a meta.json (see docs/data.md)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: not valid JSON ({err})") from err
    if raw.get("format") != FORMAT_NAME:
        raise DatasetFormatError(f"{path}: format is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
    if raw.get("version") != FORMAT_VERSION:
        raise DatasetFormatError(f"{path}: version {raw.get('version')!r}, this icg reads {FORMAT_VERSION}")
    return DatasetMeta(**{k: raw[k] for k in ("source", "implicit", "format", "version")}, extra=raw.get("extra", {}))


def read_dataset(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetMeta]:
    """Read (items, interactions, meta) as they are on disk; validation is ``icg.data.validation``'s job."""
    meta = read_meta(root)
    items = read_table(table_path(root, ITEMS_TABLE), ITEM_COLUMNS)
    interactions = read_table(table_path(root, INTERACTIONS_TABLE), INTERACTION_COLUMNS)
    return items, interactions, meta


def write_dataset(
    root: str | Path,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    meta: DatasetMeta,
    table_format: str = "parquet",
) -> Path:
    """Write the two tables and meta.json; the caller has already put the images under ``root``.

    Args:
        root: dataset folder (created if missing).
        items: at least ``item_id, title, image``.
        interactions: at least ``user_id, item_id, click, timestamp``.
        meta: what goes into meta.json.
        table_format: ``parquet`` or ``csv``.
    """
    if table_format not in ("parquet", "csv"):
        raise ValueError(f"table_format must be 'parquet' or 'csv', got {table_format!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, frame, columns in (
        (ITEMS_TABLE, items, ITEM_COLUMNS),
        (INTERACTIONS_TABLE, interactions, INTERACTION_COLUMNS),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DatasetFormatError(f"{name}: missing column(s) {missing}")
        for suffix in TABLE_SUFFIXES:  # never leave a stale twin behind
            (root / f"{name}{suffix}").unlink(missing_ok=True)
        frame = frame.copy()
        for column in ("user_id", "item_id"):
            if column in frame.columns:
                frame[column] = frame[column].astype(str)
        if "click" in frame.columns:
            frame["click"] = frame["click"].astype("int8")
        if "timestamp" in frame.columns:
            frame["timestamp"] = frame["timestamp"].astype("int64")
        path = root / f"{name}.{table_format}"
        if table_format == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
    (root / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return root
