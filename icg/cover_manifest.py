"""The cover manifest: one JSON line per generated cover, the hand-over between cover generators and their readers.

ICG (Bian et al., EMNLP 2025) ends in covers for (user, item) pairs. Whatever generates them (``icg evaluate`` for
the held-out pairs of every method, a future ``icg generate``) writes a folder of image files plus
``manifest.jsonl``; whatever consumes them (``icg study``, a platform's import job) reads only the manifest::

    {"user_id": "u0007", "item_id": "i00042", "method": "icg", "file": "icg/00003_u0007_i00042.png"}

Required keys: ``user_id``, ``item_id``, ``method`` (non-empty strings) and ``file`` (the cover, relative to the
manifest's folder, or absolute). Optional: ``title`` and ``reference`` (a reference image, same path rule) for an
item a dataset does not know. Any other key is kept in ``extra`` and ignored by the readers here. One row per
(user, item, method). docs/study.md documents the format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icg.errors import UserError

MANIFEST_NAME = "manifest.jsonl"
REQUIRED_KEYS = ("user_id", "item_id", "method", "file")
OPTIONAL_KEYS = ("title", "reference")


class ManifestError(UserError, ValueError):
    """A cover manifest that cannot be read; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class CoverEntry:
    """One row of a manifest.

    Args:
        user_id: the user the cover was generated for.
        item_id: the item it is a cover of.
        method: the generator's name (``title_only``, ``icg_no_user``, ``icg``, ...).
        file: the cover image, absolute once read (relative to the manifest's folder in the file).
        title: the item's title, when the row carries it.
        reference: the item's reference image, when the row carries it (absolute once read).
        extra: any other keys of the row.
    """

    user_id: str
    item_id: str
    method: str
    file: Path
    title: str | None = None
    reference: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.user_id, self.item_id, self.method


def slug(text: str) -> str:
    """A file-name-safe form of an id or method name (not unique: file names add an index)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._")[:60] or "x"


def resolve_manifest(path: str | Path) -> Path:
    """The manifest file named by ``path``: the file itself, or ``<folder>/manifest.jsonl``,
    or ``<folder>/covers/manifest.jsonl`` (the layout of an ``icg evaluate`` output folder)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / MANIFEST_NAME, path / "covers" / MANIFEST_NAME):
        if candidate.is_file():
            return candidate
    raise ManifestError(
        f"{path}: no cover manifest (looked for {path}, {path / MANIFEST_NAME} and {path / 'covers' / MANIFEST_NAME}); "
        "give an `icg evaluate` output folder or a manifest.jsonl (docs/study.md)"
    )


def read_manifest(path: str | Path) -> list[CoverEntry]:
    """Read and check a manifest; every bad row is counted and the first three are quoted in one message.

    Args:
        path: a manifest file, or a folder holding one (see ``resolve_manifest``).

    Raises:
        ManifestError: unreadable JSON, a missing or empty key, a cover file that does not exist, a duplicate
            (user, item, method), or no row at all.
    """
    path = resolve_manifest(path)
    folder = path.parent
    entries: list[CoverEntry] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not JSON ({err.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: a JSON object is expected, got {type(row).__name__}")
            continue
        bad = [k for k in REQUIRED_KEYS if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            problems.append(f"line {number}: missing or empty {bad}")
            continue
        file = _resolve(folder, row["file"])
        if not file.is_file():
            problems.append(f"line {number}: file {row['file']!r} does not exist")
            continue
        reference = _resolve(folder, row["reference"]) if row.get("reference") else None
        if reference is not None and not reference.is_file():
            problems.append(f"line {number}: reference {row['reference']!r} does not exist")
            continue
        entry = CoverEntry(
            user_id=row["user_id"],
            item_id=row["item_id"],
            method=row["method"],
            file=file,
            title=str(row["title"]) if row.get("title") is not None else None,
            reference=reference,
            extra={k: v for k, v in row.items() if k not in REQUIRED_KEYS + OPTIONAL_KEYS},
        )
        if entry.key in seen:
            problems.append(
                f"line {number}: duplicate (user, item, method) {entry.key} (first on line {seen[entry.key]})"
            )
            continue
        seen[entry.key] = number
        entries.append(entry)
    if problems:
        raise ManifestError(
            f"{path}: {len(problems)} bad row(s); " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        )
    if not entries:
        raise ManifestError(f"{path}: no rows; a manifest lists one cover per line (docs/study.md)")
    return entries


def _resolve(folder: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else folder / path


def manifest_fingerprint(entries: Iterable[CoverEntry]) -> str:
    """SHA-256 over every row's (user, item, method) and the bytes of its cover: same covers, same fingerprint."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.key):
        digest.update(json.dumps(entry.key).encode())
        digest.update(hashlib.sha256(entry.file.read_bytes()).digest())
    return digest.hexdigest()


def write_manifest_folder(folder: str | Path, rows: Iterable[tuple[dict[str, Any], Any]], save) -> Path:
    """Write a folder of covers plus its ``manifest.jsonl`` in one piece: a temporary sibling, then a rename.

    An earlier folder at ``folder`` is replaced only once the new one is complete, so a reader never sees half of
    each.

    Args:
        folder: the folder to (re)place.
        rows: ``(row, image)`` pairs: ``row`` holds ``user_id``, ``item_id``, ``method`` (and any optional keys);
            ``file`` is assigned here as ``<method>/<index>_<user>_<item>.png``.
        save: ``save(image, path)`` writes one image.

    Returns:
        the manifest path.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        lines = []
        for index, (row, image) in enumerate(rows):
            name = f"{slug(row['method'])}/{index:05d}_{slug(row['user_id'])}_{slug(row['item_id'])}.png"
            (tmp / name).parent.mkdir(exist_ok=True)
            save(image, tmp / name)
            lines.append(json.dumps({**row, "file": name}))
        (tmp / MANIFEST_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / MANIFEST_NAME
