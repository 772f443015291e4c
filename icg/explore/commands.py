"""``icg explore``: the interactive cover explorer over a trained export (docs/explore.md).

``icg/cli.py`` hands ``icg explore ...`` to :func:`run_explore_command`; ``python -m icg.explore`` does the same
without loading Lightning. A user error (an incomplete export, a port in use, a bad checkpoint or dataset, a device
that is not there) is one line on stderr and exit status 2; ``ICG_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from icg.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icg explore",
        description="Interactive viewer over a trained export: title-only, ICG without user and ICG covers side by "
        "side for any user and item, with reward scores (docs/explore.md).",
    )
    parser.add_argument("--export", required=True, type=Path, help="an `icg export` folder")
    parser.add_argument(
        "--data_root",
        type=Path,
        help="the dataset: items to pick, users' clicks (synthetic platform: true click probability and taste)",
    )
    parser.add_argument("--rewards_ckpt", type=Path, help="a stage-2 checkpoint: reward scores")
    parser.add_argument(
        "--base_model",
        type=Path,
        help="the base diffusion folder (with its text encoder), replacing the export's; title-only covers use it",
    )
    parser.add_argument("--mllm", type=Path, help="the MLLM folder, replacing the one the export recorded")
    parser.add_argument("--device", default="cpu", help="where to draw: cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--allowed_hosts",
        default="",
        help="more host names the server answers to, comma-separated (loopback and --host always are)",
    )
    parser.add_argument("--history", type=int, default=8, help="recent clicks shown per user")
    return parser


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or ConfigError when it does not parse or is not on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r}: not a device; use cpu, cuda, cuda:1, mps ...") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device on this machine; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return parsed


def load_explorer(
    export: str | Path,
    data_root: str | Path | None = None,
    rewards_ckpt: str | Path | None = None,
    base_model: str | Path | None = None,
    mllm: str | Path | None = None,
    device: str = "cpu",
    history: int = 8,
):
    """The explorer over ``export`` and what its page shows: ``(CoverExplorer, ExploreCatalogue)``.

    Args:
        export: an ``icg export`` folder.
        data_root: the dataset (items, clicks; the synthetic platform's truth when it has one).
        rewards_ckpt: a stage-2 reward-bundle checkpoint (None: no reward scores).
        base_model: replaces the export's base diffusion folder (ICG and title-only alike).
        mllm: replaces the export's MLLM folder.
        device: where covers are drawn.
        history: recent clicks per user on the page.
    """
    from icg.data.oracle import Oracle
    from icg.explore.catalogue import ExploreCatalogue
    from icg.explore.explorer import CoverExplorer
    from icg.explore.scoring import CoverScorer
    from icg.generation import CoverGenerator
    from icg.models.rewards.bundle import load_reward_bundle

    where = check_device(device)
    if history <= 0:
        raise ConfigError(f"--history must be positive, got {history}")
    generator = CoverGenerator.from_pretrained(
        export, base_model=str(base_model) if base_model else None, mllm=str(mllm) if mllm else None, device=where
    )
    catalogue = ExploreCatalogue(generator.users.user_ids, data_root, generator.image_size, history)
    bundle = load_reward_bundle(rewards_ckpt, "--rewards_ckpt") if rewards_ckpt is not None else None
    oracle = None
    if data_root is not None:
        try:
            oracle = Oracle.from_dataset(data_root)
        except FileNotFoundError:
            log.info("%s has no hidden truth: no true click probability", data_root)
    base, title_encoder, unavailable = title_only_base(generator)
    explorer = CoverExplorer(generator, base, title_encoder, CoverScorer(bundle, oracle).to(where), unavailable)
    return explorer, catalogue


def title_only_base(generator):
    """``(components, title encoder, None)`` of the title-only baseline, or ``(None, None, why not)``.

    The baseline is the export's base model folder prompted through its own text encoder. It shares the generator's
    UNet/VAE when they are stock (no LoRA from stage 3), and the conditioner's title prompt when that was read from
    the same folder, so nothing is loaded twice.
    """
    from icg.diffusion.lora import current_lora
    from icg.diffusion.prompt_encoder import PromptEncoder

    source = generator.source
    if source is None or source.path is None:
        return None, None, "no title-only covers: the export's base model is a tiny one built from config (no folder)"
    folder = Path(source.path).resolve()
    title_prompt = getattr(generator.conditioner, "title_prompt", None)
    prompt_path = getattr(title_prompt, "spec", {}).get("init_args", {}).get("path") if title_prompt else None
    if prompt_path is not None and Path(prompt_path).resolve() == folder:
        encoder = title_prompt
    else:
        try:
            encoder = PromptEncoder(str(folder), config_key="base_model").to(generator.device)
        except UserError as err:  # e.g. a base folder without its text encoder: the other two covers still work
            log.warning("no title-only covers: %s", err)
            return None, None, f"no title-only covers: {err}"
    if current_lora(generator.diffusion.denoiser) is None:
        base = generator.diffusion
    else:  # the generator's denoiser carries ICG's LoRA: the baseline needs the stock one
        base = source.load("base_model").to(generator.device)
    return base, encoder, None


def _serve(args: argparse.Namespace) -> int:
    from icg.explore.app import create_app
    from icg.study.guard import parse_allowed_hosts
    from icg.study.server import bind, make_server, url_of

    sock = bind(args.host, args.port)  # a port in use fails before anything is loaded
    try:
        explorer, catalogue = load_explorer(args.export, args.data_root, args.rewards_ckpt, args.base_model,
                                            args.mllm, args.device, args.history)  # fmt: skip
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
    app = create_app(explorer, catalogue, host=args.host, allowed_hosts=parse_allowed_hosts(args.allowed_hosts))
    make_server(app).run(sockets=[sock])
    return 0


def run_explore_command(args: list[str]) -> int:
    """Run ``icg explore ...``; returns the exit status.

    Args:
        args: the words after ``icg explore``.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        parsed = _parser().parse_args(args)
    except SystemExit as exit_:  # --help and usage errors: argparse already printed
        return int(exit_.code or 0)
    try:
        return _serve(parsed)
    except UserError as err:
        if os.environ.get("ICG_DEBUG") == "1":
            raise
        sys.stderr.write(f"icg explore: {err}\n")
        return 2
    except KeyboardInterrupt:
        return 130
