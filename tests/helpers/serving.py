"""A cover pool folder as ``icg generate`` will write it (docs/serving.md), built directly: tiny PNGs + the tables.

The one builder of pool folders for the serving tests and ``benchmarks/serve_load.py``; once ``icg generate`` writes
pools, a fixture can make one with it instead and the tests keep their assertions.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PoolRow = tuple[str, int, str | None]  # item_id, slot, segment (None: the item's cold-start cover)
Pick = tuple[str, str, int, float | None]  # user_id, item_id, slot, score


def cover_of(item: str, slot: int) -> str:
    """A pool cover's path relative to the pool folder."""
    return f"covers/{item}/{slot}.png"


def write_png(path: Path, key: str, size: int = 8) -> None:
    """A solid PNG whose colour (so whose bytes) depends on ``key``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), tuple(hashlib.sha256(key.encode()).digest()[:3])).save(path)


def write_pool(
    root: Path,
    pool_rows: Iterable[PoolRow],
    picks: Iterable[Pick],
    segments: Mapping[str, str] | None = None,
    settings: Mapping | None = None,
    fallback_users: Iterable[str] = (),
) -> Path:
    """Write a pool folder: ``covers/<item>/<slot>.png`` per pool row, ``pool.parquet``, ``picks.parquet`` (a pick's
    cover is the pool's cover of its item and slot), ``segments.parquet`` when ``segments`` is given, and
    ``generate.json`` (``settings`` over ``{"format": "icg-generate", "mode": "pool", "export_weights": "0" * 32}``).

    Args:
        root: the folder (created).
        pool_rows: (item_id, slot, segment or None) per pool cover.
        picks: (user_id, item_id, slot, score or None) per user and item.
        segments: user_id -> segment.
        settings: keys of ``generate.json`` to set.
        fallback_users: users whose picks were made with the cold-start user (``fallback`` true).
    """
    root.mkdir(parents=True, exist_ok=True)
    pool = pd.DataFrame(list(pool_rows), columns=["item_id", "slot", "segment"])
    pool["seed"] = range(len(pool))
    pool["cover"] = [cover_of(i, s) for i, s in zip(pool["item_id"], pool["slot"], strict=True)]
    for item, slot, cover in zip(pool["item_id"], pool["slot"], pool["cover"], strict=True):
        write_png(root / cover, f"{item}/{slot}")
    pool["slot"] = pool["slot"].astype("int64")
    pool["segment"] = pool["segment"].astype("string")
    pool.to_parquet(root / "pool.parquet", index=False)
    segments = dict(segments or {})
    fallback = set(fallback_users)
    chosen = pd.DataFrame(list(picks), columns=["user_id", "item_id", "slot", "score"])
    chosen["cover"] = [cover_of(i, s) for i, s in zip(chosen["item_id"], chosen["slot"], strict=True)]
    chosen["score"] = chosen["score"].astype("float64")
    chosen["segment"] = pd.array([segments.get(u) for u in chosen["user_id"]], dtype="string")
    chosen["fallback"] = chosen["user_id"].isin(fallback)
    chosen["slot"] = chosen["slot"].astype("int64")
    chosen[["user_id", "item_id", "slot", "cover", "score", "segment", "fallback"]].to_parquet(
        root / "picks.parquet", index=False
    )
    if segments:
        pd.DataFrame(list(segments.items()), columns=["user_id", "segment"]).to_parquet(
            root / "segments.parquet", index=False
        )
    written = {"format": "icg-generate", "mode": "pool", "export_weights": "0" * 32, **(settings or {})}
    (root / "generate.json").write_text(json.dumps(written, indent=2) + "\n")
    return root


@contextmanager
def serving(
    pool: Path, *options: str, light: bool = False, timeout_s: float = 120.0
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``icg serve --pool POOL --port 0 OPTIONS`` in a subprocess (uvicorn on loopback, a free port): yields the
    process and the base URL it printed; stops it with SIGINT (Ctrl-C) on exit, SIGKILL if it hangs.

    Args:
        light: start it as ``python -m icg.serving`` (no Lightning, no torch) instead of ``python -m icg.cli serve``.
    """
    entry = ["icg.serving"] if light else ["icg.cli", "serve"]
    command = [sys.executable, "-m", *entry, "--pool", str(pool), "--port", "0", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + timeout_s
        url = None
        while url is None:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"icg serve did not start: {process.stderr.read() if not line else 'timeout'}")
            if line.startswith("ask http://"):
                url = line.split()[1].split("/cover")[0]
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
