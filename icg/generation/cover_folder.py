"""The output folder of ``icg generate``: covers, their manifest, the run's settings, and resuming.

ICG (Bian et al., EMNLP 2025) ends in covers for (user, item) pairs; at platform scale a run takes hours on many ranks
and must survive being killed. The folder::

    <out>/generate.json          the settings every cover depends on (export, seed, steps, guidance, strength, ...)
    <out>/manifest.jsonl         one line per finished cover (the cover manifest of ``icg.cover_manifest``)
    <out>/manifest.rank<R>.jsonl  rank R's lines while a run is under way (merged into manifest.jsonl at the end)
    <out>/covers/<hh>/<user>_<item>_<hash>.png
    <out>/skipped.jsonl          the pairs-file rows left out with ``--on_bad_record skip``

* **No half outputs.** A cover is written to a temporary file in its own folder and renamed into place; its manifest
  line is appended only after that, and the merged manifest replaces the old one by a rename. A kill at any moment
  leaves complete covers and complete lines (a torn last line is ignored).
* **Resumable.** A rerun skips every pair whose line is in the manifest (or a rank's shard) *and* whose file is there
  with the recorded size; a cover made with the cold-start fallback is made again once its user is known.
* **No collisions.** File names are a readable prefix of the ids plus a hash of the exact ids, so ids that differ only
  in characters a file name cannot hold (``a/b`` vs ``a_b``, or case on a case-insensitive disk) get distinct files.
* **One run at a time.** ``icg generate`` holds the folder's lock (``icg.output_lock``, rank 0 for the whole run), so a
  second run into it is refused instead of merging away the shards the first is still appending to.
* **No silent mixing.** A folder whose ``generate.json`` names other settings is refused, unless ``overwrite``: then
  the earlier run's covers, manifests and settings are deleted first (nothing else in the folder is touched).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from icg.cover_manifest import MANIFEST_NAME
from icg.errors import UserError

log = logging.getLogger(__name__)

SETTINGS = "generate.json"
SETTINGS_FORMAT = "icg-generate"
COVERS = "covers"
SKIPPED = "skipped.jsonl"
SHARD_GLOB = "manifest.rank*.jsonl"
STATS = "generate.stats.json"  # what the run cost (MLLM rows, covers made): not settings, never compared
# Segments and pool runs (icg.generation.pools): the pool, the picks, the users' segments; rank R's pool covers.
POOL_FILE = "pool.parquet"
PICKS_FILE = "picks.parquet"
SEGMENTS_COPY = "segments.parquet"
POOL_SHARD_GLOB = "pool.rank*.jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class OutputFolderError(UserError, FileExistsError):
    """The output folder holds another run's covers (other settings) or files that are not ``icg generate``'s."""


def cover_file(user_id: str, item_id: str, method: str) -> str:
    """The cover's path relative to the output folder: readable, and distinct for distinct (user, item, method).

    ``covers/<hh>/<user>_<item>_<hash16>.png``: ``hash`` is SHA-256 of the exact ids, ``hh`` its first byte (256
    sub-folders keep any one folder small at platform scale); the readable part is only a courtesy.
    """
    digest = hashlib.sha256(json.dumps([user_id, item_id, method]).encode()).hexdigest()
    readable = "_".join(_UNSAFE.sub("-", s).strip(".-")[:40] or "x" for s in (user_id, item_id))
    return f"{COVERS}/{digest[:2]}/{readable}_{digest[:16]}.png"


def png_bytes(image: Tensor) -> bytes:
    """A 3 x H x W image in [0, 1] as PNG bytes (rounded to 8 bits like ``CoverGenerator``'s PIL output)."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Line:
    """One manifest line as read back: its text (rewritten verbatim when merging) and what resuming checks."""

    text: str
    file: str
    bytes: int
    fallback: bool


def _read_lines(path: Path) -> Iterable[tuple[tuple[str, str], Line]]:
    """The ``((user, item), Line)`` of a manifest file; a torn or foreign line (a kill mid-append) is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("user_id", "item_id", "file")):
            size = row.get("bytes")
            size = size if isinstance(size, int) else -1
            yield (row["user_id"], row["item_id"]), Line(line, row["file"], size, bool(row.get("fallback")))


@dataclass
class FolderState:
    """What an output folder holds before a run.

    Args:
        finished: the (user, item) of every complete cover made with the same settings (kept by the run).
        replace: the folder holds an earlier run with other settings, to be deleted first (``overwrite``).
    """

    finished: set[tuple[str, str]] = field(default_factory=set)
    replace: bool = False


class CoverFolder:
    """One ``icg generate`` output folder (see the module docstring).

    Args:
        root: the folder.
        settings: what every cover in it depends on (compared with an earlier run's ``generate.json``).
    """

    def __init__(self, root: str | Path, settings: dict[str, Any]) -> None:
        self.root = Path(root)
        self.settings = {"format": SETTINGS_FORMAT, **settings}

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def shard(self, rank: int) -> Path:
        return self.root / f"manifest.rank{rank}.jsonl"

    def manifest_files(self) -> list[Path]:
        return [self.manifest, *sorted(self.root.glob(SHARD_GLOB))]

    def lines(self) -> dict[tuple[str, str], Line]:
        """(user, item) -> the last line written for it, over the manifest and every rank's shard."""
        found: dict[tuple[str, str], Line] = {}
        for path in self.manifest_files():
            found.update(_read_lines(path))
        return found

    def complete(self, line: Line) -> bool:
        """Whether a line's cover is in place with the size it records (renamed into place, so whole)."""
        try:
            return (self.root / line.file).stat().st_size == line.bytes
        except OSError:
            return False

    # ------------------------------------------------------------------------------------------ before a run
    def inspect(self, overwrite: bool, known_users: Iterable[str] = ()) -> FolderState:
        """Read-only: the finished covers to keep, or whether an earlier run must be replaced.

        Every rank calls this before anything is written, so all ranks agree on what remains to be made.

        Args:
            overwrite: replace an earlier run with other settings instead of refusing.
            known_users: users the export knows now; a cover made with the fallback for one of them is redone.

        Raises:
            OutputFolderError: another run's settings without ``overwrite``, or a manifest that ``icg generate`` did
                not write.
        """
        if self.root.exists() and not self.root.is_dir():
            raise OutputFolderError(f"--out: {self.root} exists and is not a folder")
        settings_path = self.root / SETTINGS
        has_covers = self.manifest.is_file() or any(self.root.glob(SHARD_GLOB))
        if not settings_path.is_file():
            if has_covers:
                raise OutputFolderError(f"--out: {self.root} holds a {MANIFEST_NAME} that icg generate did not write "
                                        f"(no {SETTINGS}); choose another --out")  # fmt: skip
            return FolderState()
        try:
            earlier = json.loads(settings_path.read_text())
        except json.JSONDecodeError as err:
            raise OutputFolderError(f"--out: {settings_path} is not valid JSON ({err}); choose another --out") from err
        if earlier.get("format") != SETTINGS_FORMAT:
            raise OutputFolderError(f"--out: {settings_path} was not written by icg generate; choose another --out")
        earlier = {"format": SETTINGS_FORMAT, "mode": "pairs", **earlier}  # written before modes: a pairs run
        if earlier != self.settings:
            if not overwrite:
                changed = sorted(k for k in set(earlier) | set(self.settings) if earlier.get(k) != self.settings.get(k))
                shown = ", ".join(f"{k} {earlier.get(k)!r} -> {self.settings.get(k)!r}" for k in changed[:3])
                raise OutputFolderError(
                    f"--out: {self.root} holds covers of another run ({shown}); pass --overwrite true to delete them "
                    "and start over, or choose another --out"
                )
            return FolderState(replace=True)
        known = set(known_users)
        finished = {
            key for key, line in self.lines().items() if self.complete(line) and not (line.fallback and key[0] in known)
        }
        return FolderState(finished=finished)

    def prepare(self, state: FolderState, skipped: Sequence[dict], skip_report: Path | None = None) -> None:
        """Rank 0, before any cover: delete a replaced run, write the settings and the skipped rows."""
        self.root.mkdir(parents=True, exist_ok=True)
        if state.replace:
            self._delete_run()
        write_atomic(self.root / SETTINGS, (json.dumps(self.settings, indent=2) + "\n").encode())
        report = skip_report or self.root / SKIPPED
        if skipped:
            write_atomic(report, "".join(json.dumps(row) + "\n" for row in skipped).encode())
        elif skip_report is None:
            report.unlink(missing_ok=True)

    def _delete_run(self) -> None:
        """Delete what an earlier run wrote: its covers (by its manifests), manifests, settings and skip list."""
        covers = (self.root / COVERS).resolve()
        removed = 0
        for file in {line.file for line in self.lines().values()} | self._pool_files():
            path = (self.root / file).resolve()
            if path.is_relative_to(covers) and path.suffix == ".png" and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        pool_outputs = [self.root / name for name in (POOL_FILE, PICKS_FILE, SEGMENTS_COPY, STATS)]
        for path in [*self.manifest_files(), self.root / SETTINGS, self.root / SKIPPED, *pool_outputs,
                     *self.root.glob(POOL_SHARD_GLOB)]:  # fmt: skip
            path.unlink(missing_ok=True)
        log.info("--overwrite: deleted %d covers of the earlier run in %s", removed, self.root)

    def _pool_files(self) -> set[str]:
        """The covers a segments or pool run wrote (``pool.parquet`` and its ranks' shards), as relative paths."""
        import pandas as pd

        files: set[str] = set()
        if (self.root / POOL_FILE).is_file():
            files |= {str(f) for f in pd.read_parquet(self.root / POOL_FILE, columns=["cover"])["cover"]}
        for shard in self.root.glob(POOL_SHARD_GLOB):
            for line in shard.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("cover"), str):
                    files.add(row["cover"])
        return files

    def write_stats(self, stats: dict[str, Any]) -> None:
        """Rank 0, at the end: what the run cost, beside the settings (``generate.stats.json``; never compared)."""
        write_atomic(self.root / STATS, (json.dumps(stats, indent=2) + "\n").encode())

    # ------------------------------------------------------------------------------------------ after a run
    def finalize(self, order: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """Rank 0, once every rank is done: merge manifest and shards into one ``manifest.jsonl``, drop the shards.

        Lines come in ``order`` (the pairs file's), then any others an earlier run made; one line per (user, item),
        only lines whose cover is complete. Temporary files of killed writes are removed.

        Returns:
            (user, item) -> whether its cover used the cold-start fallback, for every line of the merged manifest.
        """
        found = {key: line for key, line in self.lines().items() if self.complete(line)}
        ordered = [k for k in dict.fromkeys(order) if k in found]
        keys = ordered + [k for k in found.keys() - set(ordered)]
        write_atomic(self.manifest, "".join(found[k].text + "\n" for k in keys).encode())
        for shard in self.root.glob(SHARD_GLOB):
            shard.unlink(missing_ok=True)
        for tmp in (self.root / COVERS).glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        return {k: found[k].fallback for k in keys}


class ShardWriter:
    """Appends one rank's manifest lines, each after its cover is in place.

    Args:
        folder: the output folder.
        rank: the global rank (its own shard file: ranks never share a file).
        method: the ``method`` of every row (e.g. ``icg``).
    """

    def __init__(self, folder: CoverFolder, rank: int, method: str) -> None:
        self.folder, self.method = folder, method
        path = folder.shard(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.out = path.open("a", encoding="utf-8")
        if torn:  # a kill mid-line: end it, so the next line is not glued to it
            self.out.write("\n")

    def write(self, image: Tensor, row: dict[str, Any]) -> dict[str, Any]:
        """Write one cover (atomically) and then its manifest line; returns the line's row."""
        name = cover_file(row["user_id"], row["item_id"], self.method)
        data = png_bytes(image)
        write_atomic(self.folder.root / name, data)
        line = {"user_id": row["user_id"], "item_id": row["item_id"], "method": self.method, "file": name,
                "bytes": len(data), **{k: v for k, v in row.items() if k not in ("user_id", "item_id")}}  # fmt: skip
        self.out.write(json.dumps(line) + "\n")
        return line

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if not self.out.closed:
            self.out.close()
