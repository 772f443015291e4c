"""A binary copy of a parsed interactions table, memory-mapped by later set-ups (opt-in: ``ICGDataModule.cache_dir``).

Parsing the interactions table (decoding and dictionary-encoding ~20M string ids for Pixel1M, 158M for Pixel8M, as
used by ICG, Bian et al., EMNLP 2025) and sorting it into time order are most of ``ICGDataModule.setup()``. Both
depend only on the file's bytes, so the result is written once as plain ``.npy`` arrays (plus the two id
vocabularies as Arrow IPC files) under ``<cache_dir>/interactions-<sha256>/`` and later set-ups, every stage and
every DDP rank, memory-map it: the pages are shared between the processes of a node through the page cache.

The entry is named by the SHA-256 of the file's bytes (read in full on every set-up: ~0.3 s for Pixel1M's 309 MB
parquet file), so a changed table never hits a stale entry and a copied or touched one still hits. Validation is not
cached: every set-up still checks every record against the arrays, and every image for existence and for a path
inside the dataset; only PIL's ``verify()`` of a cover is skipped when the file's (size, mtime, inode) match the
last check (``images-v1-<sha256 of the dataset path>.json``; opening 100k JPEGs costs ~8 s of CPU time). Nothing is
written next to the dataset; entries are never deleted by icg (remove the folder to reclaim the space). A cache that
cannot be written (permissions, full disk) is a warning, not an error: the set-up goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from icg.data.schema import INTERACTIONS_TABLE, InteractionArrays, read_interaction_arrays, table_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when InteractionArrays or the parsing rules change: old entries are then never read
MANIFEST = "manifest.json"
ROW_ARRAYS = ("user_code", "item_code", "timestamp", "timestamp_ok", "click", "click_ok", "order")
SORTED_COLUMNS = ("user_code", "item_code", "timestamp", "click")  # also kept in time order: the split reads them
VOCABULARIES = ("user_values", "item_values")
_HASH_CHUNK = 1 << 24


def content_digest(path: Path) -> str:
    """SHA-256 of the file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def entry_dir(cache_dir: Path, path: Path) -> Path:
    """The cache folder of the table file ``path``: named by this cache's version and the file's content digest."""
    return Path(cache_dir) / f"interactions-v{CACHE_VERSION}-{content_digest(path)}"


def _write_vocabulary(path: Path, values: np.ndarray) -> None:
    table = pa.table({"id": pa.array(values, pa.string())})
    with ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)


def _read_vocabulary(path: Path) -> np.ndarray:
    with pa.memory_map(str(path)) as source:
        column = ipc.open_file(source).read_all().column(0)
    return column.to_numpy(zero_copy_only=False).astype(object)


def write_entry(entry: Path, inter: InteractionArrays) -> None:
    """Write ``inter`` (with its time order) as the cache folder ``entry``, atomically: a temp folder, then rename.

    When another process (a DDP rank, a second node on a shared file system) renamed its copy first, this one is
    dropped and theirs is kept: both hold the same bytes.
    """
    for name in SORTED_COLUMNS:
        inter.sorted(name)
    temp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    temp.mkdir(parents=True)
    try:
        for name in ROW_ARRAYS:
            np.save(temp / f"{name}.npy", np.ascontiguousarray(getattr(inter, name)), allow_pickle=False)
        for name in SORTED_COLUMNS:
            np.save(temp / f"sorted_{name}.npy", inter.sorted(name), allow_pickle=False)
        for name in VOCABULARIES:
            _write_vocabulary(temp / f"{name}.arrow", getattr(inter, name))
        (temp / "bad_timestamps.json").write_text(json.dumps(inter.bad_timestamps))
        stat = inter.path.stat()
        manifest = {
            "version": CACHE_VERSION,
            "source": str(inter.path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "rows": len(inter),
        }
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.rename(temp, entry)
        except OSError:
            if not (entry / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def read_entry(entry: Path, path: Path) -> InteractionArrays:
    """The cached table of ``entry`` with its row arrays memory-mapped read-only; ``path`` is the table file."""
    manifest = json.loads((entry / MANIFEST).read_text())
    if manifest.get("version") != CACHE_VERSION:
        raise ValueError(f"{entry}: cache version {manifest.get('version')!r}, expected {CACHE_VERSION}")
    # plain read-only ndarray views of the maps (np.memmap subclasses would leak into every derived array)
    load = lambda name: np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False).view(np.ndarray)  # noqa: E731
    arrays = {name: load(name) for name in ROW_ARRAYS}
    in_order = {name: load(f"sorted_{name}") for name in SORTED_COLUMNS}
    if any(len(a) != manifest["rows"] for a in [*arrays.values(), *in_order.values()]):
        raise ValueError(f"{entry}: arrays do not have the manifest's {manifest['rows']} rows")
    vocabularies = {name: _read_vocabulary(entry / f"{name}.arrow") for name in VOCABULARIES}
    bad = {int(row): text for row, text in json.loads((entry / "bad_timestamps.json").read_text()).items()}
    return InteractionArrays(path=path, **arrays, **vocabularies, bad_timestamps=bad, in_order=in_order)


def cached_interaction_arrays(
    root: str | Path, cache_dir: str | Path, config_key: str = "cache_dir"
) -> InteractionArrays:
    """:func:`icg.data.schema.read_interaction_arrays` of ``root`` through the cache under ``cache_dir``.

    Args:
        root: the dataset folder.
        cache_dir: the cache folder (created if missing).
        config_key: how warnings name the setting (``data.cache_dir`` from the DataModule).

    Returns:
        The parsed table with its time order: memory-mapped from the cache when an entry for the file's bytes
        exists, else parsed (and written to the cache for the next set-up).
    """
    path = table_path(root, INTERACTIONS_TABLE)
    entry = entry_dir(Path(cache_dir), path)
    if (entry / MANIFEST).is_file():
        try:
            inter = read_entry(entry, path)
            log.info("%s: parsed table read from the cache %s", path, entry)
            return inter
        except (OSError, ValueError, KeyError, pa.ArrowInvalid) as err:
            log.warning("%s: unreadable cache entry (%s); replacing it", entry, err)
            shutil.rmtree(entry, ignore_errors=True)
    inter = read_interaction_arrays(root)
    try:
        write_entry(entry, inter)
        log.info("%s: parsed table cached in %s", path, entry)
    except OSError as err:
        log.warning("%s = %s: cannot write the cache (%s); going on without it", config_key, cache_dir, err)
    return inter


def image_ledger_path(cache_dir: str | Path, root: str | Path) -> Path:
    """Where the verified-cover map of the dataset ``root`` lives: named by the digest of its real path."""
    name = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()
    return Path(cache_dir) / f"images-v{CACHE_VERSION}-{name}.json"


def read_image_ledger(path: Path) -> dict[str, tuple[int, int, int]]:
    """The verified-cover map (relative path -> (size, mtime_ns, inode)); empty when missing or unreadable."""
    try:
        return {relative: tuple(key) for relative, key in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def write_image_ledger(path: Path, ledger: dict, config_key: str = "cache_dir") -> None:
    """Write the verified-cover map atomically (temp file, then rename); a failure is a warning."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps(ledger))
        os.replace(temp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            temp.unlink()
        log.warning("%s = %s: cannot write the image check cache (%s); going on without it", config_key, path, err)
