"""The ``icg`` command: Lightning's CLI for the three stages plus the commands of ``icg.commands``.

``icg fit --config lightning_configs/demo/stage1_preference.yaml`` trains a stage; the stage is the ``model``
(``class_path`` one of ``icg.lit.*``), the data is always the one ``ICGDataModule``. Every other first word
(``icg data``, ``icg generate``, ...) is an entry of the one table ``COMMANDS``: the module of ``icg.commands`` that
runs it and the logging level it runs at. ``main(args=None)`` is the console script, so tests drive exactly the path a
user runs; it sets up logging once (``icg.console.setup_console``) for whichever command runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from icg.console import setup_console
from icg.data.datamodule import ICGDataModule
from icg.errors import (
    DEBUG_ENV,
    DEBUG_FLAG,
    ArgumentsError,
    ConfigError,
    ShortParserErrors,
    debug_requested,
    find_user_error,
)

LIGHTNING_CKPT_KEYS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself
LIGHTNING_LOG_LEVEL = logging.INFO  # fit, validate, test, predict
NUM_USERS_KEY = "model.init_args.model.init_args.num_users"  # the stage-1 PreferenceModel's user table
PREFERENCE_CKPT_KEY = "init_args.preference_ckpt"
# widths of stage 3 that must equal the stage-1 model's embed_dim (keys under `model.`)
STAGE1_WIDTH_KEYS = (
    "init_args.conditioner.init_args.fusion.init_args.user_dim",
    "init_args.conditioner.init_args.user_offset.init_args.user_dim",
)

OVERVIEW = """usage: icg {fit,validate,test,predict} [--config YAML ...] [options]
       icg data {synth,validate,stats,convert} ...
       icg evaluate --data_root DIR --stage1_ckpt CKPT --stage3_ckpt CKPT --base_model DIR [...]
       icg export --stage3_ckpt CKPT --out DIR [--base_model DIR] [--mllm DIR]
       icg generate --export DIR --pairs FILE --out DIR [--data_root DIR] [--devices N] [...]
       icg users fold-in --export DIR --data_root DIR --out DIR [--users ID,ID,...]
       icg users segment --export DIR --k K --out DIR [--seed S]
       icg study {serve,results,simulate} ...
       icg explore --export DIR [--data_root DIR] [--rewards_ckpt CKPT] [--base_model DIR] [--port N] [--device D]
       icg serve --pool DIR [--data_root DIR] [--export DIR] [--host H] [--port N]

Stages (Lightning CLI; --print_config, repeated --config stacking, --help on each):
  fit        train a stage: preference (1), rewards (2), alignment (3)
  validate   run a stage's validation loop
  test       run a stage's test loop
  predict    generate covers (alignment stage)

Data:
  data synth      write the synthetic platform (the embedded default's data)
  data validate   check a dataset folder; non-zero exit and one report of every problem
  data stats      users, items, interactions, clicks, per-split counts
  data convert    import PixelRec or MovieLens from their published layouts

Evaluation:
  evaluate        score held-out (user, item) pairs on the paper's axes against the baselines (docs/evaluation.md)
  study           blind pairwise study of covers: serve, simulate raters, win rates + Bradley-Terry (docs/study.md)
  explore         interactive viewer: title-only, no-user and ICG covers side by side for any user (docs/explore.md)

Generation:
  export          a stage-3 checkpoint -> one folder that CoverGenerator.from_pretrained loads (docs/generation.md)
  generate        a cover per (user, item) of a pairs file: batched, resumable, DDP/SLURM, manifest.jsonl
  users fold-in   embeddings for users with clicks but none from stage 1, added to an export (no retraining)
  users segment   the export's users clustered into K segments: a new export of K centroid users (generate --segments)
  serve           the cover service: GET /cover?user=U&item=I answers from a pool of covers (docs/serving.md)

A mistake in a config, option, file or dataset is reported in one message and exits with status 2; add --debug
(or set ICG_DEBUG=1) for the full traceback and the parser's complete message.
"""


@dataclass(frozen=True)
class Command:
    """One ``icg`` command that is not Lightning's: the module that runs it and how it logs.

    Args:
        module: the module of ``icg.commands`` whose ``run(words) -> int`` runs the command; imported only when that
            command runs (what it needs, diffusers or the web stack, is slow to import).
        level: the lowest log level shown while it runs (``icg.console.setup_console``).
        grouped: its second word is a subcommand (``icg data validate``), named with the first in its error lines.
    """

    module: str
    level: int
    grouped: bool = False

    def run(self, words: list[str]) -> int:
        """Run the command on the words after its name; returns the exit status."""
        return importlib.import_module(self.module).run(words)


# The one table of the commands beside Lightning's. All but two are jsonargparse's CLI over one documented function;
# data and study stay on argparse so that what users type keeps working: data's flags have dashes (--image-size,
# --clicks-per-user MIN MAX) and value-less switches (--overwrite, --json), and study's simulate takes RUN as an
# optional positional beside required options (--data_root, --db), neither of which jsonargparse's CLI can spell.
COMMANDS = {
    "data": Command("icg.commands.data", logging.INFO, grouped=True),  # argparse (see above)
    "evaluate": Command("icg.commands.evaluate", logging.INFO),
    "export": Command("icg.commands.export", logging.WARNING),
    "generate": Command("icg.commands.generate", logging.WARNING),  # progress is Lightning's bar
    "users": Command("icg.commands.users", logging.WARNING, grouped=True),
    "study": Command("icg.commands.study", logging.INFO, grouped=True),  # argparse (see above)
    "explore": Command("icg.commands.explore", logging.INFO),
    "serve": Command("icg.commands.serve", logging.INFO),
}


class ICGArgumentParser(ShortParserErrors, LightningArgumentParser):
    """Lightning's parser whose errors reach ``main`` as one short line instead of ~70 (``--debug``: all of them)."""


class ICGLightningCLI(LightningCLI):
    """Lightning's CLI with the stage chosen as ``model`` (subclass mode) and the one shared DataModule."""

    def __init__(self, args: list[str] | None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            subclass_mode_model=True,
            parser_class=ICGArgumentParser,
            datamodule_class=ICGDataModule,
            auto_configure_optimizers=False,  # stages apply their injected OptimizerCallable themselves
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: start over in checkpoint folders that hold an earlier run's checkpoints (deleted first); "
            "without it such a fit is refused, so later stages never chain a stale last.ckpt",
        )

    def parse_arguments(self, parser, args) -> None:
        """Parse, then refuse a ``class_path`` outside the allow-list (``icg.ckpt.resolve_class``) before the
        ``--ckpt_path`` check or anything else builds or loads a thing; the config key and the class are named.

        ``_check_config_files`` has already refused such a class in a ``--config`` file, naming the file, before the
        parser imported anything; this catches the rest (command-line values, files nested in a config).
        """
        super().parse_arguments(parser, args)
        from icg.ckpt import check_class_paths

        config = self.config.as_dict()
        subcommand = config.get("subcommand")
        check_class_paths(config.get(subcommand, config) if subcommand else config, config=True)

    def before_instantiate_classes(self) -> None:
        """Refuse a trainer this machine or SLURM job cannot run (``icg.lit.preflight``), then fill in the values
        that must agree with the data or an earlier stage when the config leaves them out.

        Not ``link_arguments(..., apply_on="instantiate")``: Lightning 2.6's instantiator fails on a link whose
        target exists in one stage's model only (``Expected key model.init_args.num_users to be in data`` for stages
        2 and 3), so the values are filled in here, from the same sources, before anything is built.
        """
        from icg.lit.preflight import check_trainer_fits

        check_trainer_fits(self._get(self.config, "trainer"))  # first: a run that cannot fit loads nothing
        self._fill_num_users()
        self._fill_stage1_widths()

    def _fill_num_users(self) -> None:
        """The stage-1 model's ``num_users``: the user ids of ``data.root`` unless the config gives a value (which
        setup then checks against the dataset, naming the key)."""
        model = self._get(self.config, "model")
        key = NUM_USERS_KEY.removeprefix("model.")
        if key not in model or model[key] is not None:
            return
        from icg.data.schema import count_users

        root = self._get(self.config, "data").get("root")
        if root is None or not Path(root).is_dir():
            raise ConfigError(f"data.root: {root} is not a folder (an icg dataset, docs/data.md)")
        model[key] = max(count_users(root), 1)  # an empty table is setup()'s to report, with its file named

    def _fill_stage1_widths(self) -> None:
        """Stage 3's user widths = the stage-1 model's ``embed_dim``, read from ``preference_ckpt`` when not given.

        A width the config gives is kept: stage 3's setup compares it with the checkpoint and names both on a mismatch.
        """
        model = self._get(self.config, "model")
        missing = [key for key in STAGE1_WIDTH_KEYS if key in model and model[key] is None]
        if not missing:
            return
        from icg import ckpt

        path = model.get("init_args.preference_ckpt")
        if path is None:
            raise ConfigError(
                f"model.{PREFERENCE_CKPT_KEY}: required (a stage-1 checkpoint); stage 3 also takes model.{missing[0]} "
                "from it"
            )
        spec = ckpt.stage_spec(path, "preference", "model", f"model.{PREFERENCE_CKPT_KEY}")
        embed_dim = spec["init_args"].get("embed_dim")
        if not isinstance(embed_dim, int):
            raise ckpt.CheckpointError(f"model.{PREFERENCE_CKPT_KEY}: {path} records no stage-1 embed_dim")
        for key in missing:
            model[key] = embed_dim

    def before_fit(self) -> None:
        from icg.lit.run_folders import prepare_run_folders

        prepare_run_folders(self.trainer, self.config.fit.get("ckpt_path"), bool(self.config.fit.get("overwrite")))

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        """Every Trainer writes checkpoints atomically unless its config brings its own CheckpointIO."""
        from lightning.pytorch.plugins.io import CheckpointIO

        from icg.lit.checkpoint_io import AtomicCheckpointIO

        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path`` resumes the same stage only: refuse another stage's checkpoint before Lightning reads it."""
        from icg.ckpt import ICG_KEY, CheckpointError, a_stage_checkpoint, read_checkpoint, resolve_class

        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        local = ckpt_path and "://" not in str(ckpt_path) and not str(ckpt_path).startswith("registry:")
        if local and str(ckpt_path) not in LIGHTNING_CKPT_KEYS:
            checkpoint = read_checkpoint(ckpt_path, "--ckpt_path")
            block = checkpoint.get(ICG_KEY) if isinstance(checkpoint, dict) else None
            stage = block.get("stage") if isinstance(block, dict) else None
            class_path = self.config[subcommand].model.class_path
            module = sys.modules[resolve_class(class_path, "model", config=True).__module__]
            expected = getattr(module, "STAGE", None)
            if expected is not None and stage != expected:
                written_by = a_stage_checkpoint(stage) if stage else "not an icg stage checkpoint (no 'icg' block)"
                raise CheckpointError(
                    f"--ckpt_path: {ckpt_path} is {written_by}; it cannot resume the {expected!r} "
                    f"stage ({class_path}). Name an earlier stage's checkpoint in its config key instead "
                    "(preference_ckpt, rewards_ckpt)"
                )
        super()._parse_ckpt_path()


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``icg`` console script.

    A :class:`icg.errors.UserError` (or an error raised from one, as jsonargparse does when a constructor refuses a
    config value) and Lightning's ``MisconfigurationException`` (e.g. ``trainer.accelerator: gpu`` on a machine
    without one) are printed as one message on stderr with exit status 2; any other exception is a bug and keeps its
    traceback. ``--debug`` anywhere on the command line (or ``ICG_DEBUG=1``) shows the traceback of user errors too.

    Args:
        args: command-line words without the program name; ``None`` reads ``sys.argv``.
    """
    words = list(sys.argv[1:] if args is None else args)
    debug = debug_requested(words)
    words = [word for word in words if word != DEBUG_FLAG]
    if args is None and DEBUG_FLAG in sys.argv:
        # Lightning reads sys.argv itself (and DDP relaunches it); the flag travels as ICG_DEBUG instead
        sys.argv[:] = [word for word in sys.argv if word != DEBUG_FLAG]
    entry = COMMANDS.get(words[0]) if words else None
    command = " ".join(words[:2]) if entry and entry.grouped else (words[0] if words else "")  # "icg data stats: .."
    setup_console(entry.level if entry else LIGHTNING_LOG_LEVEL)
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the parser reads it (ICGArgumentParser.error)
    try:
        return _run(words, from_argv=args is None)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None and isinstance(err, MisconfigurationException):  # Lightning's word for a bad setting
            user_error = f"Lightning: {err}"
        if user_error is None or debug:
            raise
        sys.stderr.write(f"icg {command}: {user_error}\n")
        return 2
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous


def _run(words: list[str], from_argv: bool) -> int:
    if words and words[0] in COMMANDS:
        return COMMANDS[words[0]].run(words[1:])
    if not words or words[0] in ("-h", "--help"):
        sys.stdout.write(OVERVIEW)
        return 0
    _check_config_files(words)
    ICGLightningCLI(None if from_argv else words)  # None: Lightning reads sys.argv itself
    return 0


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _check_config_files(words: list[str]) -> None:
    """Name a ``--config`` file that is not valid YAML (jsonargparse's message names neither file nor key), and
    refuse a ``class_path`` outside the allow-list (``icg.ckpt.resolve_class``) in it, or in a YAML/JSON file it or
    the command line names, before the parser imports anything: files are data."""
    import yaml

    from icg.ckpt import check_class_paths

    for index, word in enumerate(words):
        path = word.split("=", 1)[1] if word.startswith("--config=") else None
        if word in ("--config", "-c") and index + 1 < len(words):
            path = words[index + 1]
        if path is None or not Path(path).is_file():
            continue
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ArgumentsError(f"--config {path}: not valid YAML ({getattr(err, 'problem', err)}{where})") from err
    seen: set[Path] = set()
    pending = [Path(word.rpartition("=")[2]) for word in words if word.rpartition("=")[2].endswith(CONFIG_SUFFIXES)]
    while pending:
        path = pending.pop()
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            document = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue  # not a config file after all (a --config one was checked above); the parser reports it
        check_class_paths(document, origin=str(path), config=True)
        pending += [
            folder / value
            for value in _strings(document)
            if value.endswith(CONFIG_SUFFIXES)
            for folder in (Path(), path.parent)
        ]


def _strings(value) -> list[str]:
    """Every string in a parsed YAML document (the files it may name)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for child in value.values() for s in _strings(child)]
    if isinstance(value, list):
        return [s for child in value for s in _strings(child)]
    return []


if __name__ == "__main__":
    raise SystemExit(main())
