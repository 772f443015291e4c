"""``icg explore``: the interactive cover explorer over a trained export (docs/explore.md).

``icg/cli.py`` hands ``icg explore ...`` to :func:`run`; ``python -m icg.explore`` does the same without loading
Lightning. jsonargparse turns :func:`explore`'s signature and docstring into the options and ``--help``. A user error
(an option that does not parse, an incomplete export, a port in use, a bad checkpoint or dataset, a device that is not
there) is one line on stderr and exit status 2; ``ICG_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import sys

from icg.commands import run_server


def explore(
    export: str,
    data_root: str | None = None,
    rewards_ckpt: str | None = None,
    base_model: str | None = None,
    mllm: str | None = None,
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 8000,
    allowed_hosts: str = "",
    history: int = 8,
) -> int:
    """Interactive viewer over a trained export: title-only, ICG without user and ICG covers side by side for any
    user and item, with reward scores (docs/explore.md).

    Args:
        export: an `icg export` folder.
        data_root: the dataset: items to pick, users' clicks (synthetic platform: true click probability and taste).
        rewards_ckpt: a stage-2 checkpoint: reward scores.
        base_model: the base diffusion folder (with its text encoder), replacing the export's; title-only covers use
            it.
        mllm: the MLLM folder, replacing the one the export recorded.
        device: where to draw: cpu, cuda, cuda:1, mps ...
        host: address to listen on (default: loopback only).
        port: port to listen on.
        allowed_hosts: more host names the server answers to, comma-separated (loopback and --host always are).
        history: recent clicks shown per user.
    """
    from icg.explore.app import create_app
    from icg.explore.loading import load_explorer
    from icg.study.guard import parse_allowed_hosts
    from icg.study.server import bind, serve_until_stopped, url_of

    sock = bind(host, port)  # a port in use fails before anything is loaded
    try:
        explorer, catalogue = load_explorer(export, data_root, rewards_ckpt, base_model, mllm, device, history)
    except BaseException:
        sock.close()
        raise
    url = url_of(sock)
    gen = explorer.generator
    extras = [
        f"{catalogue.num_items} dataset items" if catalogue.dataset is not None else "no dataset",
        "reward scores" if explorer.scorer.bundle is not None else "no reward scores (--rewards_ckpt)",
        "true click probabilities" if explorer.scorer.oracle is not None else None,
        explorer.unavailable,
    ]
    sys.stdout.write(
        f"icg explore: {len(gen.users)} users, covers of {gen.image_size} px on {gen.device}; "
        + "; ".join(e for e in extras if e)
        + f"\nopen {url}/ -- Ctrl-C stops\n"
    )  # cli-output
    sys.stdout.flush()
    app = create_app(explorer, catalogue, host=host, allowed_hosts=parse_allowed_hosts(allowed_hosts))
    serve_until_stopped(app, sock)
    return 0


def run(words: list[str]) -> int:
    """Run ``icg explore ...``; returns the exit status.

    Args:
        words: the words after ``icg explore``.
    """
    return run_server(explore, words, "icg explore")
