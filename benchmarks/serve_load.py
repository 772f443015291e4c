"""Latency of ``icg serve`` under concurrent clients: p50 / p99 of ``GET /cover``, requests/s, lost requests.

The target (issue 21): p99 <= 20 ms with 50 concurrent clients and no request lost. A pool folder is built here
(``tests.helpers.serving.write_pool``, the builder the serving tests use): ``--users`` x ``--items`` picks (every
user has a pick for every item, so the dictionaries hold 200,000 pairs by default), ``--slots`` covers per item
(slot 0 the cold-start cover, slots 1..``--segments`` one per segment), every user in a segment. ``icg serve`` then
runs as a user starts a service, ``python -m icg.serving --pool POOL`` (``icg serve`` without loading Lightning; the
same app), in a subprocess on loopback with a free port (uvicorn, as shipped: no access log). The server's CPU time per
level (``/proc/<pid>/stat``) says how much of a core each request costs it; the client's is its process time.

The client is one asyncio process with ``C`` concurrent clients, each its own keep-alive HTTP/1.1 connection sending
one request at a time (a front end's connection pool); the ``--requests`` requests of a level are drawn up front and
shared out as clients free up. The mix (seeded): 80 % known (user, item) pairs (expected: 200 with source ``pick``),
10 % unknown users of known items (200, ``cold_start``), 10 % items in neither the pool nor a dataset (404). A
request is *lost* when it gets another status than expected, no reply within ``--timeout_s`` or a connection error;
*wrong* when a 200 names another source than expected. Latency is from writing the request to the last byte of the
reply. The client is a few lines on ``asyncio`` streams (no HTTP client package: the service speaks plain HTTP/1.1,
and the lighter the client, the less it takes from the server on a small machine; both share its cores).

    python -m benchmarks.serve_load                                   # 1,000 users x 200 items; C = 1, 10, 50
    python -m benchmarks.serve_load --requests 20000 --concurrency 50 100 --json serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parents[1]


def build_pool(folder: Path, users: int, items: int, slots: int, segments: int, seed: int) -> tuple[list, list]:
    """The pool folder (module docstring); returns its user ids and item ids."""
    sys.path.insert(0, str(REPO))
    from tests.helpers.serving import write_pool

    rng = random.Random(seed)
    user_ids = [f"u{k:05d}" for k in range(users)]
    item_ids = [f"i{k:05d}" for k in range(items)]
    rows = [(i, s, None if s == 0 or s > segments else f"s{s}") for i in item_ids for s in range(slots)]
    picks = [(u, i, rng.randrange(slots), rng.random()) for u in user_ids for i in item_ids]
    user_segments = {u: f"s{rng.randint(1, segments)}" for u in user_ids}
    write_pool(folder, rows, picks, user_segments, settings={"mode": "pool"})
    return user_ids, item_ids


def draw_requests(count: int, users: list, items: list, rng: random.Random) -> list[tuple[str, int, bytes | None]]:
    """``count`` (path, expected status, expected source) of the mix in the module docstring."""
    out = []
    for _ in range(count):
        kind = rng.random()
        user, item = rng.choice(users), rng.choice(items)
        if kind < 0.8:
            expected = (200, b'"source":"pick"')
        elif kind < 0.9:
            user, expected = f"new{rng.randrange(10**6)}", (200, b'"source":"cold_start"')
        else:
            item, expected = f"gone{rng.randrange(10**6)}", (404, None)
        out.append((f"/cover?user={quote(user)}&item={quote(item)}", *expected))
    return out


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def client(host: str, port: int, jobs, latencies: list, counts: dict, timeout_s: float) -> None:
    """One connection; takes the next request from the shared iterator ``jobs`` until none is left."""
    connection = None
    for path, status, source in jobs:
        start = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
            reader, writer = connection
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            got, body = await asyncio.wait_for(read_reply(reader), timeout_s)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["lost"] += 1
            if connection is not None:
                connection[1].close()
            connection = None
            continue
        latencies.append(time.perf_counter() - start)
        if got != status:
            counts["lost"] += 1
        elif source is not None and source not in body:
            counts["wrong"] += 1
    if connection is not None:
        connection[1].close()


async def level(url: str, requests: list, concurrency: int, timeout_s: float) -> dict:
    """``requests`` through ``concurrency`` clients: latency percentiles, requests/s, lost and wrong."""
    parts = urlsplit(url)
    jobs = iter(requests)
    latencies: list[float] = []
    counts = {"lost": 0, "wrong": 0}
    start = time.perf_counter()
    await asyncio.gather(*(client(parts.hostname, parts.port, jobs, latencies, counts, timeout_s)
                           for _ in range(concurrency)))  # fmt: skip
    wall = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
        "max_ms": round(ms[-1], 2),
        "requests_per_s": round(len(requests) / wall, 1),
        "lost": counts["lost"],
        "wrong": counts["wrong"],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8, help="pool covers per item")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--warmup", type=int, default=500, help="requests before the first level, not counted")
    parser.add_argument("--timeout_s", type=float, default=10.0, help="a reply later than this is lost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.helpers.serving import serving

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as work:
        started = time.perf_counter()
        users, items = build_pool(Path(work) / "pool", args.users, args.items, args.slots, args.segments, args.seed)
        built = time.perf_counter() - started
        started = time.perf_counter()
        with serving(Path(work) / "pool", light=True) as (process, url):
            ready = time.perf_counter() - started
            asyncio.run(level(url, draw_requests(args.warmup, users, items, rng), 1, args.timeout_s))
            levels = []
            for concurrency in args.concurrency:
                drawn = draw_requests(args.requests, users, items, rng)
                server, client_cpu = cpu_seconds(process.pid), time.process_time()
                result = asyncio.run(level(url, drawn, concurrency, args.timeout_s))
                result["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(process.pid) - server) / len(drawn), 3)
                result["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - client_cpu) / len(drawn), 3)
                levels.append(result)
            rss = rss_mib(process.pid)
    result = {
        "pool": {
            "users": args.users,
            "items": args.items,
            "picks": args.users * args.items,
            "covers": args.items * args.slots,
            "segments": args.segments,
        },  # fmt: skip
        "build_s": round(built, 2),
        "start_s": round(ready, 2),
        "server_rss_mib": rss,
        "levels": levels,
        "target": "p99 <= 20 ms at 50 concurrent clients, 0 lost",
    }
    print(f"pool: {args.users} users x {args.items} items = {args.users * args.items} picks, "
          f"{args.items * args.slots} covers; built in {built:.1f} s; `python -m icg.serving` ready in {ready:.1f} s "
          f"(imports + load), server RSS {rss} MiB")  # fmt: skip
    print("| clients | requests | p50 ms | p99 ms | max ms | requests/s | lost | wrong | server CPU ms/req "
          "| client CPU ms/req |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in levels:
        print(f"| {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
              f"{r['requests_per_s']} | {r['lost']} | {r['wrong']} | {r['server_cpu_ms_per_request']} | "
              f"{r['client_cpu_ms_per_request']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
