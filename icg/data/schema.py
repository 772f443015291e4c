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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from icg.data import splits
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
        order: the rows in (user, timestamp, item, row) order, when already known (a cached table carries it);
            :meth:`time_order` computes it otherwise.
        in_order: columns already gathered into that order, by name (:meth:`sorted`; a cached table carries them).
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
    order: np.ndarray | None = field(default=None, repr=False)
    in_order: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.user_code)

    def time_order(self) -> np.ndarray:
        """Rows sorted by (user, timestamp, item, file row) (:func:`icg.data.splits.time_order`), computed once.

        The item and click columns are gathered into that order at once, in two threads (every caller uses them:
        validation, the split, the cache; at 158M rows each gather is a few seconds of random reads).
        """
        if self.order is None:
            self.order, users, times = splits.time_order_columns(self.user_code, self.timestamp, self.item_code)
            self.in_order.update(user_code=users, timestamp=times)
            with ThreadPoolExecutor(2) as pool:
                gathered = pool.map(lambda name: np.take(getattr(self, name), self.order), ("item_code", "click"))
                self.in_order.update(zip(("item_code", "click"), gathered, strict=True))
        return self.order

    def sorted(self, name: str) -> np.ndarray:
        """Column ``name`` in :meth:`time_order`, gathered once (validation and the split share it; 158M random
        reads cost seconds each)."""
        if name not in self.in_order:
            self.in_order[name] = getattr(self, name)[self.time_order()]
        return self.in_order[name]


KEY_CHUNK = 1 << 22  # rows packed at a time by short_id_keys (a 32 MB byte matrix)


def short_id_keys(column: pa.ChunkedArray) -> np.ndarray | None:
    """Each id of a string column as one uint64 that sorts like the id: its UTF-8 bytes, zero-padded, big-endian.

    Returns None when an id is longer than 8 bytes or holds a NUL byte (two ids could then share a key). Ids of
    PixelRec and MovieLens (integers) and of our benchmarks fit; hashing 64-bit integers is ~3x faster than hashing
    strings (158M ids: 14 s against 43 s here).
    """
    keys = np.empty(len(column), np.uint64)
    done = 0
    for whole in column.chunks:
        for start in range(0, len(whole), KEY_CHUNK):
            chunk = whole.slice(start, KEY_CHUNK)
            rows = len(chunk)
            _, offsets_buffer, data_buffer = chunk.buffers()
            offsets = np.frombuffer(offsets_buffer, np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
            offsets = offsets[chunk.offset : chunk.offset + rows + 1]
            data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
            lengths = np.diff(offsets)
            width = int(lengths.max())
            used = data[offsets[0] : offsets[-1]]
            if width > 8 or not used.all():
                return None
            if width == 8 and lengths.min() == 8:  # fixed width 8: the bytes are the keys already
                keys[done : done + rows] = used.view(">u8")
            else:
                matrix = np.zeros((rows, 8), np.uint8)
                if lengths.min() == width:  # fixed width
                    matrix[:, :width] = used.reshape(rows, width)
                else:  # ragged: byte by byte, zero past each id's end
                    for byte in range(width):
                        column_bytes = data[np.minimum(offsets[:-1] + byte, len(data) - 1)]
                        column_bytes[lengths <= byte] = 0
                        matrix[:, byte] = column_bytes
                keys[done : done + rows] = matrix.view(">u8").ravel()
            done += rows
    return keys


def _strings_of_keys(keys: np.ndarray) -> np.ndarray:
    """The ids of :func:`short_id_keys`' keys (object array of str): non-zero bytes are each id's prefix."""
    matrix = keys.astype(">u8").view(np.uint8).reshape(len(keys), 8)
    used = matrix != 0
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(used.sum(axis=1), out=offsets[1:])
    text = pa.LargeStringArray.from_buffers(len(keys), pa.py_buffer(offsets), pa.py_buffer(matrix[used]))
    return text.to_numpy(zero_copy_only=False).astype(object, copy=False)


def encode_ids(read: Callable[[], pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary-encode the string column ``read()`` returns: (int32 codes per row, sorted distinct values).

    Nulls read as "". Codes follow the sorted ids (so sorting codes sorts ids; arrow's byte order = Python's str
    order). Short ids are hashed as 64-bit keys (:func:`short_id_keys`), others as strings. The column is read here
    so that its strings are freed as soon as they are encoded.
    """
    column = read()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())  # integer ids in a parquet file are still ids, compared as strings
    if column.null_count:
        column = column.fill_null("")
    rows = len(column)
    if rows == 0:
        return np.zeros(0, np.int32), np.zeros(0, object)
    keys = short_id_keys(column)
    if keys is not None:
        del column
        encoded = pa.chunked_array([pa.array(keys)]).dictionary_encode()
        del keys
        distinct = encoded.chunk(0).dictionary.to_numpy()
        order = np.argsort(distinct)
        values = _strings_of_keys(distinct[order])
    else:
        encoded = column.dictionary_encode()  # chunks of a ChunkedArray share one dictionary
        del column
        dictionary = encoded.chunk(0).dictionary
        order = pc.sort_indices(dictionary).to_numpy()
        values = dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False).astype(object, copy=False)
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = np.empty(rows, np.int32)
    start = 0
    for chunk in encoded.chunks:
        np.take(rank, chunk.indices.to_numpy(zero_copy_only=False), out=codes[start : start + len(chunk)])
        start += len(chunk)
    return codes, values


def _to_int(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Integers per row and a mask of rows that really held an integer (non-numeric text, nulls, NaN fail)."""
    if pa.types.is_integer(column.type):
        values = column.fill_null(0).to_numpy()
        return values.astype(dtype, copy=False), ~column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(column.type):
        return column.fill_null(False).to_numpy(zero_copy_only=False).astype(dtype), ~column.is_null().to_numpy(
            zero_copy_only=False
        )
    if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and column.null_count == 0:
        try:  # CSV columns are text: arrow's cast is vectorised and succeeds whenever every row is a plain integer
            return column.cast(pa.int64()).to_numpy().astype(dtype, copy=False), np.ones(len(column), bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    # floats or text with bad rows: coerce; only the (rare) files that need it pay for pandas' parser
    numbers = pd.to_numeric(pd.Series(column.to_numpy(zero_copy_only=False)), errors="coerce").to_numpy(float)
    ok = np.isfinite(numbers) & (np.floor(numbers) == numbers)
    return np.where(ok, numbers, 0).astype(dtype), ok


def _to_click(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Clicks as int8 (0 where invalid) and a mask of rows that hold exactly 0 or 1; compared in the file's type."""
    if pa.types.is_integer(column.type):
        values = (column.fill_null(2) if column.null_count else column).to_numpy()  # a null is neither 0 nor 1
    elif pa.types.is_boolean(column.type):
        values = column.fill_null(False).to_numpy(zero_copy_only=False).astype(np.int8)
        values[column.is_null().to_numpy(zero_copy_only=False)] = 2
    else:
        values, numeric = _to_int(column, np.int64)
        values = np.where(numeric, values, 2)
    ok = (values == 0) | (values == 1)
    return np.where(ok, values, 0).astype(np.int8, copy=False), ok


def _scan_column(path: Path, name: str) -> pa.ChunkedArray:
    """One column of a parquet file, decoded batch by batch (a dataset scan: at PixelRec's 158M rows 2-3x less CPU
    than ``ParquetFile.read``, which grows one contiguous array per column; benchmarks/datamodule_scale.py)."""
    return ds.dataset(path, format="parquet").to_table(columns=[name]).column(0)


def _column_reader(path: Path):
    """``(column names, read(name) -> ChunkedArray)`` of a table file; parquet reads one column at a time."""
    try:
        if path.suffix == ".parquet":  # one scan per column: columns are read from several threads
            names = pq.ParquetFile(path).schema_arrow.names
            return names, lambda name: _scan_column(path, name)
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
    return table.column_names, table.column


def read_interaction_arrays(root: str | Path) -> InteractionArrays:
    """Read the interactions table of ``root`` into :class:`InteractionArrays` (no validation beyond columns).

    A parquet file is read one column at a time, the two id columns in two threads (arrow releases the GIL while it
    decodes and hashes); each column's strings are dropped once encoded, so at most the two id columns are held as
    text (158M rows of 8-character ids: ~4 GB), never the whole table as Python objects.
    """
    path = table_path(root, INTERACTIONS_TABLE)
    names, column = _column_reader(path)
    _check_header(path, names, INTERACTION_COLUMNS)
    missing = [c for c in INTERACTION_COLUMNS if c not in names]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; expected at least {list(INTERACTION_COLUMNS)}")
    try:
        with ThreadPoolExecutor(2) as pool:
            users = pool.submit(encode_ids, lambda: column("user_id"))
            items = pool.submit(encode_ids, lambda: column("item_id"))
            timestamps = column("timestamp")
            timestamp, timestamp_ok = parse_timestamps(timestamps)
            bad_rows = np.flatnonzero(~timestamp_ok)
            raw = timestamps.take(pa.array(bad_rows, pa.int64())).to_pylist() if len(bad_rows) else []
            bad_timestamps = {int(r): "" if v is None else str(v) for r, v in zip(bad_rows, raw, strict=True)}
            del timestamps
            click, click_ok = _to_click(column("click"))
            (user_code, user_values), (item_code, item_values) = users.result(), items.result()
    except (pa.ArrowInvalid, OSError) as err:  # a parquet file can be truncated past its footer
        if "UTF8" in str(err):
            raise DatasetFormatError(f"{path}: {_NOT_UTF8}") from err
        raise DatasetFormatError(f"{path}: cannot be read as a table ({err})") from err
    return InteractionArrays(
        path=path,
        user_code=user_code,
        user_values=user_values,
        item_code=item_code,
        item_values=item_values,
        timestamp=timestamp,
        timestamp_ok=timestamp_ok,
        click=click,
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
