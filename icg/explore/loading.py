"""Loading the cover explorer over a trained export (docs/explore.md): the device, the generator, the title-only
baseline and the reward scorer, each refused in one line (``ConfigError``/``UserError``) when it cannot be had.

``icg explore`` (``icg.commands.explore``) serves what :func:`load_explorer` returns; tests and notebooks call it too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from icg.errors import ConfigError, UserError

log = logging.getLogger(__name__)


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
