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

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from icg.data.timestamps import parse_timestamps
from icg.errors import UserError

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


class DatasetFormatError(UserError, ValueError):
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


_NOT_UTF8 = "not UTF-8 text; icg dataset CSV files are UTF-8: re-encode it (e.g. iconv -f gbk -t utf-8)"


def _check_header(path: Path, names: list[str], columns: tuple[str, ...]) -> None:
    """Refuse a table that names one of the format's columns twice (pandas would silently rename the second)."""
    repeated = {c: [i + 1 for i, n in enumerate(names) if n == c] for c in columns if names.count(c) > 1}
    if repeated:
        where = ", ".join(f"{c!r} at columns {positions}" for c, positions in repeated.items())
        raise DatasetFormatError(f"{path}: the header names {where}; keep one of each")


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            return next(csv.reader(file), [])
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: {_NOT_UTF8}") from err


def read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a table with string ids, keeping empty strings (so empty titles are seen, not turned into NaN)."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        _check_header(path, _csv_header(path), columns)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except UnicodeDecodeError as err:
            raise DatasetFormatError(f"{path}: {_NOT_UTF8}") from err
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DatasetFormatError(f"{path}: not a readable CSV table ({str(err).strip()})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; expected at least {list(columns)}")
    for column in ("user_id", "item_id", "title", "image"):
        if column in frame.columns:
            frame[column] = frame[column].fillna("").astype(str)  # a null id or title reads as "", never "None"
    return frame


def row_label(path: Path, row: int) -> str:
    """How bad-input reports name a row: 1-based data row; CSV files also give the line (the header is line 1)."""
    if path.suffix == ".csv":
        return f"{path.name} row {row + 1} (line {row + 2})"
    return f"{path.name} row {row + 1}"


@dataclass
class InteractionArrays:
    """The interactions table as compact arrays: ids dictionary-encoded, one entry per file row (file order).

    Built with pyarrow so that ~20M rows never become Python objects. ``timestamp_ok`` / ``click_ok`` are False
    where the file holds a timestamp outside :data:`icg.data.timestamps.TIMESTAMP_RULE` (or a click other than 0/1);
    validation reports those rows, with the refused timestamps as written (``bad_timestamps``).

    Args:
        path: the file read.
        user_code: int32 index into ``user_values`` per row.
        user_values: the distinct user id strings, sorted (object array); codes follow this order.
        item_code: int32 index into ``item_values`` per row.
        item_values: the distinct item id strings, sorted (object array).
        timestamp: int64 seconds (0 where ``timestamp_ok`` is False); ISO-8601 date-times converted.
        timestamp_ok: bool per row.
        bad_timestamps: the refused timestamp values as text, by 0-based row.
        click: int8 per row (0 where ``click_ok`` is False).
        click_ok: bool per row.
    """

    path: Path
    user_code: np.ndarray
    user_values: np.ndarray
    item_code: np.ndarray
    item_values: np.ndarray
    timestamp: np.ndarray
    timestamp_ok: np.ndarray
    click: np.ndarray
    click_ok: np.ndarray
    bad_timestamps: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_code)


def _encode_ids(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary-encode a string column: (int32 codes per row, sorted distinct values). Nulls read as ""."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())  # integer ids in a parquet file are still ids, compared as strings
    encoded = column.fill_null("").dictionary_encode()  # chunks of a ChunkedArray share one dictionary
    if encoded.num_chunks == 0:
        return np.zeros(0, np.int32), np.zeros(0, object)
    dictionary = encoded.chunk(0).dictionary
    # renumber so codes follow the sorted ids: then sorting codes sorts ids (arrow's byte order = Python's str order)
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = np.concatenate([rank[chunk.indices.to_numpy(zero_copy_only=False)] for chunk in encoded.chunks])
    values = dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False).astype(object)
    return codes, values


def _to_int(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Integers per row and a mask of rows that really held an integer (non-numeric text, nulls, NaN fail)."""
    if pa.types.is_integer(column.type):
        values = column.fill_null(0).to_numpy()
        return values.astype(dtype), ~column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(column.type):
        return column.fill_null(False).to_numpy(zero_copy_only=False).astype(dtype), ~column.is_null().to_numpy(
            zero_copy_only=False
        )
    # text or floats: coerce; only the (rare) files that need it pay for pandas' parser
    numbers = pd.to_numeric(pd.Series(column.to_numpy(zero_copy_only=False)), errors="coerce").to_numpy(float)
    ok = np.isfinite(numbers) & (np.floor(numbers) == numbers)
    return np.where(ok, numbers, 0).astype(dtype), ok


def read_interaction_arrays(root: str | Path) -> InteractionArrays:
    """Read the interactions table of ``root`` into :class:`InteractionArrays` (no validation beyond columns)."""
    path = table_path(root, INTERACTIONS_TABLE)
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in INTERACTION_COLUMNS}, strings_can_be_null=False
                ),
            )
    except (pa.ArrowInvalid, OSError) as err:
        if "UTF8" in str(err):
            raise DatasetFormatError(f"{path}: {_NOT_UTF8}") from err
        raise DatasetFormatError(f"{path}: cannot be read as a table ({err})") from err
    _check_header(path, table.column_names, INTERACTION_COLUMNS)
    missing = [c for c in INTERACTION_COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; expected at least {list(INTERACTION_COLUMNS)}")
    user_code, user_values = _encode_ids(table.column("user_id"))
    item_code, item_values = _encode_ids(table.column("item_id"))
    timestamp, timestamp_ok = parse_timestamps(table.column("timestamp"))
    bad_rows = np.flatnonzero(~timestamp_ok)
    raw = table.column("timestamp").take(pa.array(bad_rows, pa.int64())).to_pylist() if len(bad_rows) else []
    bad_timestamps = {int(r): "" if v is None else str(v) for r, v in zip(bad_rows, raw, strict=True)}
    click, click_numeric = _to_int(table.column("click"), np.int64)
    click_ok = click_numeric & ((click == 0) | (click == 1))
    del table
    return InteractionArrays(
        path=path,
        user_code=user_code,
        user_values=user_values,
        item_code=item_code,
        item_values=item_values,
        timestamp=timestamp,
        timestamp_ok=timestamp_ok,
        click=np.where(click_ok, click, 0).astype(np.int8),
        click_ok=click_ok,
        bad_timestamps=bad_timestamps,
    )


def count_users(root: str | Path) -> int:
    """Distinct user ids in the interactions table of ``root``, read without ``ICGDataModule.setup()``.

    One column is read (pyarrow) and hashed: about 6 s of CPU for Pixel1M's 19.9M rows, 0.6 GiB peak. It is at least
    the DataModule's ``num_users`` after setup (rows that validation skips can only remove users), which is what a
    model sized by it needs.
    """
    path = table_path(root, INTERACTIONS_TABLE)
    try:
        if path.suffix == ".parquet":
            column = pq.read_table(path, columns=["user_id"]).column("user_id")
        else:
            options = pacsv.ConvertOptions(
                include_columns=["user_id"], column_types={"user_id": pa.string()}, strings_can_be_null=False
            )
            column = pacsv.read_csv(path, convert_options=options).column("user_id")
    except (pa.ArrowInvalid, KeyError, OSError) as err:
        raise DatasetFormatError(f"{path}: cannot read its user_id column ({err})") from err
    return int(pc.count_distinct(column, mode="all").as_py())  # a null id is one more user (read as "")


def write_meta(root: str | Path, meta: DatasetMeta) -> Path:
    """Write ``meta.json`` (for writers that stream their tables, like the converters)."""
    path = Path(root) / META_FILE
    path.write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return path


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
    write_meta(root, meta)
    return root


# ---------------------------------------------------------------------------------------------- writers for converters
