"""The generation commands of the ``icg`` CLI (ICG, Bian et al., EMNLP 2025): export, generate, users fold-in.

``icg export --stage3_ckpt runs/demo/stage3/checkpoints/last.ckpt --out runs/demo/export`` writes the folder that
``CoverGenerator.from_pretrained`` loads (``icg.generation.export``); ``icg generate --export runs/demo/export --pairs
pairs.csv --data_root runs/demo/data --out runs/covers`` makes a cover per pair on Lightning's predict loop (one
process, or DDP across devices and SLURM nodes; ``icg.lit.generation``); ``icg users fold-in`` adds users who have
clicks but no stage-1 embedding (``icg.generation.fold_in``). docs/generation.md documents all three.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any


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


def run_export(args: list[str]) -> int:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = CLI(export, args=args, as_positional=False)
    sys.stdout.write(f"exported to {folder} (load with icg.generation.CoverGenerator.from_pretrained)\n")
    return 0


ON_BAD_RECORD = ("error", "skip")


def _export_fingerprint(folder: Path, config: dict[str, Any]) -> str:
    """What the covers depend on in an export: every tensor file but the user table (trained weights, guidance
    negative, a LoRA if any) and the model specs. Not its users: folding users in must not invalidate finished
    covers."""
    from icg.generation.cover_folder import file_sha256
    from icg.generation.users import USERS_WEIGHTS

    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        if path.name != USERS_WEIGHTS:
            digest.update(path.name.encode() + file_sha256(path).encode())
    digest.update(json.dumps([config.get("conditioner"), config.get("diffusion")], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def generate(
    export: str,
    pairs: str,
    out: str,
    data_root: str | None = None,
    method: str = "icg",
    seed: int | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    strength: float | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    on_bad_record: str = "error",
    skip_report: str | None = None,
    score: bool = False,
    rewards_ckpt: str | None = None,
    overwrite: bool = False,
    base_model: str | None = None,
    mllm: str | None = None,
    dtype: str | None = None,
    accelerator: str = "auto",
    devices: int = 1,
    num_nodes: int = 1,
    progress_bar: bool = True,
) -> dict[str, Any] | None:
    """Make a cover for every (user, item) of a pairs file with an exported ICG; resumable, one process or many.

    Args:
        export: an ``icg export`` folder.
        pairs: a ``.csv`` or ``.jsonl`` of ``user_id,item_id`` (+ optional ``title,image``; docs/generation.md).
        out: the output folder: ``covers/``, ``manifest.jsonl``, ``generate.json``; a rerun resumes it.
        data_root: an icg dataset whose items table gives the title and reference cover of each item_id.
        method: the manifest's ``method`` of these covers (e.g. ``icg``; the study compares methods by it).
        seed: base of the per-pair seeds (default: the export's).
        num_steps: DDIM steps (default: the export's).
        guidance_scale: classifier-free guidance (default: the export's).
        strength: 1 = from pure noise, < 1 = reference-guided (default: the export's).
        batch_size: covers per batch on each device.
        num_workers: DataLoader worker processes decoding reference covers.
        on_bad_record: ``error`` stops at a bad pairs row (naming it); ``skip`` leaves bad rows out, writes them to
            ``skip_report`` and goes on.
        skip_report: where skipped rows go (default: ``<out>/skipped.jsonl``).
        score: also score every cover with a stage-2 reward bundle (needs ``rewards_ckpt``); scores go into the
            manifest.
        rewards_ckpt: the stage-2 reward-bundle checkpoint for ``score``.
        overwrite: an output folder holding another run's covers (other settings) is emptied of them and reused;
            without it such a folder is refused.
        base_model: the base diffusion folder (default: the one the export names).
        mllm: the MLLM folder (default: the one the export names).
        dtype: UNet/VAE dtype, ``float32``, ``bfloat16`` or ``float16`` (default: the export's).
        accelerator: ``auto``, ``cpu`` or ``gpu`` (Lightning's).
        devices: devices (processes) per node; more than one runs DDP, one shard of pairs per rank.
        num_nodes: nodes (under SLURM: ``$SLURM_JOB_NUM_NODES``).
        progress_bar: show Lightning's progress bar.

    Returns:
        on global rank 0, a summary (manifest path, covers in it, made now, kept from before, skipped, fallback
        count, and the wall and CPU seconds (summed over ranks) from every rank ready to the merged manifest:
        start-up and loading excluded, writing the covers included); None on other ranks.
    """
    from torch.utils.data import DataLoader

    from icg.diffusion.sampler import strength_in_range
    from icg.errors import UserError, disk_full_is_a_user_error
    from icg.generation.cover_folder import CoverFolder
    from icg.generation.export import read_config
    from icg.generation.pairs import PairsDataset, bad_rows_message, read_pairs
    from icg.generation.users import UserTable
    from icg.lit.generation import CoverFolderWriter, CoverGeneration
    from icg.output_lock import is_lead_process, output_lock

    if on_bad_record not in ON_BAD_RECORD:
        raise UserError(f"--on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
    if score and rewards_ckpt is None:
        raise UserError("--score true needs --rewards_ckpt (the stage-2 reward bundle that scores the covers)")
    for name, value in (("batch_size", batch_size), ("devices", devices), ("num_nodes", num_nodes)):
        if value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if num_workers < 0:
        raise UserError(f"--num_workers must be >= 0, got {num_workers}")
    if num_steps is not None and num_steps < 1:
        raise UserError(f"--num_steps must be >= 1, got {num_steps}")
    if strength is not None and not strength_in_range(strength):
        raise UserError(f"--strength must be in (0, 1] (1: from pure noise, < 1: from the reference), got {strength}")
    found, bad = read_pairs(pairs, data_root)
    if bad and on_bad_record == "error":
        raise UserError(bad_rows_message(pairs, bad))
    if not found:
        raise UserError(f"--pairs: {pairs} has no usable pair ({len(bad)} bad row(s)); nothing to generate")
    config = read_config(export, "--export")
    sampler = config["sampler"]

    def pick(value, key):
        return sampler[key] if value is None else value

    prompter = config["conditioner"]["init_args"].get("prompter", {}).get("init_args", {})
    settings = {
        "export_weights": _export_fingerprint(Path(export), config),
        "base_model": _absolute(base_model) or config["diffusion"].get("path"),
        "mllm": _absolute(mllm) or prompter.get("mllm_path"),
        "dtype": dtype or config["diffusion"].get("dtype"),
        "method": method,
        "seed": int(pick(seed, "seed")),
        "num_steps": int(pick(num_steps, "num_steps")),
        "guidance_scale": float(pick(guidance_scale, "guidance_scale")),
        "strength": float(pick(strength, "strength")),
        "image_size": sampler.get("image_size"),
        "rewards_ckpt": _absolute(rewards_ckpt) if score else None,
    }
    side = int(settings["image_size"] or 1024)
    remaining: list = []  # the pairs still to make: a full disk's message says what they need

    def needed() -> int:
        return len(remaining) * (3 * side * side + 1024)  # at most a raw RGB cover and its manifest line each

    # One run per --out: rank 0 holds the lock; the other ranks of the same run write under it.
    with output_lock(out, "icg generate", lead=is_lead_process()), disk_full_is_a_user_error(out, needed):
        folder = CoverFolder(out, settings)
        known_users = UserTable.load(export, count=config["users"]["count"]).user_ids
        state = folder.inspect(overwrite, known_users)  # read-only, on every rank alike
        remaining = [p for p in found if p.key not in state.finished]
        skipped = [b.as_dict() for b in bad]
        writer = CoverFolderWriter(folder, state, method, [p.key for p in found], skipped, skip_report)
        trainer = generation_trainer(accelerator, devices, num_nodes, [writer], progress_bar)
        if remaining:
            from icg.generation.generator import CoverGenerator

            generator = CoverGenerator.from_pretrained(export, base_model=base_model, mllm=mllm, dtype=dtype)
            rewards, reward_users = _reward_bundle(rewards_ckpt) if score else (None, [])
            module = CoverGeneration(generator, seed, num_steps, guidance_scale, strength, rewards, reward_users)
            loader = DataLoader(PairsDataset(remaining, generator.image_size), batch_size=batch_size,
                                num_workers=num_workers)  # fmt: skip
            trainer.predict(module, dataloaders=loader, return_predictions=False)
            merged, seconds, cpu_seconds = writer.merged, writer.seconds, writer.cpu_seconds
        elif trainer.is_global_zero:  # nothing left to make: only the manifest to settle (e.g. after a kill mid-merge)
            folder.prepare(state, skipped, Path(skip_report) if skip_report else None)
            merged, seconds, cpu_seconds = folder.finalize(writer.order), 0.0, 0.0
        if not trainer.is_global_zero:
            return None
        in_run = [fallback for key, fallback in merged.items() if key in writer.current]
        kept = len(found) - len(remaining)
        summary = {
            "manifest": str(folder.manifest),
            "covers": len(in_run),
            "made": len(in_run) - kept,
            "kept": kept,
            "skipped": len(bad),
            "fallback": sum(in_run),
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),
        }
        if len(in_run) != len(found):
            raise RuntimeError(f"{folder.manifest} lists {len(in_run)} of the {len(found)} pairs after the run")
        return summary


def generation_trainer(accelerator: str, devices: int, num_nodes: int, callbacks: list, progress_bar: bool = True):
    """The Trainer of ``icg generate``: predict only, no logger or checkpoints; DDP across more than one device.

    Under SLURM a preempted generation needs no checkpoint (it resumes from its folder), so Lightning's requeue
    handler, which would save one, stays off; ``generate.sbatch`` requeues from its batch shell instead.
    """
    from lightning.pytorch import Trainer
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy="ddp" if devices * num_nodes > 1 else "auto", logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress_bar, callbacks=callbacks, plugins=plugins,
    )  # fmt: skip


def _reward_bundle(rewards_ckpt: str) -> tuple[Any, list[str]]:
    """The frozen stage-2 bundle and the user ids its preference reward indexes (stage 1's)."""
    from icg.errors import UserError
    from icg.models.rewards.bundle import load_reward_bundle

    bundle = load_reward_bundle(rewards_ckpt, "--rewards_ckpt")
    vocabularies = {tuple(r.user_ids) for r in bundle.rewards.values() if hasattr(r, "user_ids")}
    if len(vocabularies) > 1:
        raise UserError(f"--rewards_ckpt: {rewards_ckpt} holds preference rewards over different user vocabularies")
    return bundle, list(next(iter(vocabularies), ()))


def run_generate(args: list[str]) -> int:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = CLI(generate, args=args, as_positional=False)
    if summary is not None:
        skipped = f", {summary['skipped']} bad row(s) skipped" if summary["skipped"] else ""
        fallback = (f"; {summary['fallback']} for users unknown to the export (the cold-start fallback; add them with "
                    "icg users fold-in)") if summary["fallback"] else ""  # fmt: skip
        rate = f" in {summary['seconds']:.1f} s ({summary['cpu_seconds']:.1f} s CPU)" if summary["made"] else ""
        sys.stdout.write(f"{summary['manifest']}: {summary['covers']} covers ({summary['made']} made now, "
                         f"{summary['kept']} kept from before{skipped}){rate}{fallback}\n")  # fmt: skip  # cli-output
    return 0


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


USERS_OVERVIEW = """usage: icg users fold-in --export DIR --data_root DIR --out DIR [--stage1_ckpt CKPT] [--users ID..]

  fold-in   add users who have clicks in a dataset but no stage-1 embedding to an export (no retraining)
"""


def run_users(args: list[str]) -> int:
    from jsonargparse import CLI

    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USERS_OVERVIEW)  # cli-output
        return 0
    if args[0] != "fold-in":
        sys.stderr.write(f"icg users: unknown command {args[0]!r}\n{USERS_OVERVIEW}")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = CLI(fold_in, args=args[1:], as_positional=False)
    clicks = report.get("clicks")
    per_user = f" ({clicks['min']}-{clicks['max']} clicks each)" if clicks else ""
    sys.stdout.write(f"{report['export']}: {report['users']} user(s) folded in{per_user}\n")  # cli-output
    return 0
