"""``icg export``: a trained ICG (Bian et al., EMNLP 2025) as one folder for generation (docs/generation.md).

``icg export --stage3_ckpt runs/demo/stage3/checkpoints/last.ckpt --out runs/demo/export`` writes the folder that
``CoverGenerator.from_pretrained`` loads (``icg.generation.export``). ``icg/cli.py`` hands ``icg export ...`` to
:func:`run`; jsonargparse turns :func:`export`'s signature and docstring into the options and ``--help``.
"""

from __future__ import annotations

import sys

from icg.commands import call


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
    from icg.output_lock import output_lock

    with output_lock(out, "icg export"):  # before loading anything: a second export into --out is refused at once
        folder = export_checkpoint(stage3_ckpt, out, preference_ckpt, base_model, mllm, overwrite=overwrite)
    return str(folder)


def run(words: list[str]) -> int:
    """Run ``icg export ...``; returns the exit status.

    Args:
        words: the words after ``icg export``.
    """
    folder = call(export, words, "icg export")
    sys.stdout.write(f"exported to {folder} (load with icg.generation.CoverGenerator.from_pretrained)\n")
    return 0
