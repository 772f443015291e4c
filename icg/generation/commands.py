"""``icg export``: the generation commands of the ``icg`` CLI (ICG, Bian et al., EMNLP 2025).

``icg export --stage3_ckpt runs/demo/stage3/checkpoints/last.ckpt --out runs/demo/export`` writes the folder that
``CoverGenerator.from_pretrained`` loads (``icg.generation.export``).
"""

from __future__ import annotations

import logging
import sys


def export(
    stage3_ckpt: str,
    out: str,
    preference_ckpt: str | None = None,
    base_model: str | None = None,
    mllm: str | None = None,
    overwrite: bool = False,
) -> str:
    """Export a trained ICG (a stage-3 checkpoint) as one self-contained folder for generation.

    Args:
        stage3_ckpt: the stage-3 (alignment) checkpoint; another stage's checkpoint is refused.
        out: the export folder to write (written beside, then renamed into place).
        preference_ckpt: the stage-1 checkpoint with the user table (default: the path the stage-3 checkpoint
            recorded).
        base_model: the base diffusion folder to record (default: the recorded one).
        mllm: the MLLM folder to record (default: the recorded one).
        overwrite: replace an existing export folder.
    """
    from icg.generation.export import export_checkpoint

    folder = export_checkpoint(stage3_ckpt, out, preference_ckpt, base_model, mllm, overwrite=overwrite)
    return str(folder)


def run_export(args: list[str]) -> int:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = CLI(export, args=args, as_positional=False)
    sys.stdout.write(f"exported to {folder} (load with icg.generation.CoverGenerator.from_pretrained)\n")
    return 0
