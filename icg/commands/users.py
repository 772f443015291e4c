"""``icg users fold-in``: users with clicks but no stage-1 embedding, added to an export (ICG, Bian et al., EMNLP 2025).

No retraining: each new user's embedding is fitted to their clicks against the frozen stage-1 model
(``icg.generation.fold_in``; docs/generation.md); ``segment`` clusters the users into K segments for generation at
platform scale (``icg.generation.segments``). ``icg/cli.py`` hands ``icg users ...`` to :func:`run`; jsonargparse
turns :func:`fold_in`'s signature and docstring into the options and ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from icg.commands import call


def fold_in(
    export: str,
    data_root: str,
    stage1_ckpt: str | None = None,
    users: list[str] | str | None = None,
    users_file: str | None = None,
    out: str | None = None,
    refit: bool = False,
    l2: float | None = None,
    steps: int = 50,
) -> dict[str, Any]:
    """Add users who have clicks but no stage-1 embedding to an export, without retraining (docs/generation.md).

    Args:
        export: the ``icg export`` folder to extend (only read: the extended copy is written to ``out``).
        data_root: the icg dataset holding the users' clicks.
        stage1_ckpt: the stage-1 checkpoint the export's users come from (default: the one the export records).
        users: the users to fold in, ``--users u1,u2`` or a JSON list, ids exactly as written (default: every user
            with clicks in data_root that the export does not know).
        users_file: a file with one user id per line (exactly as written), instead of ``users``.
        out: the new export folder to write (required; the input export is never written to).
        refit: allow users the export already knows (replaces their trained embedding).
        l2: prior on the new embeddings (default: stage 1's user_l2).
        steps: L-BFGS iterations of the fit.
    """
    from icg.generation.export import check_new_export
    from icg.generation.fold_in import FoldInError, fold_in_export
    from icg.output_lock import output_lock

    if users is not None and users_file is not None:
        raise FoldInError("give --users or --users_file, not both")
    # User ids are kept exactly as written (spaces included), as the dataset, stage 1 and the export keep them.
    if isinstance(users, str):
        users = [user for user in users.split(",") if user]
        for index, user in enumerate(users):
            if not user.strip():
                raise FoldInError(f"--users: entry {index + 1} is blank ({user!r}); ids are taken exactly as written")
    if users_file is not None:
        path = Path(users_file)
        if not path.is_file():
            raise FoldInError(f"--users_file: {path} does not exist (one user id per line)")
        users = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line and not line.strip():
                raise FoldInError(f"--users_file: {path} line {number} is blank ({line!r}); ids are taken exactly as "
                                  "written, one per line")  # fmt: skip
            if line:
                users.append(line)
    if out is None:
        return fold_in_export(export, data_root, stage1_ckpt, users, out, refit=refit, l2=l2, steps=steps)  # refused
    check_new_export(export, out)  # before the lock file beside --out: an --out inside the input is never touched
    with output_lock(out, "icg users fold-in"):  # before the fit: a second run into --out is refused at once
        return fold_in_export(export, data_root, stage1_ckpt, users, out, refit=refit, l2=l2, steps=steps)


def segment(export: str, k: int, out: str, seed: int = 0) -> dict[str, Any]:
    """Cluster an export's users into K segments (k-means over their stage-1 embeddings) as a new export whose users
    are the K centroids ``segment/0`` ... ``segment/K-1``, for ``icg generate --segments`` (docs/generation.md).

    Args:
        export: the ``icg export`` folder whose users are clustered (only read; the cold-start row is kept, not
            clustered).
        k: the number of segments, 1 <= K <= the export's users.
        out: the new export folder to write (must not exist, or be empty); it holds ``segments.parquet`` (user_id,
            segment, distance).
        seed: k-means' random state (the same seed, the same segments).
    """
    from icg.generation.segments import segment_export

    return segment_export(export, k, out, seed)


USERS_OVERVIEW = """usage: icg users fold-in --export DIR --data_root DIR --out DIR [--stage1_ckpt CKPT] [--users ID..]
       icg users segment --export DIR --k K --out DIR [--seed S]

  fold-in   add users who have clicks in a dataset but no stage-1 embedding to an export (no retraining)
  segment   cluster an export's users into K segments: a new export whose users are the K centroids
"""


def run(words: list[str]) -> int:
    """Run ``icg users <command> ...``; returns the exit status.

    Args:
        words: the words after ``icg users``.
    """
    if not words or words[0] in ("-h", "--help"):
        sys.stdout.write(USERS_OVERVIEW)  # cli-output
        return 0
    if words[0] == "segment":
        report = call(segment, words[1:], "icg users segment")
        sys.stdout.write(f"{report['export']}: {report['users']} user(s) in {report['k']} segment(s) "
                         f"({report['smallest']}-{report['largest']} each)\n")  # fmt: skip  # cli-output
        return 0
    if words[0] != "fold-in":
        sys.stderr.write(f"icg users: unknown command {words[0]!r}\n{USERS_OVERVIEW}")
        return 2
    report = call(fold_in, words[1:], "icg users fold-in")
    clicks = report.get("clicks")
    per_user = f" ({clicks['min']}-{clicks['max']} clicks each)" if clicks else ""
    sys.stdout.write(f"{report['export']}: {report['users']} user(s) folded in{per_user}\n")  # cli-output
    return 0
