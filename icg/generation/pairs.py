"""The (user, item) pairs ``icg generate`` makes covers for: read from a CSV or JSONL file, checked, served in batches.

ICG (Bian et al., EMNLP 2025) generates a cover per (user, item) a platform is about to show. A pairs file names them::

    user_id,item_id                      resolved against a dataset's items table (--data_root, docs/data.md)
    u0001,i00042
    user_id,item_id,title,image          or self-contained: the title and the reference cover's path
    u0001,new-7,"Red star on a dark backdrop",covers/new-7.jpg

JSONL holds the same keys, one object per line. Per row, a non-empty ``title`` / ``image`` in the file wins and the
dataset fills what is missing; an image path is relative to the pairs file's folder (the dataset's to its root), or
absolute. Every row is checked before anything is generated: empty ids, an item neither the file nor the dataset
describes, an empty title, a missing or unreadable image, a repeated (user, item). Each bad row is named (file, row,
line) with its reason; ``on_bad_record="skip"`` leaves them out and the caller writes them down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from icg.errors import UserError

REQUIRED = ("user_id", "item_id")
SUFFIXES = (".csv", ".jsonl")
_VERIFY_THREADS = 8


class PairsError(UserError, ValueError):
    """A pairs file that cannot be used as it is; the message names the file, the row and what to do."""


@dataclass(frozen=True)
class Pair:
    """One (user, item) to make a cover for.

    Args:
        row: 1-based data row in the pairs file.
        user_id: the user.
        item_id: the item (its id names the cover and seeds it).
        title: the item's title.
        image: the item's reference cover (absolute path).
    """

    row: int
    user_id: str
    item_id: str
    title: str
    image: str

    @property
    def key(self) -> tuple[str, str]:
        return self.user_id, self.item_id


@dataclass(frozen=True)
class BadPair:
    """A row left out, and why (what ``--on_bad_record skip`` writes down)."""

    row: int
    where: str
    user_id: str
    item_id: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _label(path: Path, row: int) -> str:
    """A 1-based data row; a CSV's line number counts its header line too."""
    return f"{path.name} row {row} (line {row + 1})" if path.suffix == ".csv" else f"{path.name} line {row}"


def _rows(path: Path) -> list[dict | None]:
    """The file's rows as dicts of strings (None for a JSONL line that is not a JSON object)."""
    if path.suffix == ".csv":
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise PairsError(f"{path}: cannot be read as CSV ({err})") from err
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise PairsError(f"{path}: missing column(s) {missing}; a pairs file has at least {list(REQUIRED)}")
        return frame.to_dict("records")
    rows: list[dict | None] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        rows.append({k: "" if v is None else str(v) for k, v in value.items()} if isinstance(value, dict) else None)
    return rows


def _image_problem(path: str) -> str | None:
    if not os.path.isfile(path):
        return f"missing image {path!r}"
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files; all mean "unreadable"
        return f"unreadable image {path!r}"
    return None


def read_pairs(path: str | Path, data_root: str | Path | None = None) -> tuple[list[Pair], list[BadPair]]:
    """Read and check a pairs file (see the module docstring).

    Args:
        path: ``.csv`` or ``.jsonl`` with ``user_id``, ``item_id`` and optionally ``title``, ``image``.
        data_root: an icg dataset whose items table resolves items the file does not describe.

    Returns:
        ``(pairs, bad)``: the usable pairs in file order, and every bad row with its reason.

    Raises:
        PairsError: the file is missing, of another type, unreadable, lacks ``user_id``/``item_id``, or rows need a
            dataset and none was given.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"--pairs: {path} does not exist (a .csv or .jsonl of user_id,item_id[,title,image])")
    if path.suffix not in SUFFIXES:
        raise PairsError(f"--pairs: {path} must end in {' or '.join(SUFFIXES)}")
    items: dict[str, tuple[str, str]] = {}
    if data_root is not None:
        from icg.data.schema import DatasetFormatError, read_dataset

        try:
            frame, _, _ = read_dataset(data_root)
        except DatasetFormatError as err:
            raise PairsError(f"--data_root: {err}") from err
        root = Path(data_root).resolve()
        columns = zip(frame["item_id"], frame["title"], frame["image"], strict=True)
        items = {item: (title, str(root / image)) for item, title, image in columns}
    base = path.resolve().parent
    pairs: list[Pair] = []
    bad: list[BadPair] = []
    first: dict[tuple[str, str], int] = {}
    for row, record in enumerate(_rows(path), 1):
        where = _label(path, row)
        if record is None:
            bad.append(BadPair(row, where, "", "", "not a JSON object"))
            continue
        # ids exactly as written (spaces included), as the dataset, stage 1 and the export's user table keep them
        user, item = str(record.get("user_id", "")), str(record.get("item_id", ""))
        title, image = str(record.get("title") or ""), str(record.get("image") or "").strip()
        reason = None
        if not user.strip() or not item.strip():
            reason = "empty user_id" if not user.strip() else "empty item_id"
        elif (not title.strip() or not image) and item not in items:
            reason = (
                f"unknown item {item!r} (not in {Path(data_root) / 'items'}.*)"
                if data_root is not None
                else "no title/image in the row and no --data_root to look the item up in"
            )
        else:
            known_title, known_image = items.get(item, ("", ""))
            title = title if title.strip() else known_title
            image = str(base / image) if image else known_image
            if not title.strip():
                reason = "empty title"
            elif (user, item) in first:
                reason = f"duplicate pair (user {user!r}, item {item!r}) of row {first[(user, item)]}"
        if reason is not None:
            bad.append(BadPair(row, where, user, item, reason))
            continue
        first[(user, item)] = row
        pairs.append(Pair(row, user, item, title, image))
    problems = _check_images([p.image for p in pairs])
    if problems:
        bad += [BadPair(p.row, _label(path, p.row), p.user_id, p.item_id, problems[p.image]) for p in pairs
                if p.image in problems]  # fmt: skip
        pairs = [p for p in pairs if p.image not in problems]
        bad.sort(key=lambda b: b.row)
    return pairs, bad


def _check_images(paths: Sequence[str]) -> dict[str, str]:
    """Problem per distinct image path (only the bad ones), checked in a small thread pool."""
    distinct = list(dict.fromkeys(paths))
    if len(distinct) > 64:
        with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
            found = list(pool.map(_image_problem, distinct, chunksize=64))
    else:
        found = [_image_problem(p) for p in distinct]
    return {p: problem for p, problem in zip(distinct, found, strict=True) if problem is not None}


def bad_rows_message(path: str | Path, bad: Sequence[BadPair]) -> str:
    """One line for the bad rows of a pairs file: how many, the first three, and what to do."""
    shown = "; ".join(f"{b.where}: {b.reason}" for b in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    return (f"{path}: {len(bad)} bad row(s): {shown}. Fix them, or pass --on_bad_record skip to leave them out "
            "(written to skipped.jsonl)")  # fmt: skip


class PairsDataset(Dataset):
    """Pairs as DataLoader rows: ids, title, the reference cover decoded at the generator's size, its path.

    The reference is decoded exactly as ``CoverGenerator`` and the DataModule decode covers (``reference_batch``), so a
    cover made here equals one made from a notebook or by stage 3 for the same pair and seed.

    Args:
        pairs: the pairs to serve, in order.
        image_size: side of the decoded reference (the generator's ``image_size``).
    """

    def __init__(self, pairs: Sequence[Pair], image_size: int) -> None:
        self.pairs = list(pairs)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        from icg.generation.generator import reference_batch

        pair = self.pairs[index]
        return {
            "row": pair.row,
            "user_id": pair.user_id,
            "item_id": pair.item_id,
            "title": pair.title,
            "reference": pair.image,
            "image": reference_batch([pair.image], self.image_size)[0],
        }
