"""What the PixelRec and MovieLens converters share: inputs that are never touched, an output that appears whole or
not at all, covers linked into the dataset, interactions streamed in chunks, and an account of every left-out row.

Safety: an ``--out`` folder that holds, or lies inside, an input is refused before anything is written (naming
both), and the dataset is built in a hidden temporary folder beside ``--out`` (``.<name>.partial-*``) that replaces
it in one rename at the end; a failed run removes it, so no half dataset is ever left in ``--out``. One conversion at a
time writes an ``--out`` (``icg.output_lock``), and an earlier dataset is kept until the new one is in place. Covers
are hard links (or copies) of the input files; nothing in an input folder is written, moved or deleted.

Accounting: every row a converter leaves out (item without a cover or title, repeated item, interaction of such an
item, of an unknown item, with an empty user id, a timestamp outside :data:`icg.data.timestamps.TIMESTAMP_RULE` or
a non-numeric rating) is written with its file, 1-based row, ids, offending value and reason to
``<out>/left_out_rows.csv``, counted in ``<out>/conversion_report.json`` and summarised in the log.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from icg.data.schema import IMAGES_DIR, INTERACTION_COLUMNS, INTERACTIONS_TABLE, META_FILE
from icg.data.timestamps import TIMESTAMP_RULE, parse_timestamps
from icg.errors import MissingFileError, OutputFolderError, UserError
from icg.output_lock import output_lock, settle_leftovers, swap_into_place

log = logging.getLogger(__name__)
REPORT_FILE = "conversion_report.json"
LEFT_OUT_FILE = "left_out_rows.csv"
PARTIAL = ".partial-"  # a dataset being written: .<name>.partial-<random> beside --out
LEFT_OUT_COLUMNS = ("file", "row", "item_id", "user_id", "value", "reason")
# reason -> the report key that counts it
REASONS = {
    "duplicate_item": "duplicate_item_rows",
    "no_title": "items_without_title",
    "no_cover": "items_without_cover",
    "item_left_out": "interactions_of_left_out_items",
    "unknown_item": "interactions_with_unknown_item",
    "empty_user_id": "interactions_with_empty_user_id",
    "bad_timestamp": "interactions_with_bad_timestamp",
    "bad_rating": "interactions_with_bad_rating",
}
_EXAMPLES = 3


class ConversionError(UserError, ValueError):
    """A converter's input or output cannot be used as given; the message names the option, file, row and value."""


# ---------------------------------------------------------------------------------------------------- paths
def check_paths(out: Path, files: dict[str, Path], folders: dict[str, Path]) -> None:
    """Refuse missing inputs and an output folder that overlaps an input, before anything is written.

    Args:
        out: the ``--out`` folder.
        files: option -> input file (e.g. ``{"--interactions": Path("Pixel1M.csv")}``).
        folders: option -> input folder (``--covers`` / ``--posters``).
    """
    for option, path in files.items():
        if not Path(path).is_file():
            raise MissingFileError(f"{option} {path}: no such file")
    for option, path in folders.items():
        if not Path(path).is_dir():
            raise MissingFileError(f"{option} {path}: no such folder")
    target = Path(os.path.realpath(out))  # realpath: a symlinked --out or input overlaps too
    for option, path in {**files, **folders}.items():
        real = Path(os.path.realpath(path))
        if real == target or target in real.parents:
            raise ConversionError(
                f"--out {out} holds the input {option} {path}; the converter replaces --out as a whole and never "
                "touches an input: choose an --out folder apart from the inputs"
            )
        if option in folders and real in target.parents:
            raise ConversionError(
                f"--out {out} lies inside the input {option} {path}; the converter never writes into an input "
                "folder: choose an --out folder outside it"
            )
    if Path(out).exists() and not Path(out).is_dir():
        raise OutputFolderError(f"--out {out}: exists and is not a folder")


@contextmanager
def staged_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new hidden folder beside ``out``; on success it becomes ``out`` in one rename, on failure it goes.

    Holds ``out``'s lock (``icg.output_lock``: a second conversion into it is refused, naming the first) and first
    settles what a killed conversion left: its ``.<name>.partial-*`` folders are removed, and an earlier dataset that
    an interrupted ``--overwrite`` had moved aside is put back. An earlier dataset is kept until the new one is in
    place.

    Args:
        out: the dataset folder to produce. It must be missing or empty, or (with ``overwrite``) hold an earlier
            icg dataset, which is replaced only once the new one is complete.
        overwrite: allow replacing an earlier dataset in ``out``.
    """
    out = Path(out)
    with output_lock(out, "icg data convert"):
        settle_leftovers(out, [f".{out.name}{PARTIAL}*"])
        if out.is_dir() and any(out.iterdir()):
            if not overwrite:
                raise OutputFolderError(
                    f"--out {out}: folder is not empty; choose a new folder, or pass --overwrite to replace an "
                    "earlier conversion"
                )
            if not (out / META_FILE).is_file():
                raise OutputFolderError(
                    f"--out {out}: not an icg dataset (no {META_FILE}); --overwrite does not replace it"
                )
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{PARTIAL}"))
        try:
            yield staging
            swap_into_place(staging, out)
        finally:  # KeyboardInterrupt too: never leave a half dataset behind
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- CSV inputs
@contextmanager
def reading(path: Path, encoding: str) -> Iterator[None]:
    """Turn the parser's errors about a user's CSV file into one line naming the file (and ``--encoding``)."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise ConversionError(
            f"{path}: cannot be read as {encoding} text ({err.reason} at byte 0x{err.object[err.start]:02x}); pass "
            "--encoding with the file's encoding (PixelRec exports are often GBK: --encoding gbk)"
        ) from err
    except LookupError as err:  # an --encoding Python does not know
        raise ConversionError(f"--encoding {encoding!r}: {err}") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ConversionError(f"{path}: not a readable CSV file ({str(err).strip()})") from err


def check_header(path: Path, columns: tuple[str, ...], layout: str, encoding: str) -> None:
    """Refuse a CSV whose header lacks one of ``columns`` or names one of them twice (pandas would rename it).

    Args:
        path: the CSV file.
        columns: the columns the converter reads.
        layout: how the source's file is described in the message (e.g. ``PixelRec's item_info.csv``).
        encoding: the file's text encoding.
    """
    with reading(path, encoding), open(path, encoding=encoding, newline="") as file:
        header = next(csv.reader(file), None)
    if not header:
        raise ConversionError(f"{path}: empty file; {layout} starts with the header {','.join(columns)}")
    header = [name.lstrip("\ufeff") for name in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConversionError(f"{path}: missing column(s) {missing}; {layout} has {list(columns)}")
    repeated = {c: [i + 1 for i, name in enumerate(header) if name == c] for c in columns if header.count(c) > 1}
    if repeated:
        where = ", ".join(f"{c!r} at columns {positions}" for c, positions in repeated.items())
        raise ConversionError(f"{path}: the header names {where}; keep one of each")


def read_table_csv(path: Path, columns: tuple[str, ...], layout: str, encoding: str) -> pd.DataFrame:
    """A small source table (items, movies) as strings, empty cells kept as ``""``; index = 0-based data row."""
    check_header(path, columns, layout, encoding)
    with reading(path, encoding):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
    frame.columns = [str(c).lstrip("\ufeff") for c in frame.columns]
    return frame


# ---------------------------------------------------------------------------------------------------- left-out rows
class LeftOutRows:
    """Appends every left-out row to ``<root>/left_out_rows.csv`` and counts it by reason.

    Columns: ``file`` (the input's name), ``row`` (1-based data row; CSV line = row + 1), ``item_id``, ``user_id``,
    ``value`` (the offending value, for bad timestamps and ratings), ``reason`` (a key of :data:`REASONS`).

    Args:
        root: the dataset folder being written.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LEFT_OUT_FILE
        self.counts = dict.fromkeys(REASONS, 0)
        self.examples: dict[str, list[str]] = {reason: [] for reason in REASONS}
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        csv.writer(self._file).writerow(LEFT_OUT_COLUMNS)

    def add(self, file: str, rows, reason: str, item_ids=None, user_ids=None, values=None) -> None:
        """Record ``rows`` (0-based data rows of ``file``) as left out for ``reason``."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        blank = [""] * len(rows)
        frame = pd.DataFrame(
            {
                "file": file,
                "row": rows + 1,
                "item_id": blank if item_ids is None else list(item_ids),
                "user_id": blank if user_ids is None else list(user_ids),
                "value": blank if values is None else list(values),
                "reason": reason,
            }
        )
        frame.to_csv(self._file, header=False, index=False)
        self.counts[reason] += len(rows)
        for record in frame.head(_EXAMPLES - len(self.examples[reason])).itertuples():
            value = f" value {record.value!r}" if record.value != "" else ""
            ids = ", ".join(f"{k} {v!r}" for k, v in (("item_id", record.item_id), ("user_id", record.user_id)) if v)
            self.examples[reason].append(f"{file} row {record.row} (line {record.row + 1}){value} ({ids})")

    def summary(self) -> str:
        """The reasons with counts and first rows, for the log and for errors."""
        return "; ".join(
            f"{reason} {count} (first: {', '.join(self.examples[reason])})"
            for reason, count in self.counts.items()
            if count
        )

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------------------------------- items
def attach_covers(
    items: pd.DataFrame, covers: Path, root: Path, left_out: LeftOutRows, file: str, suffix: str = ".jpg"
) -> pd.DataFrame:
    """Link ``<covers>/<item_id><suffix>`` into ``<root>/images/`` and set ``image``; items without one are left out.

    ``root`` is a fresh folder (see :func:`staged_output`), so nothing is ever unlinked: a cover stays untouched
    even when ``--covers`` and the dataset share files through hard links.

    Returns:
        the items that have a cover, with ``image`` set.
    """
    available = {name for name in os.listdir(covers) if name.endswith(suffix)}  # one listing, not 100k stats
    has_cover = (items["item_id"] + suffix).isin(available).to_numpy()
    left_out.add(file, items.index[~has_cover], "no_cover", item_ids=items.loc[~has_cover, "item_id"])
    images = Path(root) / IMAGES_DIR
    images.mkdir()
    kept = items[has_cover].copy()
    for item_id in kept["item_id"]:
        source, target = covers / f"{item_id}{suffix}", images / f"{item_id}{suffix}"
        try:
            os.link(source, target)  # no extra disk
        except OSError:  # another device, or a file system without hard links
            shutil.copy2(source, target)
    kept["image"] = IMAGES_DIR + "/" + kept["item_id"] + suffix
    return kept


def select_items(
    items: pd.DataFrame, covers: Path, root: Path, left_out: LeftOutRows, file: str, covers_option: str
) -> pd.DataFrame:
    """Drop repeated item ids, untitled items and items without a cover (each recorded); link the covers.

    Args:
        items: the source's items with ``item_id`` and ``title`` (stripped), index = 0-based data row.
        covers: the covers folder.
        root: the dataset folder being written.
        left_out: where left-out rows go.
        file: the items file's name, for the record.
        covers_option: ``--covers`` / ``--posters``, for the message when no item has a cover.
    """
    duplicate = items["item_id"].duplicated(keep="first").to_numpy()
    left_out.add(file, items.index[duplicate], "duplicate_item", item_ids=items.loc[duplicate, "item_id"])
    items = items[~duplicate]
    untitled = (items["title"] == "").to_numpy()
    left_out.add(file, items.index[untitled], "no_title", item_ids=items.loc[untitled, "item_id"])
    kept = attach_covers(items[~untitled], covers, root, left_out, file)
    if kept.empty:
        raise ConversionError(
            f"{covers_option} {covers}: none of the {len(items)} items of {file} has a cover <item_id>.jpg there "
            f"(left out: {left_out.summary() or 'nothing'})"
        )
    return kept


# ---------------------------------------------------------------------------------------------------- interactions
class InteractionsWriter:
    """Streams interaction chunks into ``<root>/interactions.parquet`` with the format's column types.

    Args:
        root: the dataset folder (a fresh one: nothing is replaced).
    """

    SCHEMA = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("click", pa.int8()), ("timestamp", pa.int64())]
    )

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> InteractionsWriter:
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


ClickRule = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]


def convert_interactions_csv(
    source: Path,
    columns: dict[str, str],
    to_click: ClickRule,
    kept_items: set[str],
    left_out_items: set[str],
    root: Path,
    left_out: LeftOutRows,
    layout: str,
    encoding: str = "utf-8",
    chunk_rows: int = 1_000_000,
) -> dict[str, int]:
    """Stream a source's interactions CSV into ``<root>/interactions.parquet``, recording every row left out.

    A row is left out, for the first reason that applies, when its item was left out, its item is unknown, its user
    id is empty, its timestamp breaks :data:`icg.data.timestamps.TIMESTAMP_RULE` or ``to_click`` refuses it.

    Args:
        source: the CSV file.
        columns: source column -> format column (``user_id``, ``item_id``, ``timestamp`` and the click source).
        to_click: function of a chunk (format column names) returning (int 0/1 clicks, bool ok per row).
        kept_items: item ids that made it into the items table.
        left_out_items: known item ids the converter left out (e.g. no cover).
        root: the dataset folder being written.
        left_out: where left-out rows go.
        layout: the source file's description for messages (e.g. ``PixelRec's interactions CSV``).
        encoding: the file's text encoding.
        chunk_rows: rows read at a time (bounded memory at any scale).

    Returns:
        counts: ``read`` and ``written`` rows.
    """
    check_header(source, tuple(columns), layout, encoding)
    counts = {"read": 0, "written": 0}
    name = source.name
    with reading(source, encoding), InteractionsWriter(root) as writer:
        # no usecols: with it pandas would silently accept a row with extra fields
        reader = pd.read_csv(source, dtype=str, keep_default_na=False, chunksize=chunk_rows, encoding=encoding)
        for chunk in reader:
            chunk = chunk[list(columns)].rename(columns=columns)
            counts["read"] += len(chunk)
            timestamp, timestamp_ok = parse_timestamps(chunk["timestamp"])
            click, click_ok = to_click(chunk)
            reason = np.select(
                [
                    chunk["item_id"].isin(left_out_items).to_numpy(),
                    ~chunk["item_id"].isin(kept_items).to_numpy(),
                    (chunk["user_id"].str.strip() == "").to_numpy(),
                    ~timestamp_ok,
                    ~click_ok,
                ],
                ["item_left_out", "unknown_item", "empty_user_id", "bad_timestamp", "bad_rating"],
                default="",
            )
            for why in np.unique(reason[reason != ""]):
                rows = reason == why
                value_column = {"bad_timestamp": "timestamp", "bad_rating": "rating"}.get(why)
                left_out.add(
                    name,
                    chunk.index[rows],
                    str(why),
                    item_ids=chunk.loc[rows, "item_id"],
                    user_ids=chunk.loc[rows, "user_id"],
                    values=chunk.loc[rows, value_column] if value_column else None,
                )
            keep = reason == ""
            writer.write(chunk[keep].assign(timestamp=timestamp[keep], click=click[keep]))
        counts["written"] = writer.rows
    if counts["written"] == 0:
        rule = f"; a timestamp must be {TIMESTAMP_RULE}" if left_out.counts["bad_timestamp"] else ""
        raise ConversionError(
            f"{source}: nothing left to write, all {counts['read']} interaction rows were left out "
            f"({left_out.summary() or 'the file has no data rows'}){rule}"
        )
    return counts


# ---------------------------------------------------------------------------------------------------- report
def write_conversion_report(
    root: Path, out: Path, source: str, items_read: int, items_written: int, counts: dict, left_out: LeftOutRows
) -> dict:
    """Write ``conversion_report.json`` (every left-out row counted; the rows in ``left_out_rows.csv``) and say loudly
    what was left out.

    Args:
        root: the dataset folder being written.
        out: where it will be once complete (for the log).
        source: ``pixelrec`` or ``movielens``.
        items_read: data rows of the items file.
        items_written: items in the dataset.
        counts: ``read`` / ``written`` interaction rows.
        left_out: the record of left-out rows.
    """
    report = {
        "source": source,
        "items_read": items_read,
        "items_written": items_written,
        "interactions_read": counts["read"],
        "interactions_written": counts["written"],
        **{key: left_out.counts[reason] for reason, key in REASONS.items()},
        "left_out_rows": LEFT_OUT_FILE,
    }
    (Path(root) / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    if any(left_out.counts.values()):
        log.warning(
            "%s: left out %s. Every left-out row, with its reason: %s",
            out,
            left_out.summary(),
            Path(out) / LEFT_OUT_FILE,
        )
    return report
