"""Every kind of bad input in an icg dataset, found at once and reported in one message.

Used by ``ICGDataModule.setup()`` and ``icg data validate`` (the records format of ICG, Bian et al., EMNLP 2025,
as documented in docs/data.md). The checks are vectorised over the interactions (numpy on the compact arrays of
:func:`icg.data.schema.read_interaction_arrays`) so that a Pixel1M-sized table (~20M rows) validates in seconds;
images are checked once per distinct file: existence for all, a PIL ``verify()`` (header and structure, not a full
decode) for every file that exists.

Kinds: missing image, corrupt image, image path escaping the dataset root, empty title, empty id, duplicate row
(items: same ``item_id``; interactions: same ``user_id, item_id, timestamp``; the first one is kept), interaction
with an unknown item, timestamp outside ``icg.data.timestamps.TIMESTAMP_RULE`` (one rule with the converters; the
report shows the value), click other than 0/1. With ``on_bad_record: skip`` the bad rows are
left out, together with the interactions of items that were left out, and :meth:`ValidationReport.skip_report`
lists exactly those rows.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from icg.data.schema import (
    ITEM_COLUMNS,
    ITEMS_TABLE,
    DatasetFormatError,
    InteractionArrays,
    read_interaction_arrays,
    read_meta,
    read_table,
    row_label,
    table_path,
)
from icg.data.timestamps import TIMESTAMP_RULE
from icg.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# kind -> how the report names it; the order is the report's order
KINDS = {
    "missing_image": "missing image file",
    "corrupt_image": "corrupt image (PIL cannot read it)",
    "image_escapes_root": "image path escaping the dataset folder",
    "empty_title": "empty title",
    "empty_id": "empty id",
    "duplicate_row": "duplicate row",
    "unknown_item": "interaction with an unknown item",
    "bad_timestamp": "timestamp that is not whole seconds or ISO-8601",
    "bad_click": "click that is not 0 or 1",
    "item_left_out": "interaction whose item was left out",  # only in skip mode's report, never an error itself
}
MAX_EXAMPLES = 5
SKIP_REPORT_NAME = "skip_report.json"
_VERIFY_THREADS = 8  # image checks are I/O bound; threads overlap the stat/open latency of network file systems
_PROBE, _SLOW_STAT_S = 256, 100e-6  # paths located first, in this thread; slower than this each: use the threads


class DataValidationError(UserError, ValueError):
    """The dataset holds bad records; the message lists every kind with counts and the first offending rows."""


@dataclass
class Problem:
    """One kind of bad input in one file.

    Args:
        kind: a key of ``KINDS``.
        path: the file holding the rows.
        rows: 0-based data rows (file order) that have it.
        examples: the first rows, formatted for the report.
    """

    kind: str
    path: Path
    rows: np.ndarray
    examples: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.rows)

    def describe(self) -> str:
        more = f", ... ({self.count - len(self.examples)} more)" if self.count > len(self.examples) else ""
        return f"{KINDS[self.kind]}: {self.count} row(s) in {self.path.name}; first: {'; '.join(self.examples)}{more}"


@dataclass
class ValidationReport:
    """What :func:`validate` found; ``item_keep`` / ``interaction_keep`` say which rows survive skip mode.

    Args:
        root: the dataset folder.
        items_path: the items file.
        interactions_path: the interactions file.
        problems: every (kind, file) with at least one row; ``item_left_out`` is bookkeeping for skip mode.
        item_keep: bool per items row.
        interaction_keep: bool per interactions row.
        time_order: interaction rows sorted by (user_id, timestamp, item_id, file row); splits reuse it.
    """

    root: Path
    items_path: Path
    interactions_path: Path
    problems: list[Problem]
    item_keep: np.ndarray
    interaction_keep: np.ndarray
    time_order: np.ndarray

    @property
    def errors(self) -> list[Problem]:
        """The problems that are bad input (not the cascade of skip mode)."""
        return [p for p in self.problems if p.kind != "item_left_out"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def message(self) -> str:
        """The one report: every kind with its count and first rows; empty when clean."""
        if self.ok:
            return ""
        rows = sum(p.count for p in self.errors)
        lines = [f"{self.root}: bad input, {len(self.errors)} kind(s) in {rows} row(s) (rows are 1-based data rows):"]
        lines += [f"  - {p.describe()}" for p in self.errors]
        if any(p.kind == "bad_timestamp" for p in self.errors):
            lines.append(f"A timestamp must be {TIMESTAMP_RULE}.")
        lines.append(
            "Fix these rows, or set on_bad_record: skip to leave them out "
            f"(a JSON report of what was left out is written, by default to the run folder's {SKIP_REPORT_NAME})."
        )
        return "\n".join(lines)

    def skip_report(self, items: pd.DataFrame, interactions: InteractionArrays) -> dict:
        """Exactly what skip mode leaves out: every dropped row of both files with its id(s) and reasons."""
        item_reasons: dict[int, list[str]] = {}
        inter_reasons: dict[int, list[str]] = {}
        for problem in self.problems:
            target = item_reasons if problem.path == self.items_path else inter_reasons
            for row in problem.rows.tolist():
                target.setdefault(row, []).append(problem.kind)
        item_rows = [
            {"row": row + 1, "item_id": str(items["item_id"].iloc[row]), "reasons": reasons}
            for row, reasons in sorted(item_reasons.items())
        ]
        inter_rows = [
            {
                "row": row + 1,
                "user_id": str(interactions.user_values[interactions.user_code[row]]),
                "item_id": str(interactions.item_values[interactions.item_code[row]]),
                "reasons": reasons,
            }
            for row, reasons in sorted(inter_reasons.items())
        ]
        return {
            "dataset": str(self.root),
            "rows": "1-based data rows (CSV: line = row + 1)",
            "items_left_out": {"file": self.items_path.name, "count": len(item_rows), "rows": item_rows},
            "interactions_left_out": {
                "file": self.interactions_path.name,
                "count": len(inter_rows),
                "rows": inter_rows,
            },
        }

    def write_skip_report(self, items: pd.DataFrame, interactions: InteractionArrays, path: Path) -> Path:
        """Write :meth:`skip_report` as JSON to ``path`` (never inside the dataset: an input is never written to)."""
        path = Path(path)
        if self.root.resolve() in path.resolve().parents:
            raise ConfigError(f"skip_report={path}: inside the dataset {self.root}, which is never written to; name a "
                              "file elsewhere")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.skip_report(items, interactions), indent=1) + "\n")
        return path


def _item_example(items: pd.DataFrame, path: Path, row: int) -> str:
    return f"{row_label(path, row)} (item_id {items['item_id'].iloc[row]!r}, image {items['image'].iloc[row]!r})"


def _interaction_example(inter: InteractionArrays, row: int) -> str:
    user = inter.user_values[inter.user_code[row]]
    item = inter.item_values[inter.item_code[row]]
    value = f"timestamp {inter.bad_timestamps[row]!r}, " if row in inter.bad_timestamps else ""
    return f"{row_label(inter.path, row)} ({value}user_id {user!r}, item_id {item!r})"


def cached_realpath(root_real: str, relative: str, parents: dict[str, str]) -> str:
    """``os.path.realpath(root_real/relative)``, resolving each parent folder once (covers share one or a few)."""
    head, name = os.path.split(relative)
    if name in ("", ".", ".."):
        return os.path.realpath(os.path.join(root_real, relative))
    parent = parents.get(head)
    if parent is None:
        parent = parents[head] = os.path.realpath(os.path.join(root_real, head))
    full = os.path.join(parent, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def _locate(root_real: str, relative: str, parents: dict[str, str]) -> tuple[str | None, str, tuple[int, int, int]]:
    """``(problem kind or None, resolved path, (size, mtime_ns, inode))`` of one image path, without opening it."""
    if not relative:
        return "missing_image", "", (0, 0, 0)
    if os.path.isabs(relative):
        return "image_escapes_root", "", (0, 0, 0)
    full = cached_realpath(root_real, relative, parents)  # resolved: a symlink out of the root escapes too
    if not full.startswith(root_real + os.sep):
        return "image_escapes_root", full, (0, 0, 0)
    try:
        info = os.stat(full)
    except OSError:
        return "missing_image", full, (0, 0, 0)
    if not stat.S_ISREG(info.st_mode):
        return "missing_image", full, (0, 0, 0)
    return None, full, (info.st_size, info.st_mtime_ns, info.st_ino)


def _readable(full: str) -> bool:
    try:
        with Image.open(full) as image:
            image.verify()
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files; all mean "corrupt"
        return False
    return True


def check_images(root: Path, paths: np.ndarray, verified: dict | None = None) -> dict[str, str]:
    """Problem kind per distinct image path (only the bad ones).

    Every path is resolved and stat-ed (in this thread: ~6 us each on a local disk, where worker threads cost more
    than they save; in the thread pool when the first ones show a slow file system), then the files not already in
    ``verified`` are opened with PIL's ``verify()`` in the thread pool.

    Args:
        root: the dataset folder.
        paths: image paths relative to it (repeats are checked once).
        verified: relative path -> (size, mtime_ns, inode) of files that passed ``verify()`` before; a file that
            still matches is not opened again; files that pass now are added (read and updated in place).
    """
    root_real = os.path.realpath(root)
    distinct = list(dict.fromkeys(str(p) for p in paths))
    parents: dict[str, str] = {}
    locate = lambda rel: _locate(root_real, rel, parents)  # noqa: E731
    start = time.perf_counter()
    located = [locate(rel) for rel in distinct[:_PROBE]]
    if len(distinct) > _PROBE and time.perf_counter() - start > _PROBE * _SLOW_STAT_S:  # network file system
        with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
            located += pool.map(locate, distinct[_PROBE:], chunksize=256)
    else:
        located += [locate(rel) for rel in distinct[_PROBE:]]
    bad = {rel: kind for rel, (kind, _, _) in zip(distinct, located, strict=True) if kind is not None}
    unseen = [
        (rel, full, key)
        for rel, (kind, full, key) in zip(distinct, located, strict=True)
        if kind is None and (verified is None or verified.get(rel) != key)
    ]
    if len(unseen) > 64:
        with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
            readable = list(pool.map(lambda item: _readable(item[1]), unseen, chunksize=64))
    else:
        readable = [_readable(full) for _, full, _ in unseen]
    for (rel, _, key), ok in zip(unseen, readable, strict=True):
        if not ok:
            bad[rel] = "corrupt_image"
        elif verified is not None:
            verified[rel] = key
    return bad


def _per_row(per_value: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``per_value[codes]``, without the gather (158M rows: seconds) when no value is flagged."""
    return per_value[codes] if per_value.any() else np.zeros(len(codes), bool)


def _equal_neighbours(values: np.ndarray) -> np.ndarray:
    """``values[1:] == values[:-1]`` (bool; unlike ``np.diff(values) == 0`` no row-sized integer temporary)."""
    return values[1:] == values[:-1]


def validate(
    root: str | Path,
    items: pd.DataFrame,
    items_path: Path,
    interactions: InteractionArrays,
    check_image_files: bool = True,
    verified_images: dict | None = None,
) -> ValidationReport:
    """Find every bad record of a dataset already read from disk.

    Args:
        root: the dataset folder (image paths are relative to it).
        items: the items table as read by ``read_table`` (file order).
        items_path: its file, for the report.
        interactions: the interactions as compact arrays (file order).
        check_image_files: check existence and readability of images (``icg data stats`` skips it).
        verified_images: see :func:`check_images` (existence and the root are checked regardless).
    """
    root = Path(root)
    for path, rows in ((items_path, len(items)), (interactions.path, len(interactions))):
        if rows == 0:
            raise DatasetFormatError(f"{path}: no data rows (a header only); a dataset needs items and interactions")
    problems: list[Problem] = []

    def add(kind: str, path: Path, mask: np.ndarray, example) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            problems.append(Problem(kind, path, rows, [example(int(r)) for r in rows[:MAX_EXAMPLES]]))

    # items: small (<= ~100k rows), pandas is fine
    item_ids = items["item_id"].to_numpy(dtype=object)
    item_example = lambda row: _item_example(items, items_path, row)  # noqa: E731
    item_bad = np.zeros(len(items), bool)
    if check_image_files:
        bad_images = check_images(root, items["image"].to_numpy(dtype=object), verified_images)
        image_kind = items["image"].map(bad_images).to_numpy(dtype=object)
        for kind in ("missing_image", "corrupt_image", "image_escapes_root"):
            mask = image_kind == kind
            add(kind, items_path, mask, item_example)
            item_bad |= mask
    empty_title = items["title"].str.strip().eq("").to_numpy(dtype=bool)
    empty_item_id = items["item_id"].str.strip().eq("").to_numpy(dtype=bool)
    duplicate_item = items["item_id"].duplicated(keep="first").to_numpy(dtype=bool) & ~empty_item_id
    add("empty_title", items_path, empty_title, item_example)
    add("empty_id", items_path, empty_item_id, item_example)
    add("duplicate_row", items_path, duplicate_item, item_example)
    item_keep = ~(item_bad | empty_title | empty_item_id | duplicate_item)

    # interactions: vectorised over the row arrays
    inter = interactions
    inter_example = lambda row: _interaction_example(inter, row)  # noqa: E731
    known = pd.Index(pd.unique(item_ids[~empty_item_id])).get_indexer(inter.item_values) >= 0  # per distinct value
    kept = pd.Index(item_ids[item_keep]).get_indexer(inter.item_values) >= 0  # kept ids are unique
    empty_user = _per_row(inter.user_values == "", inter.user_code)
    unknown = _per_row(~known, inter.item_code)
    left_out = _per_row(~kept & known, inter.item_code)
    bad_ts = ~inter.timestamp_ok
    bad_click = ~inter.click_ok
    # one stable sort by (user, timestamp, item); the codes follow sorted ids, so this is the split's time order
    # and exact duplicates (same user, item, timestamp) sit next to each other with the first file row first
    order = inter.time_order()
    same = _equal_neighbours(inter.sorted("user_code"))  # sorted columns: ICGDataModule.setup() reuses them
    same &= _equal_neighbours(inter.sorted("item_code"))
    same &= _equal_neighbours(inter.sorted("timestamp"))
    duplicate = np.zeros(len(inter), bool)
    duplicate[order[1:][same]] = True
    duplicate &= inter.timestamp_ok  # rows with unreadable timestamps are reported as such, not as duplicates
    add("empty_id", inter.path, empty_user, inter_example)
    add("duplicate_row", inter.path, duplicate, inter_example)
    add("unknown_item", inter.path, unknown, inter_example)
    add("bad_timestamp", inter.path, bad_ts, inter_example)
    add("bad_click", inter.path, bad_click, inter_example)
    interaction_keep = ~(empty_user | duplicate | unknown | bad_ts | bad_click)
    add("item_left_out", inter.path, left_out & interaction_keep, inter_example)
    interaction_keep &= ~left_out
    problems.sort(key=lambda p: (list(KINDS).index(p.kind), p.path != items_path))
    return ValidationReport(
        root=root,
        items_path=items_path,
        interactions_path=inter.path,
        problems=problems,
        item_keep=item_keep,
        interaction_keep=interaction_keep,
        time_order=order,
    )


def read_items(root: str | Path) -> tuple[pd.DataFrame, Path]:
    """The items table of ``root`` and its path."""
    path = table_path(root, ITEMS_TABLE)
    return read_table(path, ITEM_COLUMNS), path


def validate_dataset(root: str | Path, check_image_files: bool = True) -> ValidationReport:
    """Read and validate the dataset folder ``root`` (what ``icg data validate`` runs)."""
    read_meta(root)  # a folder without a valid meta.json is not a dataset at all: say so first
    items, items_path = read_items(root)
    return validate(root, items, items_path, read_interaction_arrays(root), check_image_files)
