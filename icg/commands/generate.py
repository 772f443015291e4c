"""``icg generate``: a cover per (user, item) of a pairs file with an exported ICG (Bian et al., EMNLP 2025).

``icg generate --export runs/demo/export --pairs pairs.csv --data_root runs/demo/data --out runs/covers`` makes a
cover per pair on Lightning's predict loop (one process, or DDP across devices and SLURM nodes; ``icg.lit.generation``)
into a resumable folder with a ``manifest.jsonl`` (docs/generation.md). ``icg/cli.py`` hands ``icg generate ...`` to
:func:`run`; jsonargparse turns :func:`generate`'s signature and docstring into the options and ``--help``.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.commands import call

ON_BAD_RECORD = ("error", "skip")
log = logging.getLogger(__name__)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def generate(  # noqa: C901, PLR0913, PLR0915  # the signature is `icg generate`'s command line
    export: str,
    pairs: str,
    out: str,
    data_root: str | None = None,
    method: str = "icg",
    seed: int | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    strength: float | None = None,
    user_guidance: float | None = None,
    candidates: int = 1,
    preference_ckpt: str | None = None,
    segments: bool = False,
    pool: int = 0,
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
        user_guidance: s >= 0: each step's prediction moves from the cold-start user's (same title and reference)
            towards the user's; 1 = the cover as trained, 0 = the cold-start user's, > 1 = more of the user at one more
            denoiser row per cover (default: the export's, 1 for exports without it).
        candidates: N >= 1 covers per pair, the one the stage-1 click model gives the highest click probability kept
            (N times the sampling work); the manifest records N, the candidate kept and its score.
        preference_ckpt: the stage-1 checkpoint that picks with ``candidates`` > 1 or ``pool`` >= 1 (default: the one
            the export's provenance records).
        segments: one cover per (segment, item), shared by every user of the segment (needs a segment export,
            ``icg users segment``); a user outside the segment table gets the item's cold-start cover.
        pool: N >= 1: per item a pool of covers (the K segments x N seeds with a segment export, whether or not
            ``segments`` is given; else N covers of the cold-start user), and each user of the item gets the pool
            cover the stage-1 click model scores highest for them; writes ``pool.parquet`` and ``picks.parquet``
            (0: off).
        batch_size: covers per batch on each device (with ``segments``/``pool``: per chunk of one item's pool).
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
        start-up and loading excluded, writing the covers included; ``mode``, ``mllm_calls``: item rows the MLLM
        read, ``covers_made``: cover files drawn, both summed over ranks; with ``segments``/``pool``, ``made`` and
        ``kept`` count pool covers and ``pool_covers`` is the pool's size); None on other ranks.
    """
    from torch.utils.data import DataLoader

    from icg.errors import UserError, disk_full_is_a_user_error
    from icg.generation.cover_folder import CoverFolder
    from icg.generation.export import export_fingerprint, read_config
    from icg.generation.pairs import PairsDataset, bad_rows_message, read_pairs
    from icg.generation.segments import is_segment_export, read_segments
    from icg.generation.users import UserTable
    from icg.lit.generation import CoverFolderWriter, CoverGeneration, generation_trainer
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
    _check_sampling(num_steps, strength, user_guidance, candidates)
    mode = _check_mode(segments, pool, candidates, score)
    found, bad = read_pairs(pairs, data_root)
    if bad and on_bad_record == "error":
        raise UserError(bad_rows_message(pairs, bad))
    if not found:
        raise UserError(f"--pairs: {pairs} has no usable pair ({len(bad)} bad row(s)); nothing to generate")
    config = read_config(export, "--export")
    sampler = {"user_guidance": 1.0, **config["sampler"]}  # an export older than user guidance: 1, as it drew
    picking = f"--candidates {candidates}" if candidates > 1 else f"--pool {pool}" if pool else None
    preference_ckpt = _picking_checkpoint(preference_ckpt, config, export, picking)
    if pool and is_segment_export(export):  # --pool N over a segment export: its K segments x N seeds
        segments = True
    user_segment, segment_ids = read_segments(export, config, "--segments") if segments else (None, None)

    def pick(value, key):
        return sampler[key] if value is None else value

    prompter = (config["conditioner"]["init_args"].get("prompter") or {}).get("init_args", {})
    settings = {
        "export_weights": export_fingerprint(Path(export), config),
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
    } | _personalizing(float(pick(user_guidance, "user_guidance")), candidates, preference_ckpt)
    settings |= _mode_settings(mode, pool, Path(export) if segments else None)
    if settings["num_steps"] != int(sampler["num_steps"]):
        log.warning("--num_steps %d: this export's adapter was trained at %d steps; an adapter serves best at the "
                    "steps it was trained at (docs/generation.md, \"Few-step covers\")", settings["num_steps"],
                    int(sampler["num_steps"]))  # fmt: skip
    side = int(settings["image_size"] or 1024)
    remaining: list = []  # the pairs still to make: a full disk's message says what they need

    def needed() -> int:
        return len(remaining) * (3 * side * side + 1024)  # at most a raw RGB cover and its manifest line each

    # One run per --out: rank 0 holds the lock; the other ranks of the same run write under it.
    with output_lock(out, "icg generate", lead=is_lead_process()), disk_full_is_a_user_error(out, needed):
        folder = CoverFolder(out, settings)
        known_users = UserTable.load(export, count=config["users"]["count"]).user_ids
        state = folder.inspect(overwrite, known_users)  # read-only, on every rank alike
        if mode != "pairs":  # shared covers per item (a pool), then a pick per pair
            spec = PoolSpec(mode, pool, segment_ids, user_segment, set(known_users), preference_ckpt, settings["seed"])
            options = {"base_model": base_model, "mllm": mllm, "dtype": dtype, "seed": seed, "num_steps": num_steps,
                       "guidance_scale": guidance_scale, "strength": strength, "user_guidance": user_guidance,
                       "batch_size": batch_size, "num_workers": num_workers, "accelerator": accelerator,
                       "devices": devices, "num_nodes": num_nodes, "progress_bar": progress_bar}  # fmt: skip
            return _pool_run(export, folder, state, found, bad, skip_report, method, spec, options)
        remaining = [p for p in found if p.key not in state.finished]
        skipped = [b.as_dict() for b in bad]
        writer = CoverFolderWriter(folder, state, method, [p.key for p in found], skipped, skip_report)
        trainer = generation_trainer(accelerator, devices, num_nodes, [writer], progress_bar)
        if remaining:
            from icg.generation.generator import CoverGenerator
            from icg.generation.picking import BestOf, ClickScorer

            generator = CoverGenerator.from_pretrained(export, base_model=base_model, mllm=mllm, dtype=dtype)
            rewards, reward_users = _reward_bundle(rewards_ckpt) if score else (None, [])
            how = BestOf(ClickScorer.from_checkpoint(preference_ckpt, "--preference_ckpt"), candidates) if (
                candidates > 1) else None  # fmt: skip
            module = CoverGeneration(generator, seed, num_steps, guidance_scale, strength, rewards, reward_users,
                                     user_guidance, how)  # fmt: skip
            loader = DataLoader(PairsDataset(remaining, generator.image_size), batch_size=batch_size,
                                num_workers=num_workers)  # fmt: skip
            trainer.predict(module, dataloaders=loader, return_predictions=False)
            merged, seconds, cpu_seconds = writer.merged, writer.seconds, writer.cpu_seconds
        elif trainer.is_global_zero:  # nothing left to make: only the manifest to settle (e.g. after a kill mid-merge)
            folder.prepare(state, skipped, Path(skip_report) if skip_report else None)
            merged, seconds, cpu_seconds = folder.finalize(writer.order), 0.0, 0.0
        if not trainer.is_global_zero:
            return None
        costs = {"mode": mode, "mllm_calls": writer.mllm_calls, "covers_made": writer.covers_made}
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
        } | costs
        if len(in_run) != len(found):
            raise RuntimeError(f"{folder.manifest} lists {len(in_run)} of the {len(found)} pairs after the run")
        folder.write_stats(summary)
        return summary


def _check_mode(segments: bool, pool: int, candidates: int, score: bool) -> str:
    """The run's mode (``pairs``, ``segments``, ``pool``), refusing what a shared-cover run cannot do."""
    from icg.errors import UserError

    if isinstance(pool, bool) or pool < 0:
        raise UserError(f"--pool must be >= 0 (0: off; N >= 1: N covers per segment, or of the cold-start user, per "
                        f"item, and a pick per user), got {pool}")  # fmt: skip
    mode = "pool" if pool else "segments" if segments else "pairs"
    if mode != "pairs" and candidates > 1:
        raise UserError(f"--candidates {candidates} picks per pair; with --{mode} the pick is the pool's: use --pool N "
                        "instead")  # fmt: skip
    if mode != "pairs" and score:
        raise UserError(f"--score true scores per-pair covers; it does not run with --{mode} yet (picks.parquet holds "
                        "the click model's score with --pool)")  # fmt: skip
    return mode


def _mode_settings(mode: str, pool: int, segment_export: Path | None) -> dict[str, Any]:
    """What a segments or pool run's covers depend on beyond the sampling settings: the mode, N, and the segment
    table (its centroids and assignment; the export's fingerprint leaves user tables out)."""
    from icg.generation.cover_folder import file_sha256
    from icg.generation.segments import SEGMENTS_FILE
    from icg.generation.users import USERS_WEIGHTS

    settings: dict[str, Any] = {"mode": mode}
    if mode == "pool":
        settings["pool"] = pool
    if segment_export is not None:
        digest = "".join(file_sha256(segment_export / name) for name in (USERS_WEIGHTS, SEGMENTS_FILE))
        settings["segment_table"] = hashlib.sha256(digest.encode()).hexdigest()[:32]
    return settings


@dataclass
class PoolSpec:
    """A segments or pool run's choices (``icg.generation.pools``).

    Args:
        mode: ``segments`` or ``pool``.
        pool: N of ``--pool`` (0 with ``--segments`` alone).
        segments: the segment export's segment ids, ``segment/0`` ... (None: a plain export).
        user_segment: user -> segment of a segment export (None: a plain export).
        known_users: the export's users (who is not a fallback with a plain export).
        preference_ckpt: the stage-1 checkpoint that picks (``--pool``).
        seed: the run's base seed.
    """

    mode: str
    pool: int
    segments: list[str] | None
    user_segment: dict[str, str] | None
    known_users: set[str]
    preference_ckpt: str | None
    seed: int


def _pool_run(  # noqa: PLR0913  # the command's parts, handed over as they are
    export: str,
    folder: Any,
    state: Any,
    found: list,
    bad: list,
    skip_report: str | None,
    method: str,
    spec: PoolSpec,
    options: dict[str, Any],
) -> dict[str, Any] | None:
    """``--segments`` / ``--pool``: make the items' missing pool covers on the predict loop (one item per batch, whole
    items per rank), then on rank 0 pick per pair and write the pool, the picks and the manifest (``options``: the
    command's sampling, loading and trainer options)."""
    from torch.utils.data import DataLoader

    from icg.generation.pools import PoolDataset, PoolRun, plan_pool, pool_ledger, remaining, single
    from icg.lit.generation import CoverFolderWriter, CoverGeneration, generation_trainer

    planned = plan_pool(found, spec.seed, spec.segments, spec.pool or 1, None if spec.pool else spec.user_segment)
    todo = remaining(planned, {} if state.replace else pool_ledger(folder.root))
    skipped = [b.as_dict() for b in bad]
    writer = CoverFolderWriter(folder, state, method, [p.key for p in found], skipped, skip_report, pool=True)
    trainer = generation_trainer(options["accelerator"], options["devices"], options["num_nodes"], [writer],
                                 options["progress_bar"])  # fmt: skip
    seconds = cpu_seconds = 0.0
    if todo:
        from icg.generation.generator import CoverGenerator

        generator = CoverGenerator.from_pretrained(export, base_model=options["base_model"], mllm=options["mllm"],
                                                   dtype=options["dtype"])  # fmt: skip
        module = CoverGeneration(generator, options["seed"], options["num_steps"], options["guidance_scale"],
                                 options["strength"], user_guidance=options["user_guidance"],
                                 pool_batch=options["batch_size"])  # fmt: skip
        data = DataLoader(PoolDataset(found, todo, generator.image_size), batch_size=1, collate_fn=single,
                          num_workers=options["num_workers"])  # fmt: skip
        trainer.predict(module, dataloaders=data, return_predictions=False)
        seconds, cpu_seconds = writer.seconds, writer.cpu_seconds
    elif trainer.is_global_zero:
        folder.prepare(state, skipped, Path(skip_report) if skip_report else None)
    if not trainer.is_global_zero:
        return None
    scorer = None
    if spec.pool:
        from icg.generation.picking import ClickScorer

        scorer = ClickScorer.from_checkpoint(spec.preference_ckpt, "--preference_ckpt")
    run = PoolRun(spec.mode, found, planned, method, spec.user_segment, spec.known_users, scorer)
    counts = run.finish(folder)
    summary = {
        "manifest": str(folder.manifest),
        "covers": len(found),
        "made": len(todo),
        "kept": len(planned) - len(todo),
        "skipped": len(bad),
        "fallback": counts["fallback"],
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "mode": spec.mode,
        "mllm_calls": writer.mllm_calls,
        "covers_made": writer.covers_made,
        "pool_covers": counts["pool_covers"],
    }
    folder.write_stats(summary | {"preference_ckpt": _absolute(spec.preference_ckpt)})
    return summary


def _check_sampling(
    num_steps: int | None, strength: float | None, user_guidance: float | None, candidates: int
) -> None:
    """Refuse a sampling option out of range, in one line naming the flag."""
    from icg.diffusion.sampler import strength_in_range, user_guidance_in_range
    from icg.errors import UserError

    if num_steps is not None and num_steps < 1:
        raise UserError(f"--num_steps must be >= 1, got {num_steps}")
    if strength is not None and not strength_in_range(strength):
        raise UserError(f"--strength must be in (0, 1] (1: from pure noise, < 1: from the reference), got {strength}")
    if user_guidance is not None and not user_guidance_in_range(user_guidance):
        raise UserError(f"--user_guidance must be a finite number >= 0 (1: the cover as trained, 0: the cold-start "
                        f"user's, > 1: more of the user), got {user_guidance}")  # fmt: skip
    if candidates < 1:
        raise UserError(f"--candidates must be >= 1 (1: no picking), got {candidates}")


def _personalizing(user_guidance: float, candidates: int, preference_ckpt: str | None) -> dict[str, Any]:
    """The run's user guidance and best-of-N settings, recorded only when on: a folder of an earlier run (whose
    covers are those with both off) still resumes."""
    settings: dict[str, Any] = {"user_guidance": user_guidance} if user_guidance != 1 else {}
    if candidates > 1:
        settings |= {"candidates": candidates, "preference_ckpt": _absolute(preference_ckpt)}
    return settings


def _picking_checkpoint(
    preference_ckpt: str | None, config: dict[str, Any], export: str, picking: str | None
) -> str | None:
    """The stage-1 checkpoint that picks (``picking``: ``--candidates N`` or ``--pool N``): the one given, else the one
    the export records (None when nothing picks)."""
    from icg.errors import UserError

    if picking is None:
        return None
    if preference_ckpt is not None:
        if not Path(preference_ckpt).is_file():
            raise UserError(f"--preference_ckpt: {preference_ckpt} does not exist (the stage-1 checkpoint that picks "
                            f"among {picking.replace('--pool', 'the covers of --pool')})")  # fmt: skip
        return preference_ckpt
    recorded = config.get("provenance", {}).get("preference_ckpt")
    if not recorded:
        raise UserError(f"{picking} needs the stage-1 click model to pick with, and --export {export} "
                        "records none; pass --preference_ckpt PATH")  # fmt: skip
    if not Path(recorded).is_file():
        raise UserError(f"--preference_ckpt: not given, and the stage-1 checkpoint --export {export} records, "
                        f"{recorded}, does not exist here; pass --preference_ckpt PATH")  # fmt: skip
    return recorded


def _reward_bundle(rewards_ckpt: str) -> tuple[Any, list[str]]:
    """The frozen stage-2 bundle and the user ids its preference reward indexes (stage 1's)."""
    from icg.errors import UserError
    from icg.models.rewards.bundle import load_reward_bundle

    bundle = load_reward_bundle(rewards_ckpt, "--rewards_ckpt")
    vocabularies = {tuple(r.user_ids) for r in bundle.rewards.values() if hasattr(r, "user_ids")}
    if len(vocabularies) > 1:
        raise UserError(f"--rewards_ckpt: {rewards_ckpt} holds preference rewards over different user vocabularies")
    return bundle, list(next(iter(vocabularies), ()))


def run(words: list[str]) -> int:
    """Run ``icg generate ...``; returns the exit status.

    Args:
        words: the words after ``icg generate``.
    """
    summary = call(generate, words, "icg generate")
    if summary is not None:
        skipped = f", {summary['skipped']} bad row(s) skipped" if summary["skipped"] else ""
        fallback = (f"; {summary['fallback']} for users unknown to the export (the cold-start fallback; add them with "
                    "icg users fold-in)") if summary["fallback"] else ""  # fmt: skip
        rate = f" in {summary['seconds']:.1f} s ({summary['cpu_seconds']:.1f} s CPU)" if summary["made"] else ""
        sys.stdout.write(f"{summary['manifest']}: {summary['covers']} covers ({summary['made']} made now, "
                         f"{summary['kept']} kept from before{skipped}){rate}{fallback}\n")  # fmt: skip  # cli-output
    return 0
