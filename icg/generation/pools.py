"""Covers at platform scale: a pool of covers per item, shared by users, and one pick per user.

ICG (Bian et al., EMNLP 2025) makes a cover per (user, item); Pixel1M's 1M users x 100k items make that unaffordable.
``icg generate`` has two cheaper modes, both built on a *pool* of covers per item (docs/generation.md, "Segments,
pools and picks"):

* ``--segments`` (a segment export, ``icg users segment``): one cover per (segment, item), made once and shared by
  every user of the segment; a user outside the segment table gets the item's cold-start cover (``fallback``).
* ``--pool N``: per item, the K segments x N seeds (segment export) or N covers of the cold-start user (a plain
  export: ICG without users); the stage-1 click model (``icg.generation.picking.ClickScorer``) then scores every pool
  cover of an item for each of the item's users and each user gets the best one (ties: the lower slot).

This module plans the pool (which (member, item, seed) covers to make, each a *slot* of its item), serves it to the
predict loop one item at a time (the MLLM then reads each item once), writes each rank's pool covers, and on rank 0,
after every rank is done, merges the pool, picks and writes the folder's ``pool.parquet``, ``picks.parquet``,
``segments.parquet`` and one ``manifest.jsonl`` line per pair pointing at the cover that user gets.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from icg.generation.cover_folder import (
    COVERS,
    PICKS_FILE,
    POOL_FILE,
    POOL_SHARD_GLOB,
    SEGMENTS_COPY,
    CoverFolder,
    png_bytes,
    write_atomic,
)
from icg.generation.pairs import Pair
from icg.generation.seeds import candidate_seeds, pair_seed

log = logging.getLogger(__name__)

COLD_START = ""  # the cold-start member's key in seeds (never a user id: a blank id is a bad pairs row)
MODES = ("pairs", "segments", "pool")


@dataclass(frozen=True)
class PoolCover:
    """One cover of an item's pool.

    Args:
        item_id: the item.
        slot: its index in the item's pool (the segment's index with ``--segments``; segment i's seed c is slot
            ``i * N + c`` with ``--pool N``; the cold-start cover of a segments run is slot K).
        segment: the segment whose centroid it is made for (None: the cold-start user).
        seed: its seed: candidate ``c`` (``icg.generation.seeds.candidate_seeds``) of ``pair_seed(base, member, item)``,
            so a segment's first cover is the one ``CoverGenerator`` draws for the user ``segment/i`` and the item.
    """

    item_id: str
    slot: int
    segment: str | None
    seed: int


def pool_cover_file(item_id: str, slot: int, method: str) -> str:
    """A pool cover's path relative to the output folder: ``covers/<hh>/<item>_slot<slot>_<hash16>.png``."""
    digest = hashlib.sha256(json.dumps(["pool", item_id, slot, method]).encode()).hexdigest()
    readable = "".join(c if c.isalnum() or c in "-." else "-" for c in item_id)[:40].strip(".-") or "x"
    return f"{COVERS}/{digest[:2]}/{readable}_slot{slot}_{digest[:16]}.png"


def plan_pool(
    pairs: Sequence[Pair],
    base_seed: int,
    segments: Sequence[str] | None,
    per_member: int,
    user_segment: dict[str, str] | None = None,
) -> list[PoolCover]:
    """Every pool cover of the pairs' items, item by item in pairs-file order, slots in order.

    Args:
        pairs: the run's pairs.
        base_seed: the run's seed.
        segments: the segment ids (``segment/0`` ...) of a segment export; None: the cold-start user alone.
        per_member: covers per member (N of ``--pool``; 1 for ``--segments`` alone).
        user_segment: user -> segment with ``--segments`` alone: an item with a user outside it also gets the
            cold-start cover (slot K). None with ``--pool`` (every user picks from the pool).
    """
    members: list[str | None] = list(segments) if segments is not None else [None]
    planned: list[PoolCover] = []
    for item, users in items_of(pairs).items():
        for m, member in enumerate(members):
            own = pair_seed(base_seed, member if member is not None else COLD_START, item)
            for c in range(per_member):
                planned.append(PoolCover(item, m * per_member + c, member, candidate_seeds([own], c)[0]))
        if user_segment is not None and any(u not in user_segment for u in users):
            planned.append(PoolCover(item, len(members) * per_member, None, pair_seed(base_seed, COLD_START, item)))
    return planned


def items_of(pairs: Sequence[Pair]) -> dict[str, list[str]]:
    """item -> its users, items in pairs-file order."""
    found: dict[str, list[str]] = {}
    for pair in pairs:
        found.setdefault(pair.item_id, []).append(pair.user_id)
    return found


class PoolDataset(Dataset):
    """One element per item: its title, reference (decoded at the generator's size) and the pool covers to make.

    The predict loop takes one element as its batch (``DataLoader(batch_size=1, collate_fn=single)``), so the MLLM
    reads each item once however many covers its pool holds, and DDP shards whole items across ranks.

    Args:
        pairs: the run's pairs (for the items' titles and references).
        covers: the pool covers still to make.
        image_size: side of the decoded reference.
    """

    def __init__(self, pairs: Sequence[Pair], covers: Sequence[PoolCover], image_size: int) -> None:
        described = {p.item_id: p for p in pairs}
        grouped: dict[str, list[PoolCover]] = {}
        for cover in covers:
            grouped.setdefault(cover.item_id, []).append(cover)
        self.items = [(described[item], group) for item, group in grouped.items()]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from icg.generation.generator import reference_batch

        pair, covers = self.items[index]
        return {
            "pool": True,
            "item_id": pair.item_id,
            "title": pair.title,
            "reference": pair.image,
            "image": reference_batch([pair.image], self.image_size)[0],
            "segment": [c.segment for c in covers],
            "slot": [c.slot for c in covers],
            "seed": [c.seed for c in covers],
        }


def single(batch: list[Any]) -> Any:
    """The collate function of a loader whose elements are batches already (``PoolDataset``)."""
    return batch[0]


class PoolShardWriter:
    """Appends one rank's pool covers to ``pool.rank<R>.jsonl``, each line after its cover is in place.

    Args:
        folder: the output folder.
        rank: the global rank.
        method: the run's ``method`` (part of the cover names).
    """

    def __init__(self, folder: CoverFolder, rank: int, method: str) -> None:
        self.folder, self.method = folder, method
        path = folder.root / f"pool.rank{rank}.jsonl"
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.out = path.open("a", encoding="utf-8")
        if torn:
            self.out.write("\n")

    def write(self, image: Tensor, cover: PoolCover) -> None:
        name = pool_cover_file(cover.item_id, cover.slot, self.method)
        data = png_bytes(image)
        write_atomic(self.folder.root / name, data)
        line = {"item_id": cover.item_id, "slot": cover.slot, "segment": cover.segment, "seed": cover.seed,
                "cover": name, "bytes": len(data)}  # fmt: skip
        self.out.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if not self.out.closed:
            self.out.close()


def pool_ledger(root: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(item, slot) -> the pool row of every complete pool cover in the folder: ``pool.parquet`` and every rank's
    ``pool.rank<R>.jsonl`` (a torn line, or a row whose cover is missing or of another size, left out)."""
    rows: list[dict[str, Any]] = []
    if (root / POOL_FILE).is_file():
        rows += pd.read_parquet(root / POOL_FILE).to_dict("records")
    for shard in sorted(root.glob(POOL_SHARD_GLOB)):
        for line in shard.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and {"item_id", "slot", "cover"} <= set(row):
                rows.append(row)
    found = {}
    for row in rows:
        path = root / str(row["cover"])
        size = row.get("bytes")
        if path.is_file() and (size is None or pd.isna(size) or path.stat().st_size == int(size)):
            segment = row.get("segment")
            found[(str(row["item_id"]), int(row["slot"]))] = {
                "item_id": str(row["item_id"]), "slot": int(row["slot"]),
                "segment": None if segment is None or (isinstance(segment, float) and np.isnan(segment)) else segment,
                "seed": int(row["seed"]), "cover": str(row["cover"]),
            }  # fmt: skip
    return found


def remaining(planned: Sequence[PoolCover], ledger: dict[tuple[str, int], dict[str, Any]]) -> list[PoolCover]:
    """The planned pool covers not yet complete in the folder (made with the same seed)."""
    return [c for c in planned if ledger.get((c.item_id, c.slot), {}).get("seed") != c.seed]


@dataclass
class Pick:
    """The cover one (user, item) pair gets."""

    user_id: str
    item_id: str
    slot: int
    cover: str
    score: float | None
    segment: str | None
    fallback: bool


@dataclass
class PoolRun:
    """What the end of a segments or pool run needs (rank 0, after every rank is done).

    Args:
        mode: ``segments`` or ``pool``.
        pairs: the run's pairs, in pairs-file order.
        planned: every pool cover of the run.
        method: the manifest's ``method``.
        user_segment: user -> segment of a segment export (None: a plain export).
        known_users: the users the export knows (plain export: who is not a fallback).
        scorer: the stage-1 click model that picks (``--pool``); None with ``--segments`` alone.
        score_batch: covers scored per call of the click model.
    """

    mode: str
    pairs: Sequence[Pair]
    planned: Sequence[PoolCover]
    method: str
    user_segment: dict[str, str] | None = None
    known_users: set[str] = field(default_factory=set)
    scorer: Any = None
    score_batch: int = 64

    def finish(self, folder: CoverFolder) -> dict[str, Any]:
        """Merge the pool, pick per pair, and write ``pool.parquet``, ``picks.parquet``, ``segments.parquet`` and
        ``manifest.jsonl`` atomically; the rank shards go last. Returns counts for the summary."""
        root = folder.root
        ledger = pool_ledger(root)
        missing = [c for c in self.planned if (c.item_id, c.slot) not in ledger]
        if missing:
            raise RuntimeError(f"{root}: {len(missing)} pool cover(s) missing after the run, e.g. {missing[0]}")
        picks = self.pick(root, ledger)
        _write_parquet(root / POOL_FILE, sorted(ledger.values(), key=lambda r: (r["item_id"], r["slot"])), POOL_SCHEMA)
        _write_parquet(root / PICKS_FILE, [vars(p) for p in picks], PICKS_SCHEMA)
        if self.user_segment is not None:
            users = [{"user_id": u, "segment": s} for u, s in self.user_segment.items()]
            _write_parquet(root / SEGMENTS_COPY, users, SEGMENTS_SCHEMA)
        self.write_manifest(folder, picks, ledger)
        for shard in root.glob(POOL_SHARD_GLOB):
            shard.unlink(missing_ok=True)
        for tmp in (root / COVERS).glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        return {"pool_covers": len(self.planned), "fallback": sum(p.fallback for p in picks)}

    def pick(self, root: Path, ledger: dict[tuple[str, int], dict[str, Any]]) -> list[Pick]:
        """Each pair's cover: its segment's (``--segments``) or the pool's best for its user (``--pool``)."""
        by_item: dict[str, list[dict[str, Any]]] = {}
        for cover in self.planned:
            by_item.setdefault(cover.item_id, []).append(ledger[(cover.item_id, cover.slot)])
        titles = {p.item_id: p.title for p in self.pairs}
        picks: dict[tuple[str, str], Pick] = {}
        for item, users in items_of(self.pairs).items():
            pool = sorted(by_item[item], key=lambda r: r["slot"])
            if self.scorer is None:
                for user in users:
                    picks[(user, item)] = self._segment_pick(user, item, pool)
                continue
            scores = self.scores(root, pool, users, titles[item])  # U x P
            best = scores.argmax(dim=1)  # the first maximum: ties keep the lower slot
            for u, user in enumerate(users):
                row = pool[int(best[u])]
                picks[(user, item)] = Pick(user, item, row["slot"], row["cover"], float(scores[u, best[u]]),
                                           row["segment"], self._fallback(user))  # fmt: skip
        return [picks[p.key] for p in self.pairs]

    def _fallback(self, user: str) -> bool:
        return user not in self.user_segment if self.user_segment is not None else user not in self.known_users

    def _segment_pick(self, user: str, item: str, pool: list[dict[str, Any]]) -> Pick:
        segment = self.user_segment.get(user)
        row = next(r for r in pool if r["segment"] == segment)  # None: the cold-start cover
        return Pick(user, item, row["slot"], row["cover"], None, segment, segment is None)

    def scores(self, root: Path, pool: list[dict[str, Any]], users: list[str], title: str) -> Tensor:
        """U x P click probabilities of the item's P pool covers (as written: 8-bit PNGs) for its U users."""
        images = torch.stack([load_cover(root / r["cover"]) for r in pool])
        p = len(pool)
        flat_users = [u for u in users for _ in range(p)]
        out = []
        for start in range(0, len(flat_users), self.score_batch):
            rows = list(range(start, min(start + self.score_batch, len(flat_users))))
            batch = images[[r % p for r in rows]]
            out.append(self.scorer(batch, [flat_users[r] for r in rows], [title] * len(rows)).float().cpu())
        return torch.cat(out).reshape(len(users), p)

    def write_manifest(self, folder: CoverFolder, picks: list[Pick], ledger: dict) -> None:
        """One line per pair, in pairs-file order, pointing at the cover the pair's user gets."""
        lines = []
        for pair, pick in zip(self.pairs, picks, strict=True):
            pool_row = ledger[(pick.item_id, pick.slot)]
            line = {"user_id": pair.user_id, "item_id": pair.item_id, "method": self.method, "file": pick.cover,
                    "bytes": (folder.root / pick.cover).stat().st_size, "seed": pool_row["seed"], "title": pair.title,
                    "reference": pair.image, "fallback": pick.fallback, "segment": pick.segment,
                    "slot": pick.slot}  # fmt: skip
            lines.append(json.dumps(line) + "\n")
        write_atomic(folder.manifest, "".join(lines).encode())


def load_cover(path: Path) -> Tensor:
    """A cover file as a 3 x H x W tensor in [0, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


POOL_SCHEMA = {"item_id": "string", "slot": "int64", "segment": "string", "seed": "int64", "cover": "string"}
PICKS_SCHEMA = {"user_id": "string", "item_id": "string", "slot": "int64", "cover": "string", "score": "float64",
                "segment": "string", "fallback": "bool"}  # fmt: skip
SEGMENTS_SCHEMA = {"user_id": "string", "segment": "string"}


def _write_parquet(path: Path, rows: Sequence[dict[str, Any]], schema: dict[str, str]) -> None:
    """Rows as a parquet file with exactly ``schema``'s columns and types (nullable), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.schema([(name, pa.type_for_alias(kind)) for name, kind in schema.items()])
    table = pa.Table.from_pylist([{k: row.get(k) for k in schema} for row in rows], schema=arrow)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue().to_pybytes())
