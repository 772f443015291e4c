"""The ``icg`` command: Lightning's CLI for the three stages plus ``icg data ...`` dataset commands.

``icg fit --config lightning_configs/demo/stage1_preference.yaml`` trains a stage; the stage is the ``model``
(``class_path`` one of ``icg.lit.*``), the data is always the one ``ICGDataModule``. ``main(args=None)`` is the
console script, so tests drive exactly the path a user runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from icg.data.datamodule import ICGDataModule

DATA_COMMAND = "data"
EVALUATE_COMMAND = "evaluate"
EXPORT_COMMAND = "export"
GENERATE_COMMAND = "generate"
USERS_COMMAND = "users"
STUDY_COMMAND = "study"

OVERVIEW = """usage: icg {fit,validate,test,predict} [--config YAML ...] [options]
       icg data {synth,validate,stats,convert} ...
       icg evaluate --data_root DIR --stage1_ckpt CKPT --stage3_ckpt CKPT --base_model DIR [...]
       icg export --stage3_ckpt CKPT --out DIR [--base_model DIR] [--mllm DIR]
       icg generate --export DIR --pairs FILE --out DIR [--data_root DIR] [--devices N] [...]
       icg users fold-in --export DIR --data_root DIR [--users ...]
       icg study {serve,results,simulate} ...

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

Generation:
  export          a stage-3 checkpoint -> one folder that CoverGenerator.from_pretrained loads (docs/generation.md)
  generate        a cover per (user, item) of a pairs file: batched, resumable, DDP/SLURM, manifest.jsonl
  users fold-in   embeddings for users with clicks but none from stage 1, added to an export (no retraining)
"""


class ICGLightningCLI(LightningCLI):
    """Lightning's CLI with the stage chosen as ``model`` (subclass mode) and the one shared DataModule."""

    def __init__(self, args: list[str] | None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            subclass_mode_model=True,
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
        import importlib

        import torch

        from icg.ckpt import ICG_KEY, CheckpointError

        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            stage = torch.load(ckpt_path, weights_only=True, map_location="cpu").get(ICG_KEY, {}).get("stage")
            class_path = self.config[subcommand].model.class_path
            module = importlib.import_module(class_path.rpartition(".")[0])
            expected = getattr(module, "STAGE", None)
            if expected is not None and stage != expected:
                raise CheckpointError(
                    f"--ckpt_path: {ckpt_path} is a {stage!r} stage checkpoint; it cannot resume the {expected!r} "
                    f"stage ({class_path}). Name an earlier stage's checkpoint in its config key instead "
                    "(preference_ckpt, rewards_ckpt)"
                )
        super()._parse_ckpt_path()


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``icg`` console script.

    Args:
        args: command-line words without the program name; ``None`` reads ``sys.argv``.
    """
    words = list(sys.argv[1:] if args is None else args)
    if words and words[0] == DATA_COMMAND:
        from icg.data.commands import run_data_command

        return run_data_command(words[1:])
    if words and words[0] == EVALUATE_COMMAND:
        from icg.evaluation.run import main as run_evaluation

        return run_evaluation(words[1:])
    if words and words[0] == EXPORT_COMMAND:
        from icg.generation.commands import run_export

        return run_export(words[1:])
    if words and words[0] == GENERATE_COMMAND:
        from icg.generation.commands import run_generate

        return run_generate(words[1:])
    if words and words[0] == USERS_COMMAND:
        from icg.generation.commands import run_users

        return run_users(words[1:])
    if words and words[0] == STUDY_COMMAND:
        from icg.study.commands import run_study_command

        return run_study_command(words[1:])
    if not words or words[0] in ("-h", "--help"):
        sys.stdout.write(OVERVIEW)
        return 0
    ICGLightningCLI(None if args is None else words)  # None: Lightning reads sys.argv itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
