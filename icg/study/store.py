"""The answers of a blind pairwise study in SQLite (WAL mode): one row per answer, committed before the reply.

Tables (docs/study.md):

* ``study_meta(key, value)``: ``format`` (``icg-study``), ``version``, ``fingerprint`` (the covers'
  ``manifest_fingerprint``), ``seed``, ``manifest``, ``methods`` (JSON), ``created_at``;
* ``comparisons(id, user_id, item_id, method_a, method_b)``: the study's screens (``StudyDesign.comparisons``);
* ``answers(id, rater, comparison_id, left_method, right_method, choice, chosen_method, answered_at, seconds)``:
  ``choice`` is ``left``, ``right`` or ``none`` (no preference); ``UNIQUE(rater, comparison_id)``, so a rater's
  second answer to a screen (a double click, the back button) is ignored rather than counted twice;
* ``served(rater, comparison_id, served_at)`` (version 2): the screens the server has shown each rater; the web app
  takes an answer only for one of them. A version-1 database gains this table when ``icg study serve`` reopens it.

Every answer is its own transaction with ``synchronous=FULL``: once a rater's browser has its reply, the answer is
on disk, and a server killed mid-study loses nothing. WAL lets readers (``icg study results``) run beside the
writer; concurrent writers wait for each other (``busy_timeout``). A database made for other covers is refused,
and so is one whose version, seed, fingerprint, tables, comparison rows or method list is not what the covers give
(one line naming the file and the mismatch, when the command starts; never an error per answer).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from icg.errors import UserError
from icg.study.design import CHOICES, StudyDesign

FORMAT = "icg-study"
VERSION = 2
VERSIONS = (1, 2)  # readable; a version-1 database is upgraded (the ``served`` table added) when served again
BUSY_TIMEOUT_S = 30.0
WHAT_A_STUDY_DB_IS = "a study database is the --db file of `icg study serve` (a new path starts a new study)"
SCHEMA = """
CREATE TABLE study_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE comparisons (
  id INTEGER PRIMARY KEY,
  user_id TEXT NOT NULL,
  item_id TEXT NOT NULL,
  method_a TEXT NOT NULL,
  method_b TEXT NOT NULL,
  UNIQUE (user_id, item_id, method_a, method_b)
);
CREATE TABLE answers (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rater TEXT NOT NULL,
  comparison_id INTEGER NOT NULL REFERENCES comparisons (id),
  left_method TEXT NOT NULL,
  right_method TEXT NOT NULL,
  choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'none')),
  chosen_method TEXT,
  answered_at REAL NOT NULL,
  seconds REAL,
  UNIQUE (rater, comparison_id)
);
CREATE INDEX answers_by_rater ON answers (rater);
"""
SERVED_SCHEMA = """
CREATE TABLE served (
  rater TEXT NOT NULL,
  comparison_id INTEGER NOT NULL REFERENCES comparisons (id),
  served_at REAL NOT NULL,
  PRIMARY KEY (rater, comparison_id)
);
"""


def schema(version: int) -> str:
    """The ``CREATE`` statements of a study database of ``version``."""
    return SCHEMA + (SERVED_SCHEMA if version >= 2 else "")


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


def _expected_objects(version: int) -> dict[str, str]:
    """name -> SQL of every table and index a database of ``version`` holds (as SQLite records them)."""
    db = sqlite3.connect(":memory:")
    try:
        for statement in _statements(schema(version)):
            db.execute(statement)
        return _objects(db)
    finally:
        db.close()


def _objects(db: sqlite3.Connection) -> dict[str, str]:
    rows = db.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL")
    return {name: " ".join(sql.split()) for name, sql in rows}


class StudyDatabaseError(UserError, ValueError):
    """The database is not an icg study, or belongs to another study (other covers or seed)."""


class StudyStore:
    """A study's SQLite file. Every method opens its own short-lived connection, so one store serves many threads.

    Args:
        path: the database file.
        read_only: open with ``mode=ro`` (``icg study results`` never writes to its input).
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open_for(cls, path: str | Path, design: StudyDesign) -> StudyStore:
        """Create the database for ``design``, or reopen it when it already holds this very study.

        Raises:
            StudyDatabaseError: the file is not an SQLite database, not an icg study, or another study's.
        """
        store = cls(path)
        if not store.path.exists() or store.path.stat().st_size == 0 or not store._tables():
            store.path.parent.mkdir(parents=True, exist_ok=True)
            store._create(design)  # a new file, or an empty one left by an interrupted creation
            return store
        meta = store.meta()
        if meta["fingerprint"] != design.fingerprint or int(meta["seed"]) != design.seed:
            raise StudyDatabaseError(
                f"{store.path}: holds another study (covers {meta['fingerprint'][:12]} from "
                f"{meta.get('manifest')}, seed {meta['seed']}, {store.answer_count()} answers); this one is covers "
                f"{design.fingerprint[:12]} from {design.manifest}, seed {design.seed}. Refusing to mix answers: "
                "give a new --db, or the covers and --seed this database was made for"
            )
        store._check_design(meta, design)
        if int(meta["version"]) < VERSION:
            store._upgrade()
        return store

    def _check_design(self, meta: dict[str, str], design: StudyDesign) -> None:
        """The stored method list and comparison rows are the design's (same covers, yet edited tables: refused)."""
        tampered = f"{self.path}: made for these covers and seed, but its "
        what = "; give a new --db (this file was edited, or written by another icg)"
        if json.loads(meta["methods"]) != design.methods:
            raise StudyDatabaseError(
                f"{tampered}method list {meta['methods']} is not the covers' {json.dumps(design.methods)}{what}"
            )
        with self.connection() as db:
            stored = db.execute("SELECT id, user_id, item_id, method_a, method_b FROM comparisons ORDER BY id")
            stored = [tuple(row) for row in stored]
        expected = [(c.id, c.user_id, c.item_id, c.method_a, c.method_b) for c in design.comparisons]
        if stored != expected:
            diff = next((k for k, (a, b) in enumerate(zip(stored, expected, strict=False)) if a != b), None)
            where = (
                f"comparison row {stored[diff][0]} is {stored[diff][1:]}, not {expected[diff][1:]}"
                if diff is not None
                else f"comparisons table has {len(stored)} rows, not {len(expected)}"
            )
            raise StudyDatabaseError(f"{tampered}{where}{what}")

    def _upgrade(self) -> None:
        """A version-1 database becomes version 2 (the ``served`` table), in one transaction."""
        with self.connection() as db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _statements(SERVED_SCHEMA):
                db.execute(statement)
            db.execute("UPDATE study_meta SET value = ? WHERE key = 'version'", (str(VERSION),))
            db.execute("COMMIT")

    @classmethod
    def open_existing(cls, path: str | Path) -> StudyStore:
        """Open a study database read-only (for results); checks it is one."""
        store = cls(path, read_only=True)
        if not store.path.is_file():
            raise StudyDatabaseError(f"{store.path}: no such study database; give the --db file of `icg study serve`")
        store.meta()
        return store

    def _create(self, design: StudyDesign) -> None:
        meta = {
            "format": FORMAT,
            "version": str(VERSION),
            "fingerprint": design.fingerprint,
            "seed": str(design.seed),
            "manifest": str(design.manifest),
            "methods": json.dumps(design.methods),
            "created_at": str(time.time()),
        }
        with self.connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in _statements(schema(VERSION)):
                db.execute(statement)
            db.executemany("INSERT INTO study_meta VALUES (?, ?)", sorted(meta.items()))
            db.executemany(
                "INSERT INTO comparisons VALUES (?, ?, ?, ?, ?)",
                [(c.id, c.user_id, c.item_id, c.method_a, c.method_b) for c in design.comparisons],
            )
            db.execute("COMMIT")

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (autocommit; transactions are explicit and rolled back on an error).

        A writable store keeps one connection per thread: closing the last connection of a WAL database
        checkpoints and deletes the WAL, an fsync-heavy step that would otherwise follow every answer. A read-only
        store opens and closes its own.
        """
        if self.read_only:
            db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            try:
                yield db
            finally:
                db.close()
            return
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        finally:
            db.row_factory = None

    def close(self) -> None:
        """Close the calling thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _tables(self) -> set[str]:
        try:
            with self.connection() as db:
                return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as err:
            raise StudyDatabaseError(f"{self.path}: not an SQLite database ({err}); {WHAT_A_STUDY_DB_IS}") from None

    def meta(self) -> dict[str, str]:
        """The ``study_meta`` table, checked: StudyDatabaseError (one line) when the file is not an icg study database
        this code reads (its format, version, seed, fingerprint, method list or tables are not as written)."""
        names = self._tables()
        if not {"study_meta", "comparisons", "answers"} <= names:
            raise StudyDatabaseError(
                f"{self.path}: an SQLite database but not an icg study (tables {sorted(names)}); {WHAT_A_STUDY_DB_IS}"
            )
        try:
            with self.connection() as db:
                meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM study_meta").fetchall()}
        except sqlite3.DatabaseError as err:
            raise StudyDatabaseError(f"{self.path}: unreadable study_meta ({err}); {WHAT_A_STUDY_DB_IS}") from None
        if meta.get("format") != FORMAT:
            raise StudyDatabaseError(f"{self.path}: format {meta.get('format')!r}, not an {FORMAT!r} database")
        version = meta.get("version", "")
        if not version.isdigit() or int(version) not in VERSIONS:
            raise StudyDatabaseError(
                f"{self.path}: study database version {version!r}; this icg reads versions "
                f"{', '.join(map(str, VERSIONS))} (a newer icg wrote it, or the file was edited)"
            )
        self._check_meta(meta)
        self._check_schema(int(version))
        return meta

    def _check_meta(self, meta: dict[str, str]) -> None:
        bad = f"{self.path}: study_meta "
        if not meta.get("fingerprint"):
            raise StudyDatabaseError(f"{bad}has no covers fingerprint; {WHAT_A_STUDY_DB_IS}")
        try:
            int(meta.get("seed", ""))
        except ValueError:
            raise StudyDatabaseError(f"{bad}seed {meta.get('seed')!r} is not a whole number") from None
        try:
            methods = json.loads(meta.get("methods", ""))
        except json.JSONDecodeError:
            methods = None
        if not isinstance(methods, list) or len(methods) < 2 or not all(isinstance(m, str) for m in methods):
            raise StudyDatabaseError(f"{bad}methods {meta.get('methods')!r} is not a JSON list of method names")

    def _check_schema(self, version: int) -> None:
        """The tables and indexes are those this version creates (an edited schema fails here, not per answer)."""
        with self.connection() as db:
            found = _objects(db)
        expected = _expected_objects(version)
        extra = sorted(set(found) - set(expected))
        if extra:
            raise StudyDatabaseError(f"{self.path}: version {version} study database with other tables {extra}")
        for name, sql in expected.items():
            if name not in found:
                raise StudyDatabaseError(f"{self.path}: version {version} study database without its {name!r}")
            if found[name] != sql:
                raise StudyDatabaseError(
                    f"{self.path}: {name!r} is not the version-{version} one ({found[name]!r}; expected {sql!r})"
                )

    # ------------------------------------------------------------------------------------------ answers
    def record(
        self,
        rater: str,
        comparison_id: int,
        sides: tuple[str, str],
        choice: str,
        seconds: float | None = None,
    ) -> bool:
        """Store one answer; returns False when ``rater`` had already answered ``comparison_id`` (kept as it was).

        Args:
            rater: the rater id.
            comparison_id: the comparison answered.
            sides: (left method, right method) as shown.
            choice: ``left``, ``right`` or ``none``.
            seconds: time the screen was up, when known.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        chosen = {"left": sides[0], "right": sides[1], "none": None}[choice]
        with self.connection() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO answers (rater, comparison_id, left_method, right_method, choice, chosen_method,"
                " answered_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rater, int(comparison_id), sides[0], sides[1], choice, chosen, time.time(), seconds),
            )
            return cursor.rowcount == 1

    def mark_served(self, rater: str, comparison_id: int) -> None:
        """Record that ``comparison_id`` was shown to ``rater`` (again: kept as first recorded)."""
        with self.connection() as db:
            db.execute(
                "INSERT OR IGNORE INTO served (rater, comparison_id, served_at) VALUES (?, ?, ?)",
                (rater, int(comparison_id), time.time()),
            )

    def was_served(self, rater: str, comparison_id: int) -> bool:
        """Whether ``comparison_id`` was ever shown to ``rater``."""
        with self.connection() as db:
            row = db.execute("SELECT 1 FROM served WHERE rater = ? AND comparison_id = ?", (rater, int(comparison_id)))
            return row.fetchone() is not None

    def answered(self, rater: str) -> set[int]:
        """The comparison ids ``rater`` has answered."""
        with self.connection() as db:
            return {r[0] for r in db.execute("SELECT comparison_id FROM answers WHERE rater = ?", (rater,))}

    def answer_count(self) -> int:
        with self.connection() as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def answers(self) -> list[dict[str, Any]]:
        """Every answer joined with its comparison, in insertion order."""
        with self.connection() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT a.id, a.rater, a.comparison_id, c.user_id, c.item_id, c.method_a, c.method_b, a.left_method,"
                " a.right_method, a.choice, a.chosen_method, a.answered_at, a.seconds"
                " FROM answers a JOIN comparisons c ON c.id = a.comparison_id ORDER BY a.id"
            ).fetchall()
        return [dict(r) for r in rows]

    def comparison_count(self) -> int:
        with self.connection() as db:
            return int(db.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0])
