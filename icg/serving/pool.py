"""A cover pool in memory: which cover to show a user for an item, answered by dictionary look-ups.

A platform makes a pool of covers per item offline (``icg generate``, ICG: Bian et al., EMNLP 2025) and picks one per
user; at display time a front end asks "which cover for this user and this item?". :meth:`CoverPool.load` reads the
pool folder once into dictionaries, so :meth:`CoverPool.answer` touches no disk::

    <pool>/generate.json      the run's settings: "export_weights" (the export's fingerprint), "mode", ...
    <pool>/covers/...         the cover images
    <pool>/pool.parquet       one row per pool cover: item_id, slot, segment (null: cold-start), seed, cover
    <pool>/picks.parquet      one row per (user, item): user_id, item_id, slot, cover, score, segment, fallback
    <pool>/segments.parquet   optional: user_id, segment

``cover`` paths are relative to ``<pool>`` and must lie in ``<pool>/covers/``. Fallback order of an answer: the
user's pick for the item -> the cover of the user's segment for the item -> the item's cold-start cover (a pool row
whose segment is null; the lowest slot when several) -> the item's reference cover from the dataset (``data_root``)
-> nothing (the caller answers 404). Every answer but a pick says why in its ``note``. :func:`check_export` refuses a
pool another export made. A pool folder that cannot be read is a :class:`PoolError`, one line naming the file and the
problem (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from icg.data.schema import ITEM_COLUMNS, ITEMS_TABLE, read_table, table_path
from icg.errors import UserError

SETTINGS = "generate.json"
COVERS_DIR = "covers"
POOL_TABLE = "pool.parquet"
PICKS_TABLE = "picks.parquet"
SEGMENTS_TABLE = "segments.parquet"
log = logging.getLogger(__name__)
SOURCES = ("pick", "segment", "cold_start", "reference")

# column -> (kind, nullable); kinds: "str" (a non-empty string unless nullable), "int", "float", "bool"
POOL_COLUMNS = {"item_id": ("str", False), "slot": ("int", False), "segment": ("str", True), "seed": ("int", False),
                "cover": ("str", False)}  # fmt: skip
PICKS_COLUMNS = {"user_id": ("str", False), "item_id": ("str", False), "slot": ("int", False),
                 "cover": ("str", False), "score": ("float", True), "segment": ("str", True),
                 "fallback": ("bool", False)}  # fmt: skip
SEGMENTS_COLUMNS = {"user_id": ("str", False), "segment": ("str", False)}
_TYPE_CHECKS: dict[str, Callable[[pa.DataType], bool]] = {
    "str": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "int": pa.types.is_integer,
    "float": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "bool": pa.types.is_boolean,
}
_KIND_NAMES = {"str": "strings", "int": "integers", "float": "numbers", "bool": "booleans"}


class PoolError(UserError, ValueError):
    """The pool folder is missing, incomplete or malformed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Which cover a front end shows ``user`` for ``item``.

    Args:
        user: the user id asked for.
        item: the item id asked for.
        cover: the cover's address under the service (``/covers/...`` or ``/reference/...``).
        score: the pick's click probability under the stage-1 model, or None (not a pick, or not scored).
        source: where the cover came from: ``pick``, ``segment``, ``cold_start`` or ``reference``.
        note: why it fell back (None for a pick made for the user).
    """

    user: str
    item: str
    cover: str
    score: float | None
    source: str
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "item": self.item, "cover": self.cover, "score": self.score,
                "source": self.source, "note": self.note}  # fmt: skip


def read_columns(path: Path, columns: dict[str, tuple[str, bool]]) -> dict[str, list]:
    """``path``'s columns as Python lists, after checking names, types and nulls (one :class:`PoolError` line).

    Args:
        path: a parquet table of the pool folder.
        columns: the columns to read, each ``(kind, nullable)``; other columns are ignored.
    """
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise PoolError(f"{path}: not a readable parquet table ({str(err).strip()[:200]})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise PoolError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)} "
                        "(docs/serving.md)")  # fmt: skip
    try:
        table = pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowException) as err:
        raise PoolError(f"{path}: not a readable parquet table ({str(err).strip()[:200]})") from None
    out: dict[str, list] = {}
    for name, (kind, nullable) in columns.items():
        column = table.column(name)
        if not (_TYPE_CHECKS[kind](column.type) or (pa.types.is_null(column.type) and nullable)):
            raise PoolError(f"{path}: column {name!r} holds {column.type}, expected {_KIND_NAMES[kind]}")
        values = column.to_pylist()
        if not nullable and column.null_count:
            row = values.index(None)
            raise PoolError(f"{path} row {row + 1}: {name} is null ({column.null_count} null(s) in the column)")
        if kind == "str" and not nullable and "" in values:
            raise PoolError(f"{path} row {values.index('') + 1}: {name} is empty")
        out[name] = values
    return out


class CoverPool:
    """A pool folder's answers, held in dictionaries (build it with :meth:`load`).

    Args:
        root: the pool folder (resolved).
        settings: its ``generate.json``.
        picks: (user, item) -> (cover address, score, note) of the user's pick.
        segments: user -> segment.
        segment_covers: (item, segment) -> cover address.
        cold_start: item -> cover address of its cold-start cover.
        files: cover address below ``/covers/`` -> the file.
        references: item -> its reference cover file in the dataset.
        data_root: the dataset the references came from, if any.
    """

    def __init__(
        self,
        root: Path,
        settings: dict[str, Any],
        picks: dict[tuple[str, str], tuple[str, float | None, str | None]],
        segments: dict[str, str],
        segment_covers: dict[tuple[str, str], str],
        cold_start: dict[str, str],
        files: dict[str, Path],
        references: dict[str, Path],
        data_root: Path | None = None,
    ) -> None:
        self.root, self.settings, self.data_root = root, settings, data_root
        self.picks, self.segments, self.segment_covers = picks, segments, segment_covers
        self.cold_start, self.files, self.references = cold_start, files, references
        self.users = frozenset(u for u, _ in picks) | frozenset(segments)
        self.items = frozenset(i for i, _ in segment_covers) | frozenset(cold_start) | frozenset(i for _, i in picks)

    @classmethod
    def load(cls, pool: str | Path, data_root: str | Path | None = None) -> CoverPool:
        """Read a pool folder (and the dataset's reference covers) once; every later answer is a dictionary get.

        Args:
            pool: the pool folder ``icg generate`` wrote (module docstring).
            data_root: an icg dataset (docs/data.md) whose items' reference covers answer for items the pool lacks.

        Raises:
            PoolError: a missing folder or file, a column missing or of another type, a null or empty id, a repeated
                pair, a cover outside ``<pool>/covers/`` or missing on disk.
        """
        root = Path(pool).expanduser().resolve()
        if not root.is_dir():
            raise PoolError(f"--pool: {pool} is not a folder (expected the pool folder `icg generate` wrote)")
        settings = _read_settings(root / SETTINGS)
        for name in (POOL_TABLE, PICKS_TABLE):
            if not (root / name).is_file():
                raise PoolError(f"--pool: {root} has no {name} (a pool folder holds {SETTINGS}, {POOL_TABLE}, "
                                f"{PICKS_TABLE} and {COVERS_DIR}/; docs/serving.md)")  # fmt: skip
        files = _CoverFiles(root)
        segment_covers, cold_start = _pool_covers(root / POOL_TABLE, files)
        picks = _picks(root / PICKS_TABLE, files)
        segments = _segments(root / SEGMENTS_TABLE) if (root / SEGMENTS_TABLE).is_file() else {}
        files.check_exist()
        references = _references(Path(data_root)) if data_root is not None else {}
        dataset = Path(data_root) if data_root is not None else None
        return cls(root, settings, picks, segments, segment_covers, cold_start, files.files, references, dataset)

    def answer(self, user: str, item: str) -> Answer | None:
        """The cover ``user`` is shown for ``item`` (fallback order in the module docstring); None: item unknown."""
        pick = self.picks.get((user, item))
        if pick is not None:
            return Answer(user, item, pick[0], pick[1], "pick", pick[2])
        segment = self.segments.get(user)
        if segment is not None:
            cover = self.segment_covers.get((item, segment))
            if cover is not None:
                note = f"user {user!r} has no pick for item {item!r}: the cover of their segment {segment!r}"
                return Answer(user, item, cover, None, "segment", note)
        reasons = []
        if user not in self.users:
            reasons.append(f"user {user!r} is not in the pool")
        elif item in self.items:
            segment_part = f" and their segment {segment!r} no cover of it" if segment is not None else ""
            reasons.append(f"user {user!r} has no pick for item {item!r}{segment_part}")
        cover = self.cold_start.get(item)
        if cover is not None:
            return Answer(user, item, cover, None, "cold_start", "; ".join(reasons) + ": the item's cold-start cover")
        reasons.append(f"item {item!r} is not in the pool" if item not in self.items
                       else f"item {item!r} has no cold-start cover")  # fmt: skip
        if item in self.references:
            cover = f"/reference/{quote(item, safe='')}"
            return Answer(user, item, cover, None, "reference", "; ".join(reasons) + ": the item's reference cover")
        return None

    def unknown_item(self, item: str) -> str:
        """Why ``item`` has no answer at all (the 404's message)."""
        if self.data_root is None:
            return f"item {item!r} is not in the pool {self.root} (and no --data_root gives reference covers)"
        return f"item {item!r} is in neither the pool {self.root} nor the dataset {self.data_root}"

    def summary(self) -> dict[str, Any]:
        """Counts for the start-up line and ``/healthz``."""
        return {"mode": self.settings.get("mode"), "export_weights": self.settings.get("export_weights"),
                "users": len(self.users), "items": len(self.items), "picks": len(self.picks),
                "covers": len(self.files), "references": len(self.references)}  # fmt: skip


def check_export(pool: CoverPool, export: str | Path) -> None:
    """Refuse ``pool`` unless its ``generate.json`` records ``export``'s weights (``export_weights``).

    Loads icg's generation code to read the export (a few seconds at start-up, only with ``--export``).

    Raises:
        PoolError: another export made the pool (one line naming both), or the pool records none.
        ExportError: ``export`` is not an export folder.
    """
    from icg.generation.export import export_fingerprint, read_config

    config = read_config(export, "--export")
    fingerprint = export_fingerprint(Path(export), config)
    recorded = pool.settings.get("export_weights")
    settings = pool.root / SETTINGS
    if recorded is None:
        raise PoolError(f"{settings} records no export_weights; cannot check it against --export {export}")
    if recorded != fingerprint:
        raise PoolError(f"the pool {pool.root} was made by another export than --export {export} (its {settings.name} "
                        f"records export_weights {recorded}, the export's weights are {fingerprint}); serve it "
                        "without --export or with the export that made it, or generate the pool again")  # fmt: skip


def _read_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PoolError(f"--pool: {path.parent} has no {SETTINGS} (not a pool folder `icg generate` wrote)")
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PoolError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(settings, dict):
        raise PoolError(f"{path}: expected a JSON object of the run's settings, got {type(settings).__name__}")
    return settings


class _CoverFiles:
    """The pool's cover files, by their address below ``/covers/``: only files inside ``<pool>/covers/`` are kept."""

    def __init__(self, root: Path) -> None:
        self.covers = root / COVERS_DIR
        self.files: dict[str, Path] = {}
        self.first_row: dict[str, str] = {}
        self.addresses: dict[str, str] = {}  # cell -> address: many picks name one pool cover, resolved once

    def address(self, relative: str, where: str) -> str:
        """``/covers/<path below covers/>`` for a ``cover`` cell (relative to the pool); refuses one outside."""
        known = self.addresses.get(relative)
        if known is None:
            known = self.addresses[relative] = self._address(relative, where)
        return known

    def _address(self, relative: str, where: str) -> str:
        path = (self.covers.parent / relative).resolve()
        if not path.is_relative_to(self.covers) or path == self.covers:
            raise PoolError(f"{where}: cover {relative!r} is not a file inside {self.covers}")
        key = path.relative_to(self.covers).as_posix()
        if key not in self.files:
            self.files[key] = path
            self.first_row[key] = where
        return f"/{COVERS_DIR}/{quote(key)}"

    def check_exist(self) -> None:
        missing = [key for key, path in self.files.items() if not path.is_file()]
        if missing:
            key = missing[0]
            raise PoolError(f"{self.first_row[key]}: cover {self.files[key]} does not exist ({len(missing)} of "
                            f"{len(self.files)} cover files missing)")  # fmt: skip


def _pool_covers(path: Path, files: _CoverFiles) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """(item, segment) -> cover and item -> cold-start cover; the lowest slot wins where an item has several."""
    table = read_columns(path, POOL_COLUMNS)
    by_slot = sorted(range(len(table["item_id"])), key=lambda r: table["slot"][r])
    segment_covers: dict[tuple[str, str], str] = {}
    cold_start: dict[str, str] = {}
    for row in by_slot:
        item, segment = table["item_id"][row], table["segment"][row]
        cover = files.address(table["cover"][row], f"{path} row {row + 1}")
        if segment is None:
            cold_start.setdefault(item, cover)
        else:
            segment_covers.setdefault((item, segment), cover)
    return segment_covers, cold_start


def _picks(path: Path, files: _CoverFiles) -> dict[tuple[str, str], tuple[str, float | None, str | None]]:
    table = read_columns(path, PICKS_COLUMNS)
    picks: dict[tuple[str, str], tuple[str, float | None, str | None]] = {}
    fallback_note = "picked with the export's cold-start user (the user was unknown to the export)"
    for row, (user, item, cover, score, fallback) in enumerate(
        zip(table["user_id"], table["item_id"], table["cover"], table["score"], table["fallback"], strict=True)
    ):
        if (user, item) in picks:
            raise PoolError(f"{path} row {row + 1}: a second pick for user {user!r} and item {item!r} (one per pair)")
        score = None if score is None or math.isnan(score) else float(score)
        address = files.address(cover, f"{path} row {row + 1}")
        picks[(user, item)] = (address, score, fallback_note if fallback else None)
    return picks


def _segments(path: Path) -> dict[str, str]:
    table = read_columns(path, SEGMENTS_COLUMNS)
    segments: dict[str, str] = {}
    for row, (user, segment) in enumerate(zip(table["user_id"], table["segment"], strict=True)):
        if segments.setdefault(user, segment) != segment:
            raise PoolError(f"{path} row {row + 1}: user {user!r} in segment {segment!r} and "
                            f"{segments[user]!r} (one segment per user)")  # fmt: skip
    return segments


def _references(data_root: Path) -> dict[str, Path]:
    """item -> reference cover file of an icg dataset (docs/data.md); a missing file or one outside the folder is
    left out (that item then has no reference answer)."""
    root = data_root.expanduser().resolve()
    if not root.is_dir():
        raise PoolError(f"--data_root: {data_root} is not a folder (expected an icg dataset, docs/data.md)")
    items = read_table(table_path(root, ITEMS_TABLE), ITEM_COLUMNS)
    references: dict[str, Path] = {}
    for item, image in zip(items["item_id"], items["image"], strict=True):
        path = (root / str(image)).resolve()
        if image and path.is_relative_to(root) and path.is_file():
            references[str(item)] = path
    if len(references) < len(items):
        log.warning("--data_root %s: %d of %d items have no reference cover file inside the folder; they are served "
                    "from the pool only", data_root, len(items) - len(references), len(items))  # fmt: skip
    return references
