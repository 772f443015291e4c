"""ICGDataModule setup time and peak memory at Pixel1M scale (the PixelRec subset ICG reports on, Bian et al., 2025).

Builds an interactions table of Pixel1M's size (1,001,822 users, 100,541 items, 19,886,579 interactions; ids only,
a small shared pool of cover images referenced by all items), then, in a fresh process so generation does not
count, times ``ICGDataModule.setup()`` (read, validate, split, negative-sampler index) and reads the peak RSS with
``resource.getrusage``. Targets: setup <= 60 s, peak <= 4 GiB.

    python benchmarks/datamodule_scale.py                 # full scale
    python benchmarks/datamodule_scale.py --scale 0.05    # 5 % of it
"""

from __future__ import annotations

import argparse
import json
import resource
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
POOL = 16  # distinct cover files shared by all items


def _ids(prefix: str, codes: np.ndarray, width: int) -> pa.Array:
    """String ids like u0000042 for integer codes, built in arrow (no Python string per row)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(codes), pa.string()), width, "0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def generate(root: Path, scale: float, seed: int = 0) -> dict:
    """Write a Pixel1M-shaped dataset (scaled) under ``root``; returns its sizes."""
    from PIL import Image

    from icg.data.schema import DatasetMeta, write_meta

    rng = np.random.default_rng(seed)
    users = max(10, round(PIXEL1M["users"] * scale))
    items = max(50, round(PIXEL1M["items"] * scale))
    total = max(users * 5, round(PIXEL1M["interactions"] * scale))
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
    # every user has >= 5 interactions (as in PixelRec's filtered subsets), the rest spread at random
    counts = 5 + rng.multinomial(total - 5 * users, np.full(users, 1.0 / users))
    user = np.repeat(np.arange(users, dtype=np.int64), counts)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8  # long-tailed item popularity
    item = rng.choice(items, size=total, p=popularity / popularity.sum())
    timestamp = rng.integers(1_600_000_000, 1_700_000_000, total)
    order = rng.permutation(total)  # file order is not time order
    pq.write_table(
        pa.table(
            {
                "user_id": _ids("u", user[order], 7),
                "item_id": _ids("i", item[order], 6),
                "click": pa.array(np.ones(total, np.int8)),
                "timestamp": pa.array(timestamp[order]),
            }
        ),
        root / "interactions.parquet",
        row_group_size=1 << 20,
    )
    write_meta(root, DatasetMeta(source="benchmark", implicit=True, extra={"scale": scale}))
    return {"users": users, "items": items, "interactions": total}


def _proc_status(key: str) -> float:
    """A memory figure of /proc/self/status in GiB (Linux); falls back to ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(root: Path) -> dict:
    """Time setup() in this (fresh) process and report peak RSS."""
    import torch  # noqa: F401 - imported up front so the baseline includes it

    from icg.data.datamodule import ICGDataModule

    baseline = _proc_status("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    dm = ICGDataModule(root, image_size=64, batch_size=256)
    dm.setup("fit")
    setup_s, setup_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    start = time.perf_counter()
    batch = next(iter(dm.dataloader("train", "interactions", shuffle=True)))
    batch_s = time.perf_counter() - start
    return {
        "setup_s": round(setup_s, 1),
        "setup_cpu_s": round(setup_cpu_s, 1),  # CPU seconds: what the wall time would be on an idle machine
        # ru_maxrss survives execve on Linux (it would include the generator's peak if that were higher);
        # VmHWM is this process's own high-water mark
        "peak_rss_gib_getrusage": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_rss_gib": round(_proc_status("VmHWM"), 2),
        "rss_after_imports_gib": round(baseline, 2),
        "first_batch_s": round(batch_s, 2),
        "batch_image_shape": list(batch["image"].shape),
        **dm.stats(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Pixel1M's size")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the dataset (default: a temp dir)")
    parser.add_argument("--measure", type=Path, default=None, help="only time setup() on an existing dataset folder")
    args = parser.parse_args()
    if args.measure is not None:
        sys.stdout.write(json.dumps(measure(args.measure)) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "pixel1m_like"
        start = time.perf_counter()
        sizes = generate(root, args.scale)
        sys.stdout.write(f"generated {sizes} in {time.perf_counter() - start:.0f} s\n")
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(root)], capture_output=True, text=True, check=True
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        ok = result["setup_s"] <= 60 and result["peak_rss_gib"] <= 4
        sys.stdout.write(f"targets (setup <= 60 s, peak <= 4 GiB): {'met' if ok else 'NOT met'}\n")


if __name__ == "__main__":
    main()
