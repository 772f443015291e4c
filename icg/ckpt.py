"""How stages hand weights to each other: tagged checkpoints, rebuildable module specs, sub-state-dicts, freezing.

Stages chain through explicit checkpoint paths given as init arguments (never ``--ckpt_path``, which only resumes
the same stage; Lightning issues #20310, #20801). Every stage's LightningModule writes, in ``on_save_checkpoint``,
an ``icg`` block::

    checkpoint["icg"] = {"stage": "preference", "version": 1, "specs": {"model": {"class_path": ..., "init_args": ...}},
                         ...stage-specific plain data (user ids, reward weights, statistics)...}

so that a later stage can rebuild the plain ``nn.Module`` it needs from the spec and load just its weights, and a
checkpoint from the wrong stage is refused with a message naming both stages. Everything in the block is plain data
(str, int, float, list, dict), so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icg.errors import ClassPathError, UserError

ICG_KEY = "icg"
ICG_CKPT_VERSION = 1
STAGES = ("preference", "rewards", "alignment", "base_model")


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable or from the wrong stage; the message says which and why."""


def _load_failure(err: Exception) -> str:
    """Why ``torch.load`` failed, in the user's terms (``--debug`` shows torch's own message and its advice)."""
    text = str(err)
    if (isinstance(err, OSError) and err.errno == errno.EINVAL) or "PytorchStreamReader" in text:
        return "truncated or damaged file"  # torch's zip reader on a cut-short file
    if match := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return f"it holds a Python object ({match.group(1)}), not only tensors and plain containers"
    return "not a torch checkpoint"


def a_stage_checkpoint(stage: str) -> str:
    """``"an 'alignment' stage checkpoint"``, ``"a 'rewards' stage checkpoint"``: for messages."""
    return f"{'an' if stage[:1] in tuple('aeiou') else 'a'} {stage!r} stage checkpoint"


def read_checkpoint(path: str | Path, config_key: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` of a file the user named; any failure names the key and the file.

    A truncated download, a text file or a pickle of arbitrary objects all give the same message: the file is not a
    readable checkpoint (torch's own advice to set ``weights_only=False`` is left out on purpose).

    Args:
        path: the checkpoint file.
        config_key: the config key or option that named it (``--ckpt_path``, ``model.init_args.preference_ckpt``).
        mmap: map the tensors from the file instead of reading them (to look at the ``icg`` block of a large
            checkpoint cheaply).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{config_key}: checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn about its protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - every unpickling/zip/IO failure is the same user-facing problem
        raise CheckpointError(
            f"{config_key}: {path} is not a readable checkpoint ({_load_failure(err)}); name a .ckpt file that an "
            "icg stage wrote"
        ) from err


def read_safetensors(path: str | Path, config_key: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` of a file the user named; a missing, truncated or foreign file names both.

    Args:
        path: the ``.safetensors`` file.
        config_key: the config key, option or folder that named it, quoted in the message.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{config_key}: {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{config_key}: {path} is not a readable safetensors file (truncated or damaged: {err}); write it again"
        ) from err


def init_spec(obj: Any, local_vars: dict[str, Any]) -> dict[str, Any]:
    """The ``{"class_path", "init_args"}`` spec that rebuilds ``obj``; call as ``init_spec(self, locals())``.

    Only the constructor's own parameters are kept. Nested modules that carry a ``spec`` are stored as their spec,
    so a whole tree rebuilds from plain data.
    """
    params = inspect.signature(type(obj).__init__).parameters
    init_args = {}
    for name in params:
        if name == "self" or name not in local_vars:
            continue
        value = local_vars[name]
        init_args[name] = value.spec if hasattr(value, "spec") and isinstance(value, nn.Module) else _plain(value)
    return {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "init_args": init_args}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ files are data
# A class path read from a checkpoint, an export or a config is data: it may name only the classes below, and one
# outside the allowed packages is refused before anything is imported (importing a module runs its code).
ICG_PACKAGE = "icg"
# what an icg class named in a checkpoint or export spec must be (every model, reward, encoder and stage)
SPEC_BASES = ("torch.nn.Module",)
# what an icg class named in a config may be: those, or the Lightning parts a stage's config plugs in
CONFIG_BASES = (
    "torch.nn.Module",
    "lightning.pytorch.callbacks.Callback",
    "lightning.pytorch.LightningDataModule",
    "lightning.fabric.plugins.CheckpointIO",
    "lightning.fabric.plugins.environments.ClusterEnvironment",
)
# library classes a config may name (never a checkpoint or export): class-path prefix -> the bases they must subclass
LIBRARY_CLASSES = {
    "torch.optim.": (
        "torch.optim.Optimizer",
        "torch.optim.lr_scheduler.LRScheduler",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
    ),
    "lightning.pytorch.callbacks.": ("lightning.pytorch.callbacks.Callback",),
    "lightning.pytorch.loggers.": ("lightning.pytorch.loggers.Logger",),
    "lightning.pytorch.strategies.": ("lightning.pytorch.strategies.Strategy",),
    "lightning.pytorch.profilers.": ("lightning.pytorch.profilers.Profiler",),
    "lightning.pytorch.plugins.": (
        "lightning.fabric.plugins.environments.ClusterEnvironment",
        "lightning.fabric.plugins.CheckpointIO",
        "lightning.pytorch.plugins.precision.Precision",
        "lightning.pytorch.plugins.layer_sync.LayerSync",
    ),
    "lightning.fabric.plugins.environments.": ("lightning.fabric.plugins.environments.ClusterEnvironment",),
}
FILES_ARE_DATA_DOC = "docs/architecture.md, 'Files are data'"
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _named(path: str) -> type:
    """One of the base classes above (constants of this module, never a name read from a file)."""
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _join(key: str, child: str) -> str:
    return f"{key}.{child}" if key and not child.startswith("[") else f"{key}{child}"


def resolve_class(class_path: Any, key: str = "", origin: str = "", config: bool = False) -> type:
    """The class ``class_path`` names, if a file may name it; else a :class:`ClassPathError` naming file and key.

    Allowed: a class defined in an ``icg`` module that subclasses ``SPEC_BASES`` (``CONFIG_BASES`` in a config)
    and, in a config only, a class of ``LIBRARY_CLASSES`` (torch optimizers and schedulers, Lightning callbacks,
    loggers, strategies, profilers, plugins). A path outside those packages is refused without being imported; an
    ``icg`` attribute that is not such a class (a function, an imported ``subprocess.Popen``) is refused after.

    Args:
        class_path: the value read from the file.
        key: where it was read, as a dotted key (``conditioner.init_args.fusion``).
        origin: the file (or option) it was read from.
        config: a training config (library classes allowed) rather than a checkpoint or export spec.
    """
    where = ": ".join(part for part in (origin, key) if part)
    where = f"{where}: " if where else ""
    allowed = "icg's own model classes" + (" and the torch/Lightning classes a config uses" if config else "")

    def refuse(why: str) -> ClassPathError:
        return ClassPathError(f"{where}class_path {class_path!r:.200} is refused: {why} (a file may name only "
                              f"{allowed}; see {FILES_ARE_DATA_DOC})")  # fmt: skip

    if not isinstance(class_path, str) or not _DOTTED_NAME.match(class_path):
        raise refuse("not a dotted class name")
    library = next((p for p in LIBRARY_CLASSES if class_path.startswith(p)), None) if config else None
    if library is None and not class_path.startswith(f"{ICG_PACKAGE}."):
        raise refuse("outside the allowed packages")
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ClassPathError(f"{where}cannot import {class_path!r}: {err}") from err
    home = library.partition(".")[0] if library else ICG_PACKAGE
    base_names = LIBRARY_CLASSES[library] if library else CONFIG_BASES if config else SPEC_BASES
    bases = tuple(_named(b) for b in base_names)
    if not isinstance(cls, type) or not (cls.__module__ == home or cls.__module__.startswith(f"{home}.")):
        raise refuse(f"not a class defined in the {home} package")
    if not issubclass(cls, bases):
        raise refuse(f"not a subclass of {' or '.join(base_names)}")
    return cls


def check_class_paths(value: Any, key: str = "", origin: str = "", config: bool = False) -> None:
    """Every ``class_path`` anywhere in ``value`` (nested dicts and lists) must pass :func:`resolve_class`."""
    if isinstance(value, dict):
        if "class_path" in value:
            resolve_class(value["class_path"], key, origin, config)
        for name, child in value.items():
            if isinstance(child, (dict, list)):
                check_class_paths(child, _join(key, str(name)), origin, config)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            check_class_paths(child, _join(key, f"[{index}]"), origin, config)


def instantiate(spec: dict[str, Any], key: str = "", origin: str = "") -> Any:
    """Build an object from a ``{"class_path", "init_args"}`` spec, nested specs first.

    Every class path in the spec is checked (:func:`resolve_class`) before anything is built.

    Args:
        spec: the spec, as read from a checkpoint, an export or ``spec.json``.
        key: where the spec sits in that file (``icg.specs.conditioner``), quoted in errors.
        origin: the file, quoted in errors.
    """
    if not isinstance(spec, dict) or "class_path" not in spec:
        where = ": ".join(part for part in (origin, key) if part)
        raise CheckpointError(f"{where + ': ' if where else ''}not a module spec (needs 'class_path'): {spec!r:.200}")
    check_class_paths(spec, key, origin)
    return _build(spec, key, origin)


def _build(spec: dict[str, Any], key: str, origin: str) -> Any:
    cls = resolve_class(spec["class_path"], key, origin)
    init_args = spec.get("init_args", {})
    if not isinstance(init_args, dict):
        raise CheckpointError(f"{': '.join(p for p in (origin, key) if p)}: init_args is not a mapping")
    kwargs = {
        k: _build(v, _join(key, f"init_args.{k}"), origin) if isinstance(v, dict) and "class_path" in v else v
        for k, v in init_args.items()
    }
    return cls(**kwargs)


def load_stage_checkpoint(path: str | Path, stage: str, config_key: str, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by ``stage`` and return the whole dict (``state_dict`` and the ``icg`` block).

    Args:
        path: the checkpoint file.
        stage: the stage that must have written it (one of ``STAGES``).
        config_key: the config key that named ``path``, quoted in every error.
        mmap: map the tensors from the file instead of reading them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{config_key}: checkpoint {path} does not exist (expected a {stage!r} stage .ckpt)")
    checkpoint = read_checkpoint(path, config_key, mmap=mmap)
    block = checkpoint.get(ICG_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(block, dict) or "stage" not in block:
        raise CheckpointError(f"{config_key}: {path} is not an icg stage checkpoint (no '{ICG_KEY}' block)")
    if block["stage"] != stage:
        raise CheckpointError(
            f"{config_key}: {path} was written by the {block['stage']!r} stage, but {a_stage_checkpoint(stage)} is "
            "needed here"
        )
    # A stage tag is only a string: a checkpoint of another stage (or none) with the tag edited must not get further.
    # Each stage writes its module's spec into the block and (but base_model) its weights under a prefix.
    contents = {"preference": ("model", "model."), "rewards": ("bundle", "bundle."),
                "alignment": ("conditioner", "conditioner."), "base_model": ("title_encoder", None)}  # fmt: skip
    spec_name, prefix = contents.get(stage, (None, None))
    state, specs = checkpoint.get("state_dict"), block.get("specs")
    forged = f"{config_key}: {path} is tagged {a_stage_checkpoint(stage)} but"
    if not isinstance(state, dict) or (prefix is not None and not any(str(k).startswith(prefix) for k in state)):
        raise CheckpointError(f"{forged} holds no '{prefix}*' weights, which that stage writes (an edited file?)")
    if spec_name is not None and not (isinstance(specs, dict) and isinstance(specs.get(spec_name), dict)):
        raise CheckpointError(f"{forged} has no '{spec_name}' module spec, which that stage writes (an edited file?)")
    return checkpoint


def stage_spec(path: str | Path, stage: str, spec_name: str, config_key: str) -> dict[str, Any]:
    """The ``{"class_path", "init_args"}`` spec of module ``spec_name`` in a ``stage`` checkpoint; weights stay on disk.

    What a later stage's config reads from an earlier stage's checkpoint (``icg fit`` takes stage 3's user widths from
    the stage-1 model's ``embed_dim`` this way) costs a memory map, not a load of the weights.
    """
    checkpoint = load_stage_checkpoint(path, stage, config_key, mmap=True)
    spec = checkpoint[ICG_KEY].get("specs", {}).get(spec_name)
    if not isinstance(spec, dict) or not isinstance(spec.get("init_args"), dict):
        raise CheckpointError(f"{config_key}: {path} has no '{spec_name}' module spec")
    return spec


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed (e.g. ``model.`` out of a LightningModule's dict)."""
    prefix = prefix.rstrip(".") + "."
    sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointError(f"no weights under '{prefix}' in the checkpoint")
    return sub


def load_module(checkpoint: dict[str, Any], spec_name: str, prefix: str) -> nn.Module:
    """Rebuild ``checkpoint['icg']['specs'][spec_name]`` and load its weights (strict) from ``prefix``."""
    specs = checkpoint[ICG_KEY].get("specs", {})
    if spec_name not in specs:
        raise CheckpointError(f"checkpoint has no '{spec_name}' module spec (has {sorted(specs)})")
    module = instantiate(specs[spec_name], key=f"{ICG_KEY}.specs.{spec_name}")
    module.load_state_dict(sub_state_dict(checkpoint["state_dict"], prefix), strict=True)
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Frozen and in eval mode: no parameter takes gradients, dropout and norms behave as at inference."""
    module.requires_grad_(False)
    return module.eval()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder and rename, so a crash mid-write keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
