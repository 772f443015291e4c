"""ICGDataModule set-up time and peak memory from small to Pixel8M size (the PixelRec subsets ICG reports on,
Bian et al., EMNLP 2025).

For each size it writes an interactions table shaped like PixelRec's (string ids, every user >= 5 interactions,
Zipf-like item popularity, file order shuffled; a small shared pool of cover files referenced by all items), then,
each in a fresh process so generation does not count, times ``ICGDataModule.setup()`` (read, validate, split,
negative-sampler index) three ways: without a cache (``cold``), with an empty ``cache_dir`` (``first``: cold plus
writing the cache) and with the cache filled (``warm``: what every later stage and every DDP rank pays). Peak
memory is the process's own high-water mark (``VmHWM``). Users and items follow power laws through Pixel1M
(1,001,822 users, 100,541 items, 19,886,579 rows) and Pixel8M (8.9M users, 407k items, 158M rows: the issue's
rounded figures). Bars: Pixel1M <= 10 s; Pixel8M <= 90 s and <= 12 GiB.

    python benchmarks/datamodule_scale.py                            # Pixel1M size only
    python benchmarks/datamodule_scale.py --rows 2M 19886579 80M 158M  # the scaling table of docs/performance.md
    python benchmarks/datamodule_scale.py --measure DIR [--cache-dir C]  # one set-up of an existing dataset
    python benchmarks/datamodule_scale.py --covers 100541                # cover checks, one JPEG per item
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PIXEL1M = {"users": 1_001_822, "items": 100_541, "interactions": 19_886_579}
PIXEL8M = {"users": 8_900_000, "items": 407_000, "interactions": 158_000_000}
POOL = 16  # distinct cover files shared by all items
CHUNK = 1 << 22  # rows generated and written at a time (bounded memory for 158M rows)


def shape(rows: int) -> dict:
    """Users and items for ``rows`` interactions: power laws through the Pixel1M and Pixel8M points."""
    span = math.log(PIXEL8M["interactions"] / PIXEL1M["interactions"])
    scale = rows / PIXEL1M["interactions"]
    out = {"interactions": rows}
    for key in ("users", "items"):
        exponent = math.log(PIXEL8M[key] / PIXEL1M[key]) / span
        out[key] = max(10 if key == "users" else 50, round(PIXEL1M[key] * scale**exponent))
    out["users"] = min(out["users"], rows // 5)
    return out


def _ids(prefix: str, codes: np.ndarray, width: int) -> pa.Array:
    """String ids like u0000042 for integer codes, built in arrow (no Python string per row)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(codes), pa.string()), width, "0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def generate(root: Path, rows: int, seed: int = 0) -> dict:
    """Write a PixelRec-shaped dataset of ``rows`` interactions under ``root``; returns its sizes."""
    from PIL import Image

    from icg.data.schema import DatasetMeta, write_meta

    sizes = shape(rows)
    users, items, total = sizes["users"], sizes["items"], sizes["interactions"]
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(POOL):
        Image.new("RGB", (64, 64), (16 * k, 255 - 16 * k, 128)).save(root / "images" / f"pool{k:02d}.png")
    item_codes = np.arange(items)
    pq.write_table(
        pa.table(
            {
                "item_id": _ids("i", item_codes, 6),
                "title": _ids("title of item ", item_codes, 6),
                "image": pc.binary_join_element_wise(
                    pa.scalar("images/pool"),
                    pc.utf8_lpad(pc.cast(pa.array(item_codes % POOL), pa.string()), 2, "0"),
                    pa.scalar(".png"),
                    "",
                ),
            }
        ),
        root / "items.parquet",
    )
    # every user has >= 5 interactions (as in PixelRec's filtered subsets), the rest spread at random; file order is
    # a random permutation of the rows (not time order); items and timestamps are drawn per chunk
    counts = 5 + rng.multinomial(total - 5 * users, np.full(users, 1.0 / users))
    user = np.repeat(np.arange(users, dtype=np.int32), counts)
    rng.shuffle(user)
    popularity = np.cumsum(1.0 / np.arange(1, items + 1) ** 0.8)  # long-tailed item popularity
    popularity /= popularity[-1]
    schema = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("click", pa.int8()), ("timestamp", pa.int64())]
    )
    with pq.ParquetWriter(root / "interactions.parquet", schema) as writer:
        for start in range(0, total, CHUNK):
            part = user[start : start + CHUNK]
            item = np.minimum(np.searchsorted(popularity, rng.random(len(part))), items - 1)
            table = pa.table(
                {
                    "user_id": _ids("u", part, 7),
                    "item_id": _ids("i", item, 6),
                    "click": pa.array(np.ones(len(part), np.int8)),
                    "timestamp": pa.array(rng.integers(1_600_000_000, 1_700_000_000, len(part))),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=1 << 20)
    write_meta(root, DatasetMeta(source="benchmark", implicit=True, extra={"rows": total}))
    return sizes


def covers(count: int, folder: Path) -> dict:
    """CPU seconds of the cover checks of ``setup()`` for ``count`` distinct small JPEG files (the tables above share
    16 files): without the verified-cover map (every file opened), filling it, and with it (no file opened)."""
    from PIL import Image

    from icg.data.validation import check_images

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{k:06d}.jpg", quality=80)
    paths = np.array([f"images/{k:06d}.jpg" for k in range(count)], dtype=object)
    verified: dict = {}
    out = {"covers": count}
    for label, ledger in (("no_map", None), ("filling_map", verified), ("with_map", verified)):
        start, cpu = time.perf_counter(), time.process_time()
        assert not check_images(folder, paths, ledger)
        out[label] = {"s": round(time.perf_counter() - start, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    return out


def _proc_status(key: str) -> float:
    """A memory figure of /proc/self/status in GiB (Linux); falls back to ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(root: Path, cache_dir: Path | None) -> dict:
    """Time setup() in this (fresh) process, report its peak RSS and the first shuffled batch."""
    import torch  # noqa: F401 - imported up front so the baseline includes it

    from icg.data.datamodule import ICGDataModule

    baseline = _proc_status("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    dm = ICGDataModule(root, image_size=64, batch_size=256, cache_dir=cache_dir)
    dm.setup("fit")
    setup_s, setup_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _proc_status("VmHWM")
    start = time.perf_counter()
    batch = next(iter(dm.dataloader("train", "interactions", shuffle=True)))
    batch_s = time.perf_counter() - start
    return {
        "setup_s": round(setup_s, 1),
        "setup_cpu_s": round(setup_cpu_s, 1),  # CPU seconds of all threads: about the wall time of one idle core
        "peak_rss_gib": round(peak, 2),  # VmHWM: this process's own high-water mark, imports included
        "rss_after_imports_gib": round(baseline, 2),
        "first_batch_s": round(batch_s, 2),
        "batch_image_shape": list(batch["image"].shape),
        **dm.stats(),
    }


def _child(root: Path, cache_dir: Path | None) -> dict:
    command = [sys.executable, __file__, "--measure", str(root)]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"measuring {root} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _rows(text: str) -> int:
    text = text.strip().upper()
    factor = 1_000_000 if text.endswith("M") else 1
    return round(float(text.rstrip("M")) * factor)


def _memory_available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=[str(PIXEL1M["interactions"])], help="sizes, e.g. 2M 158M")
    parser.add_argument("--dir", type=Path, default=None, help="keep (and reuse) the datasets here (default: temp)")
    parser.add_argument("--modes", nargs="+", default=["cold", "first", "warm"], choices=["cold", "first", "warm"])
    parser.add_argument("--measure", type=Path, default=None, help="only time setup() on an existing dataset folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="with --measure: the DataModule's cache_dir")
    parser.add_argument("--covers", type=int, default=None, help="only time the checks of this many distinct covers")
    args = parser.parse_args()
    if args.measure is not None:
        sys.stdout.write(json.dumps(measure(args.measure, args.cache_dir)) + "\n")
        return
    if args.covers is not None:
        with tempfile.TemporaryDirectory() as tmp:
            sys.stdout.write(json.dumps(covers(args.covers, Path(tmp))) + "\n")
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)  # --dir keeps the generated datasets for the next run
        for text in args.rows:
            rows = _rows(text)
            root, cache = folder / f"rows{rows}", Path(tmp) / f"cache{rows}"
            start = time.perf_counter()
            if (root / "meta.json").is_file() and json.loads((root / "meta.json").read_text())["extra"] == {
                "rows": rows
            }:
                sizes = shape(rows)
                sys.stdout.write(f"reusing {root}\n")
            else:
                sizes = generate(root, rows)
            mb = (root / "interactions.parquet").stat().st_size / 2**20
            sys.stdout.write(
                f"{sizes} ({mb:.0f} MB parquet) ready in {time.perf_counter() - start:.0f} s; "
                f"MemAvailable {_memory_available_gib():.1f} GiB\n"
            )
            row = {**sizes, "parquet_mb": round(mb)}
            for mode in args.modes:
                if mode == "warm" and "first" not in args.modes:
                    _child(root, cache)  # fill the cache first (not measured): warm means a filled cache
                row[mode] = _child(root, None if mode == "cold" else cache)
                sys.stdout.write(f"  {mode}: {json.dumps(row[mode])}\n")
                sys.stdout.flush()
            results.append(row)
            shutil.rmtree(cache, ignore_errors=True)
    modes = args.modes
    header = "| rows | users | items | " + " | ".join(f"{m}: s (CPU s), GiB" for m in modes) + " |"
    lines = [header, "|" + " --- |" * (3 + len(modes))]
    for row in results:
        cells = [f"{row[m]['setup_s']} ({row[m]['setup_cpu_s']}), {row[m]['peak_rss_gib']}" for m in modes]
        lines.append(f"| {row['interactions']:,} | {row['users']:,} | {row['items']:,} | " + " | ".join(cells) + " |")
    sys.stdout.write("\n".join(lines) + "\n")
    for row in results:  # the bars, for the rows that have one (wall time needs an idle machine)
        bars = {PIXEL1M["interactions"]: (10, None), PIXEL8M["interactions"]: (90, 12)}.get(row["interactions"])
        if bars is not None:
            for mode in modes:
                gib_ok = bars[1] is None or row[mode]["peak_rss_gib"] <= bars[1]
                verdict = {
                    clock: "met" if row[mode][key] <= bars[0] and gib_ok else "NOT met"
                    for clock, key in (("wall", "setup_s"), ("CPU", "setup_cpu_s"))
                }
                sys.stdout.write(
                    f"{row['interactions']:,} rows, {mode}: <= {bars[0]} s"
                    + (f", <= {bars[1]} GiB" if bars[1] else "")
                    + f": wall {verdict['wall']}; all threads' CPU time (about one core's wall) {verdict['CPU']}\n"
                )


if __name__ == "__main__":
    main()
