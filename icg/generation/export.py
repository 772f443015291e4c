"""``icg export``: a stage-3 checkpoint becomes one self-contained folder that ``CoverGenerator`` loads.

ICG (Bian et al., EMNLP 2025) trains only a small part -- meta tokens, user fusion, adapter -- on a stock MLLM and a
stock diffusion model, so that is all an export holds, plus what generation needs from the earlier stages:

``icg_config.json``
    format and version; the conditioner's spec (it names the stock MLLM and the base model's text encoder by
    absolute path); the diffusion source (base model folder, variant, dtype); the sampler defaults (steps, guidance,
    strength, cover size, seed); the user table's size; provenance (the checkpoints it came from).
``conditioner.safetensors``
    the trained tensors (meta tokens and LoRA if any, fusion, adapter, user offset).
``users.safetensors`` + ``users.json``
    the stage-1 user embeddings with their ids, the cold-start fallback as the last row.
``negative.safetensors``
    classifier-free guidance's negative conditioning (empty title, blank reference, cold-start user), so guidance
    needs nothing else.
``pytorch_lora_weights.safetensors`` (only when stage 3 trained a ``unet_lora``)
    the denoiser's LoRA in diffusers' format: ``pipe.load_lora_weights(folder)`` of a stock pipeline reads it (with
    ``pipeline_inputs`` it then draws the same covers); ``CoverGenerator`` puts it onto the stock UNet / transformer,
    after checking that it fits (a LoRA of another base model is refused).

Generating needs no stage-1 or stage-2 file and no reward weights. The base model and MLLM paths can be overridden
when loading (``CoverGenerator.from_pretrained(folder, base_model=..., mllm=...)``), e.g. on a cluster with another
weights root. Folders are written beside the target and renamed into place: a failed export leaves nothing behind, and
``--overwrite`` keeps the previous export until the new one is in place (``icg.output_lock``: one writer at a time).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from icg import ckpt
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.lora import LORA_WEIGHTS, UNetLoRA, read_lora, save_lora
from icg.diffusion.source import DiffusionSource
from icg.errors import ExportError, MissingFileError, UserError, disk_full_is_a_user_error
from icg.generation.cover_folder import file_sha256
from icg.generation.settings import SamplerSettings
from icg.generation.users import USERS_IDS, USERS_WEIGHTS, UserTable
from icg.models.preference import PreferenceModel
from icg.output_lock import output_lock, settle_leftovers, swap_into_place

EXPORT_FORMAT = "icg-cover-generator"
EXPORT_VERSION = 1
CONFIG = "icg_config.json"
WEIGHTS = "conditioner.safetensors"
NEGATIVE = "negative.safetensors"
EXPORT_FILES = (CONFIG, WEIGHTS, USERS_WEIGHTS, USERS_IDS, NEGATIVE)
TMP_SUFFIX = ".tmp"  # an export being written: .<name>.<random>.tmp beside it
ALIGNMENT_STAGE = "alignment"  # = icg.lit.alignment.STAGE (not imported: inference code does not import training code)


@dataclass
class ExportParts:
    """Everything an export holds, before it is written or loaded onto a diffusion model."""

    conditioner: torch.nn.Module
    users: UserTable
    settings: SamplerSettings
    source: DiffusionSource
    provenance: dict[str, Any] = field(default_factory=dict)
    lora: tuple[UNetLoRA, dict[str, torch.Tensor]] | None = None  # the denoiser's LoRA (config, peft-named tensors)
    negative: Conditioning | None = None  # the guidance negative an export folder holds (None: computed when needed)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _same_folder(recorded: str, base: str | None) -> bool:
    """Whether a path the conditioner spec records names the base model folder ``base`` (absolute, as recorded).

    A stage-3 config names the title encoder's folder as written (often relative: ``weights/stable-diffusion-v1-5``)
    and its checkpoint records the diffusion folder resolved where training ran, so a relative path is the base
    model's folder when ``base`` ends with it; an absolute one when it resolves to ``base``.
    """
    if base is None:
        return False
    path = Path(recorded).expanduser()
    if path.is_absolute():
        return _absolute(str(path)) == base or os.path.normpath(path) == os.path.normpath(base)
    parts = Path(os.path.normpath(path)).parts
    return _absolute(recorded) == base or (".." not in parts and Path(base).parts[-len(parts) :] == parts)


def _paths(spec: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """The init_args of the conditioner spec's prompter and title prompt (None where absent)."""
    args = spec["init_args"]
    prompter = (args.get("prompter") or {}).get("init_args")
    title = (args.get("title_prompt") or {}).get("init_args")
    return prompter, title


def with_paths(
    spec: dict[str, Any],
    source: DiffusionSource,
    base_model: str | None = None,
    mllm: str | None = None,
    config_key: str = "export",
    keep_tiny: bool = False,
) -> tuple[dict[str, Any], DiffusionSource]:
    """Absolute paths in a conditioner spec and diffusion source, with the base model and MLLM optionally replaced.

    The title prompt follows ``base_model`` when it was read from the base model's own folder. A diffusion model built
    from config (``tiny``) has no folder to replace: ``base_model`` is refused, or ignored with ``keep_tiny``.
    """
    spec = copy.deepcopy(spec)
    prompter, title = _paths(spec)
    if keep_tiny and source.path is None:
        base_model = None
    old_base = _absolute(source.path)
    new_base = _absolute(base_model) if base_model is not None else old_base
    if base_model is None and old_base is not None and not Path(old_base).is_dir():
        raise MissingFileError(f"{config_key}: the base model folder it records, {old_base}, does not exist here; "
                               "name where it is with base_model (--base_model DIR)")  # fmt: skip
    if base_model is not None and source.path is None:
        raise UserError(f"{config_key}: base_model={base_model!r} given, but the diffusion model is a tiny one built "
                        "from config (no folder to replace)")  # fmt: skip
    if title is not None and title.get("path") is not None:
        title_path = _absolute(title["path"])
        follows = base_model is not None and _same_folder(title["path"], old_base)
        title["path"] = new_base if follows else title_path
    if prompter is not None:
        if mllm is not None:
            if prompter.get("mllm_path") is None:
                raise UserError(f"{config_key}: mllm={mllm!r} given, but the MLLM is a tiny one built from config "
                                "(tiny_config); there is no folder to replace")  # fmt: skip
            prompter["mllm_path"] = _absolute(mllm)
        elif prompter.get("mllm_path") is not None:
            prompter["mllm_path"] = _absolute(prompter["mllm_path"])
    return spec, DiffusionSource(**{**asdict(source), "path": new_base})


# ------------------------------------------------------------------------------------------------ from stage 3
def checkpoint_parts(
    stage3_ckpt: str | Path,
    preference_ckpt: str | None = None,
    base_model: str | None = None,
    mllm: str | None = None,
    config_key: str = "stage3_ckpt",
    keep_tiny: bool = False,
) -> ExportParts:
    """What a stage-3 checkpoint exports: its trained conditioner, the stage-1 user table, the sampler settings.

    Args:
        stage3_ckpt: the alignment stage's checkpoint (another stage's is refused, naming both).
        preference_ckpt: the stage-1 checkpoint (None: the path the stage-3 checkpoint recorded).
        base_model: replaces the recorded base diffusion folder.
        mllm: replaces the recorded MLLM folder.
        config_key: the key that named ``stage3_ckpt``, quoted in errors.
        keep_tiny: a diffusion model built from config keeps its own instead of ``base_model`` (no folder to replace).
    """
    checkpoint = ckpt.load_stage_checkpoint(stage3_ckpt, ALIGNMENT_STAGE, config_key)
    block = checkpoint[ckpt.ICG_KEY]
    spec, source = with_paths(
        block["specs"]["conditioner"], DiffusionSource(**block["diffusion"]), base_model, mllm, config_key, keep_tiny
    )
    conditioner = ckpt.instantiate(spec, f"{ckpt.ICG_KEY}.specs.conditioner", f"{config_key}: {stage3_ckpt}")
    prefix = "conditioner."
    trained = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    check_tensors(
        trained, conditioner.trained_state_dict(), f"{config_key}: {stage3_ckpt}", "conditioner.", ckpt.CheckpointError
    )
    conditioner.load_trained_state_dict(trained)
    stage1 = preference_ckpt or block["preference_ckpt"]
    recorded = "preference_ckpt" if preference_ckpt else "preference_ckpt (recorded; --preference_ckpt names another)"
    model, user_ids = PreferenceModel.from_checkpoint(stage1, recorded)
    hparams = checkpoint.get("hyper_parameters", {})
    settings = SamplerSettings(**{k: hparams[k] for k in asdict(SamplerSettings()) if k in hparams})
    provenance = {"stage3_ckpt": _absolute(str(stage3_ckpt)), "preference_ckpt": _absolute(str(stage1)),
                  "rewards_ckpt": block.get("rewards_ckpt"), "global_step": checkpoint.get("global_step")}  # fmt: skip
    lora = None
    if block.get("unet_lora"):
        lora = (UNetLoRA(**block["unet_lora"]), ckpt.sub_state_dict(checkpoint["state_dict"], "unet_lora"))
    return ExportParts(ckpt.freeze(conditioner), UserTable.from_preference_model(model, user_ids), settings, source,
                       provenance, lora)  # fmt: skip


def export_checkpoint(
    stage3_ckpt: str | Path,
    folder: str | Path,
    preference_ckpt: str | None = None,
    base_model: str | None = None,
    mllm: str | None = None,
    overwrite: bool = False,
) -> Path:
    """``icg export``: write the export folder of a stage-3 checkpoint (see the module docstring)."""
    parts = checkpoint_parts(stage3_ckpt, preference_ckpt, base_model, mllm)
    return write_parts(parts, folder, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------ the folder
def negative_conditioning(
    conditioner: torch.nn.Module, users: UserTable, device: torch.device | str = "cpu"
) -> Conditioning:
    """Classifier-free guidance's negative (1 row): empty title, blank reference, the cold-start user."""
    side = conditioner.prompter.image_size if conditioner.prompter is not None else 8  # no MLLM: the image is unread
    blank = torch.zeros(1, 3, side, side, device=device)
    return conditioner([""], blank, users.fallback(1).to(device))


def write_parts(parts: ExportParts, folder: str | Path, overwrite: bool = False) -> Path:
    """Write an export folder atomically: into a temporary folder beside it, then renamed into place.

    Holds the folder's lock (``icg.output_lock``) throughout; first puts back a previous export that an interrupted
    ``--overwrite`` left in ``.<name>.old`` and removes temporary folders of killed exports. A full disk is one line
    (``DiskFullError``) and leaves nothing behind.
    """
    folder = Path(folder)
    with output_lock(folder, "icg export"):
        settle_leftovers(folder, [f".{folder.name}.*{TMP_SUFFIX}"])
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise ExportError(
                    f"export folder {folder} exists and is not empty; pass --overwrite true to replace it"
                )
            if not (folder / CONFIG).is_file():
                raise ExportError(f"export folder {folder} holds files but no {CONFIG}: not an icg export, left as is")
        with disk_full_is_a_user_error(folder, lambda: _parts_bytes(parts)):
            _write_parts(parts, folder)
    return folder


def _write_parts(parts: ExportParts, folder: Path) -> None:
    spec, source = with_paths(parts.conditioner.spec, parts.source)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=TMP_SUFFIX))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in parts.conditioner.trained_state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        parts.users.save(tmp)
        with torch.no_grad():
            negative = negative_conditioning(parts.conditioner, parts.users)
        save_file(_conditioning_tensors(negative), str(tmp / NEGATIVE))
        if parts.lora is not None:
            save_lora(tmp, *parts.lora, kind=source.variant)
        config = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "conditioner": spec,
            "diffusion": asdict(source),
            "sampler": asdict(parts.settings),
            "users": {"count": len(parts.users), "embed_dim": parts.users.embed_dim, "fallback": "last row"},
            "unet_lora": asdict(parts.lora[0]) if parts.lora is not None else None,
            "provenance": parts.provenance,
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        swap_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parts_bytes(parts: ExportParts) -> int:
    """About what an export of ``parts`` takes on disk (its tensors; the JSON files are small)."""
    tensors = [*parts.conditioner.trained_state_dict().values(), parts.users.embeddings]
    if parts.lora is not None:
        tensors += list(parts.lora[1].values())
    return sum(t.numel() * t.element_size() for t in tensors)


def write_users(folder: str | Path, users: UserTable, note: dict[str, Any], out: str | Path) -> Path:
    """A new export with another user table (``icg users fold-in``), written beside ``out`` and renamed into place.

    The other files are hard-linked (copied where linking is impossible), ``icg_config.json`` gets the new user count
    and ``note`` appended to ``provenance.fold_in``; readers never see ids and embeddings of two different tables.

    Args:
        folder: the export to start from.
        users: the new table (the old one extended).
        note: what was added and from where, kept in the provenance.
        out: the export to write: a new folder (or an empty one), never ``folder`` itself nor a folder inside it.
    """

    def add_note(config: dict[str, Any]) -> None:
        provenance = config.setdefault("provenance", {})
        provenance["fold_in"] = [*provenance.get("fold_in", []), note]

    return write_derived(folder, users, out, "icg users fold-in", add_note)


def write_derived(
    folder: str | Path,
    users: UserTable,
    out: str | Path,
    command: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """A new export from ``folder`` with another user table (fold-in, user segments), renamed into place at ``out``.

    Args:
        folder: the export to start from (only read).
        users: the new export's user table.
        out: a new (or empty) folder, never ``folder`` itself nor a folder inside it.
        command: the command that writes (named to a second writer by the lock).
        edit: changes the copied ``icg_config.json`` in place (after the user count is set).
        extra_files: more files of the new export, name -> bytes (replacing a file of that name in ``folder``).
    """
    folder, target = Path(folder), Path(out)
    extra_files = dict(extra_files or {})
    check_new_export(folder, target)  # before the lock file beside --out: an --out inside the input is never touched
    with output_lock(target, command):
        config = read_config(folder)
        check_new_export(folder, target)
        settle_leftovers(target, [f".{target.name}.*{TMP_SUFFIX}"])
        config["users"] = {**config.get("users", {}), "count": len(users), "embed_dim": users.embed_dim}
        if edit is not None:
            edit(config)
        needed = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())  # at most: others are linked
        needed += sum(len(data) for data in extra_files.values())
        with disk_full_is_a_user_error(target, lambda: needed):
            _write_users(folder, users, config, target, extra_files)
    return target


def _write_users(
    folder: Path, users: UserTable, config: dict[str, Any], target: Path, extra_files: dict[str, bytes]
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX))
    try:
        # Every other file as it is (weights, guidance negative, and whatever else the export holds, e.g. a LoRA).
        for path in sorted(folder.iterdir()):
            if path.name in (CONFIG, USERS_WEIGHTS, USERS_IDS, *extra_files) or not path.is_file():
                continue
            try:
                os.link(path, tmp / path.name)
            except OSError:
                shutil.copy2(path, tmp / path.name)
        users.save(tmp)
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_new_export(folder: str | Path, out: str | Path) -> None:
    """Refuse an ``--out`` that is the input export ``folder`` (any spelling, a symbolic link), inside it, or taken."""
    folder, target = Path(folder), Path(out)
    inside = target.resolve() == folder.resolve() or folder.resolve() in target.resolve().parents
    if inside or target.is_symlink():
        what = f"the input export {folder} or inside it" if inside else "a symbolic link"
        raise ExportError(f"--out: {target} is {what}; give a new folder (the input export is never written to)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"--out: {target} exists and is not empty; give a new folder")


def _conditioning_tensors(cond: Conditioning) -> dict[str, torch.Tensor]:
    tensors = {"encoder_hidden_states": cond.encoder_hidden_states}
    if cond.attention_mask is not None:
        tensors["attention_mask"] = cond.attention_mask
    if cond.pooled is not None:
        tensors["pooled"] = cond.pooled
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def read_config(folder: str | Path, config_key: str = "export folder") -> dict[str, Any]:
    """The export's ``icg_config.json`` after checking that every file of the format is there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{config_key}: {folder} is not a folder (expected an `icg export` folder)")
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise ExportError(f"{config_key}: {folder} lacks {', '.join(missing)} (an `icg export` folder holds "
                          f"{', '.join(EXPORT_FILES)})")  # fmt: skip
    try:
        config = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{config_key}: {folder / CONFIG} is not valid JSON ({err})") from err
    if config.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{config_key}: {folder / CONFIG} is not an icg export (format {config.get('format')!r})")
    if int(config.get("version", 0)) > EXPORT_VERSION:
        raise ExportError(f"{config_key}: {folder} is export version {config['version']}; this icg reads up to "
                          f"{EXPORT_VERSION}")  # fmt: skip
    if config.get("unet_lora") and not (folder / LORA_WEIGHTS).is_file():
        raise ExportError(f"{config_key}: {folder} lacks {LORA_WEIGHTS} (its {CONFIG} names a unet_lora)")
    for key in ("conditioner", "diffusion", "sampler", "users"):
        if not isinstance(config.get(key), dict):
            raise ExportError(f"{config_key}: {folder / CONFIG} has no {key!r} object (got {config.get(key)!r:.80})")
    if problem := SamplerSettings.problem(config["sampler"]):
        raise ExportError(f"{config_key}: {folder / CONFIG}: sampler.{problem}")
    count = config["users"].get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ExportError(f"{config_key}: {folder / CONFIG}: users.count={count!r}: expected the number of users")
    return config


def export_fingerprint(folder: str | Path, config: dict[str, Any]) -> str:
    """What the covers depend on in an export: every tensor file but the user table (trained weights, guidance
    negative, a LoRA if any) and the model specs. Not its users: folding users in must not invalidate finished
    covers. ``icg generate`` records it as ``export_weights`` in ``generate.json``; ``icg serve --export`` compares.

    Args:
        folder: the export folder.
        config: its ``icg_config.json`` (:func:`read_config`).
    """
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        if path.name != USERS_WEIGHTS:
            digest.update(path.name.encode() + file_sha256(path).encode())
    digest.update(json.dumps([config.get("conditioner"), config.get("diffusion")], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def check_tensors(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    where: str,
    prefix: str = "",
    error: type[UserError] = ExportError,
) -> None:
    """Refuse trained weights that do not fit the module they are for, in one line naming the tensor.

    Every tensor of ``expected`` must be there, none other, each of the expected shape, a float tensor where a float
    one is expected (the same dtype otherwise), with no NaN or infinite value.

    Args:
        tensors: what the file holds.
        expected: what the module holds (its ``trained_state_dict()``, before loading).
        where: the file (and the key or folder that named it), quoted first.
        prefix: put before each tensor's name in messages (``conditioner.`` in a stage-3 checkpoint).
        error: the error raised (``ExportError``; ``CheckpointError`` for a checkpoint).
    """
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        named = [
            f"{verb} tensor(s) {[prefix + n for n in names[:3]]}" + (" ..." if len(names) > 3 else "")
            for verb, names in (("lacks", missing), ("holds unexpected", extra))
            if names
        ]
        raise error(f"{where}: {' and '.join(named)} (not the weights of the module its config describes)")
    for name, want in expected.items():
        got, label = tensors[name], repr(prefix + name)
        if tuple(got.shape) != tuple(want.shape):
            raise error(f"{where}: tensor {label} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if got.is_floating_point() != want.is_floating_point() or not (
            want.is_floating_point() or got.dtype == want.dtype
        ):
            raise error(f"{where}: tensor {label} is {got.dtype}, expected {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise error(f"{where}: tensor {label} holds NaN or infinite values")


def _check_negative(tensors: dict[str, torch.Tensor], where: str) -> None:
    """The guidance negative: float (1, L, D) hidden states, an optional (1, L) mask and (1, P) pooled vector."""
    known = {"encoder_hidden_states", "attention_mask", "pooled"}
    if "encoder_hidden_states" not in tensors or set(tensors) - known:
        raise ExportError(f"{where}: holds tensors {sorted(tensors)}, expected 'encoder_hidden_states' and "
                          "optionally 'attention_mask', 'pooled'")  # fmt: skip
    states = tensors["encoder_hidden_states"]
    shapes = {"encoder_hidden_states": (3, "(1, L, D)")}
    if "attention_mask" in tensors:
        shapes["attention_mask"] = (2, f"(1, {states.shape[1] if states.ndim == 3 else 'L'})")
    if "pooled" in tensors:
        shapes["pooled"] = (2, "(1, P)")
    for name, (ndim, expected) in shapes.items():
        got = tensors[name]
        bad = got.ndim != ndim or got.shape[0] != 1
        if name == "attention_mask" and not bad:
            bad = states.ndim != 3 or got.shape[1] != states.shape[1]
        if bad:
            raise ExportError(f"{where}: tensor {name!r} has shape {tuple(got.shape)}, expected {expected}")
        if name != "attention_mask" and not got.is_floating_point():
            raise ExportError(f"{where}: tensor {name!r} is {got.dtype}, not a float tensor")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ExportError(f"{where}: tensor {name!r} holds NaN or infinite values")


def read_export(folder: str | Path, base_model: str | None = None, mllm: str | None = None) -> ExportParts:
    """The parts of an export folder, checked (``CoverGenerator.from_pretrained`` builds the generator from them)."""
    folder = Path(folder)
    config = read_config(folder)
    spec, source = with_paths(config["conditioner"], DiffusionSource(**config["diffusion"]), base_model, mllm,
                              f"export {folder}")  # fmt: skip
    conditioner = ckpt.instantiate(spec, "conditioner", f"export {folder / CONFIG}")
    weights = ckpt.read_safetensors(folder / WEIGHTS, f"export {folder}")
    check_tensors(weights, conditioner.trained_state_dict(), f"export {folder}: {folder / WEIGHTS}")
    conditioner.load_trained_state_dict(weights)
    negative = ckpt.read_safetensors(folder / NEGATIVE, f"export {folder}")
    _check_negative(negative, f"export {folder}: {folder / NEGATIVE}")
    users = UserTable.load(folder, count=config["users"]["count"])
    lora = None
    if config.get("unet_lora"):
        lora = (UNetLoRA(**config["unet_lora"]), read_lora(folder, source.variant))
    negative_cond = Conditioning(
        negative["encoder_hidden_states"], negative.get("attention_mask"), negative.get("pooled")
    )
    return ExportParts(ckpt.freeze(conditioner), users, SamplerSettings(**config["sampler"]), source,
                       config.get("provenance", {}), lora, negative_cond)  # fmt: skip
