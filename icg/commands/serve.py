"""``icg serve``: the cover service, which cover to show a user for an item, over a pool of covers (docs/serving.md).

``icg/cli.py`` hands ``icg serve ...`` to :func:`run`; jsonargparse turns :func:`serve`'s signature and docstring into
the options and ``--help``. A user error (a pool folder that is missing, incomplete or malformed, a pool of another
export, a port in use) is one line on stderr and exit status 2; ``ICG_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import gc
import sys

from icg.commands import run_server


def serve(
    pool: str,
    data_root: str | None = None,
    export: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    allowed_hosts: str = "",
) -> int:
    """Answer GET /cover?user=U&item=I with the cover to show from a pool `icg generate` made: the user's pick, else
    their segment's cover, else the item's cold-start cover, else its reference cover (docs/serving.md).

    Args:
        pool: the pool folder (generate.json, pool.parquet, picks.parquet, covers/; segments.parquet optional).
        data_root: an icg dataset whose reference covers answer for items the pool lacks.
        export: the export that made the pool: refused unless the pool's generate.json records its weights.
        host: address to listen on (default: loopback only).
        port: port to listen on (0: any free port, printed).
        allowed_hosts: more host names the server answers to, comma-separated (loopback and --host always are).
    """
    from icg.serving.app import create_app
    from icg.serving.pool import CoverPool, check_export
    from icg.study.guard import parse_allowed_hosts
    from icg.study.server import bind, serve_until_stopped, url_of

    sock = bind(host, port)  # a port in use fails before anything is loaded
    try:
        cover_pool = CoverPool.load(pool, data_root)
        if export is not None:
            check_export(cover_pool, export)
    except BaseException:
        sock.close()
        raise
    # The pool's dictionaries are millions of objects that live as long as the process: out of the collector's sight,
    # a full collection no longer walks them in the middle of a request (a latency spike per collection).
    gc.collect()
    gc.freeze()
    url = url_of(sock)
    counts = cover_pool.summary()
    sys.stdout.write(
        f"icg serve: pool {cover_pool.root} (mode {counts['mode']}): {counts['picks']} picks of {counts['users']} "
        f"users, {counts['items']} items, {counts['covers']} cover files, {counts['references']} reference covers\n"
        f"ask {url}/cover?user=U&item=I -- Ctrl-C stops\n"
    )  # cli-output
    sys.stdout.flush()
    app = create_app(cover_pool, host=host, allowed_hosts=parse_allowed_hosts(allowed_hosts))
    serve_until_stopped(app, sock)
    return 0


def run(words: list[str]) -> int:
    """Run ``icg serve ...``; returns the exit status.

    Args:
        words: the words after ``icg serve``.
    """
    return run_server(serve, words, "icg serve")
