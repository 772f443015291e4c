"""A user's mistake reaches the terminal as one short message, through the exact console path (``icg.cli.main``):
non-zero exit status, the config key, file or value named, no traceback; ``--debug`` / ``ICG_DEBUG=1`` bring the
traceback back, and a bug always keeps it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from icg.ckpt import CheckpointError
from icg.cli import COMMANDS, main
from icg.errors import ArgumentsError, ConfigError, UserError, find_user_error, shorten_parser_error
from tests.helpers.cli import TINY

STAGE1 = TINY / "stage1_preference.yaml"


def _fails(capsys, *words, status: int = 2) -> str:
    """Run ``icg <words>``: it must exit with ``status``, no traceback, and one ``icg ...:`` line on stderr."""
    assert main([str(w) for w in words]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("icg ")]
    assert len(ours) == 1, err
    return ours[0]


def _fit1(root: Path, out: Path, *extra) -> list:
    return ["fit", "--config", STAGE1, "--data.root", root, "--trainer.default_root_dir", out, *extra]


@pytest.fixture
def platform_copy(tiny_platform, tmp_path) -> Path:
    """A private copy of the tiny platform (tables, meta, covers) a test may break."""
    return Path(shutil.copytree(tiny_platform, tmp_path / "data", ignore=shutil.ignore_patterns("truth")))


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("kind", ["random_bytes", "truncated", "text", "arbitrary_pickle"])
def test_unreadable_ckpt_path_is_named(tiny_platform, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "random_bytes":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        import argparse

        torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)  # weights_only refuses the object
    line = _fails(capsys, *_fit1(tiny_platform, tmp_path / "run", "--ckpt_path", path))
    reason = {"truncated": "truncated or damaged file", "arbitrary_pickle": "it holds a Python object (argparse."}
    assert line.startswith(f"icg fit: --ckpt_path: {path} is not a readable checkpoint ({reason.get(kind, 'not a')}")
    assert "weights_only" not in line  # torch's advice to unpickle anything is not passed on


def test_wrong_stage_and_missing_ckpt_path(tiny_platform, tmp_path, capsys):
    other = tmp_path / "rewards.ckpt"
    torch.save({"icg": {"stage": "rewards"}, "state_dict": {}}, other)
    line = _fails(capsys, *_fit1(tiny_platform, tmp_path / "run", "--ckpt_path", other))
    assert f"--ckpt_path: {other} is a 'rewards' stage checkpoint; it cannot resume the 'preference' stage" in line
    line = _fails(capsys, *_fit1(tiny_platform, tmp_path / "run", "--ckpt_path", tmp_path / "none.ckpt"))
    assert line == f"icg fit: --ckpt_path: checkpoint {tmp_path / 'none.ckpt'} does not exist"


def test_unreadable_stage_checkpoint_in_a_config_key(tiny_platform, tmp_path, capsys):
    bad = tmp_path / "stage1.ckpt"
    bad.write_bytes(b"\x00" * 64)
    words = ["fit", "--config", TINY / "stage2_rewards.yaml", "--data.root", tiny_platform]
    line = _fails(capsys, *words, "--model.init_args.preference_ckpt", bad)
    assert f"model.init_args.preference_ckpt: {bad} is not a readable checkpoint" in line


def test_evaluate_names_its_checkpoint_option(tiny_platform, tmp_path, capsys):
    bad = tmp_path / "s3.ckpt"
    bad.write_text("no")
    words = ["evaluate", "--data_root", tiny_platform, "--stage1_ckpt", bad, "--stage3_ckpt", bad]
    line = _fails(capsys, *words, "--base_model", tmp_path)
    assert line.startswith(f"icg evaluate: stage3_ckpt: {bad} is not a readable checkpoint")
    line = _fails(capsys, "evaluate", "--data_root", tiny_platform, "--stage1_ckpt", bad, "--base_model", tmp_path)
    assert line == "icg evaluate: stage3_ckpt: required, and not given on the command line or in a --config file"


# ------------------------------------------------------------------------------------------------ config and options
def test_nested_config_typo_is_one_line(tiny_platform, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(STAGE1.read_text().replace("hidden_dim: 16", "hiden_dim: 16"))
    line = _fails(capsys, "fit", "--config", config, "--data.root", tiny_platform)
    assert line == (
        "icg fit: model.init_args.model.init_args.hiden_dim: no such option (of icg.models.preference.PreferenceModel)"
    )


def test_debug_shows_the_parser_s_whole_message(tiny_platform, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(STAGE1.read_text().replace("hidden_dim: 16", "hiden_dim: 16"))
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--data.root", str(tiny_platform), "--debug"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Option 'hiden_dim' is not accepted" in err and "Given value" in err and len(err.splitlines()) > 20


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((), "icg fit: data.root: required, and not given on the command line or in a --config file"),
        (
            ("--data.root", "{root}", "--data.batch_size", "abc"),
            "icg fit: data.batch_size: expected int. Got value: abc",
        ),
        (("--data.root", "{root}", "--data.nope", "1"), "icg fit: unrecognized arguments: --data.nope 1"),
        (("--data.root", "{root}", "--data.batch_size", "0"), "icg fit: invalid data.batch_size=0 (must be >= 1)"),
        (
            ("--data.root", "{root}", "--model.init_args.model.init_args.history_type", "bogus"),
            "icg fit: PreferenceModel.history_type must be one of ('none', 'mean'), got 'bogus'",
        ),
        (
            ("--data.root", "{root}", "--model.init_args.model.init_args.num_users", "5"),
            "icg fit: model.init_args.model.init_args.num_users=5, but the dataset at data.root has 30 users: set "
            "num_users to at least 30",
        ),
    ],
    ids=["missing_root", "wrong_type", "unknown_key", "out_of_range", "bad_choice_in_a_nested_class", "num_users"],
)
def test_config_values_are_named(tiny_platform, tmp_path, capsys, extra, expected):
    extra = [str(w).format(root=tiny_platform) for w in extra]
    words = ["fit", "--config", STAGE1, "--trainer.default_root_dir", tmp_path / "run", *extra]
    assert _fails(capsys, *words) == expected


def test_lightning_misconfiguration_is_one_line(tiny_platform, tmp_path, capsys):
    line = _fails(capsys, *_fit1(tiny_platform, tmp_path / "run", "--trainer.devices", "0"))
    assert line.startswith("icg fit: Lightning: `Trainer(devices='0')` value is not a valid input")


def test_invalid_yaml_names_the_file(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("model: [unclosed\n")
    line = _fails(capsys, "fit", "--config", config)
    assert line.startswith(f"icg fit: --config {config}: not valid YAML (") and "line 2" in line


# ------------------------------------------------------------------------------------------------ datasets
def test_missing_dataset_folder(tmp_path, capsys):
    line = _fails(capsys, *_fit1(tmp_path / "nowhere", tmp_path / "run"))
    assert line == f"icg fit: data.root: {tmp_path / 'nowhere'} is not a folder (an icg dataset, docs/data.md)"


def test_header_only_interactions_fail_in_validate_and_fit(platform_copy, tmp_path, capsys):
    (platform_copy / "interactions.parquet").unlink()
    (platform_copy / "interactions.csv").write_text("user_id,item_id,click,timestamp\n")
    expected = f"{platform_copy / 'interactions.csv'}: no data rows (a header only)"
    assert expected in _fails(capsys, "data", "validate", platform_copy)
    assert expected in _fails(capsys, *_fit1(platform_copy, tmp_path / "run"))


def test_nothing_left_after_skipping(platform_copy, tmp_path, capsys):
    shutil.rmtree(platform_copy / "images")
    (platform_copy / "images").mkdir()
    line = _fails(capsys, *_fit1(platform_copy, tmp_path / "run", "--data.on_bad_record", "skip"))
    items = len(pd.read_parquet(platform_copy / "items.parquet"))
    rows = items + len(pd.read_parquet(platform_copy / "interactions.parquet"))
    assert f"nothing left after skipping {rows} bad rows (on_bad_record: skip)" in line
    assert "eval_candidates" not in line
    assert f"listed in {tmp_path / 'run' / 'skip_report.json'}" in line  # the run folder's, never the dataset's
    assert not (platform_copy / "skip_report.json").exists()


def test_explicit_data_with_one_held_out_rating_is_refused_by_stage1(platform_copy, tmp_path, capsys):
    inter = pd.read_parquet(platform_copy / "interactions.parquet")
    inter["click"] = (inter.index % 2).astype("int8")  # real non-clicks: explicit data
    inter.to_parquet(platform_copy / "interactions.parquet", index=False)
    meta = platform_copy / "meta.json"
    meta.write_text(meta.read_text().replace('"implicit": true', '"implicit": false'))
    line = _fails(capsys, *_fit1(platform_copy, tmp_path / "run"))
    assert "val/gauc cannot be computed: none of the 30 val groups" in line and "data.holdout=1" in line


def test_bad_timestamp_is_shown_with_its_row_and_value(platform_copy, tmp_path, capsys):
    inter = pd.read_parquet(platform_copy / "interactions.parquet").astype({"timestamp": str})
    inter.loc[4, "timestamp"] = "1700000000.5"
    inter.to_parquet(platform_copy / "interactions.parquet", index=False)
    assert main(["data", "validate", str(platform_copy)]) == 1
    err = capsys.readouterr().err
    assert "interactions.parquet row 5 (timestamp '1700000000.5'," in err
    assert "A timestamp must be a whole number of seconds" in err


# ------------------------------------------------------------------------------------------------ debug and bugs
def test_icg_debug_raises_the_user_error(tiny_platform, tmp_path, monkeypatch):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("x")
    monkeypatch.setenv("ICG_DEBUG", "1")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        main([str(w) for w in _fit1(tiny_platform, tmp_path / "run", "--ckpt_path", bad)])


def test_a_bug_keeps_its_traceback(monkeypatch):
    from icg import cli

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's doing")

    monkeypatch.setattr(cli, "ICGLightningCLI", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["fit", "--config", str(STAGE1)])


def test_find_user_error_follows_explicit_causes_only():
    user = ConfigError("data.batch_size=0")
    try:
        try:
            raise user
        except ConfigError as err:
            raise ValueError("Does not validate against any of the Union subtypes") from err
    except ValueError as wrapped:
        assert find_user_error(wrapped) is user
    try:
        try:
            raise user
        except ConfigError:
            raise KeyError("a bug while handling it")  # noqa: B904 - implicit context on purpose
    except KeyError as bug:
        assert find_user_error(bug) is None
    assert isinstance(ArgumentsError("x"), UserError) and not isinstance(ArgumentsError("x"), ValueError)


def test_shorten_parser_error_keeps_the_deepest_reason_and_its_key():
    message = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'icg.lit.preference.PreferenceStage':
        Parser key "optimizer":
          Problem with given class_path 'torch.optim.AdamW':
            Parser key "lr":
              Expected a <class 'float'>. Got value: fast
    - Expected a <class 'NoneType'>
  Given value type: <class 'dict'>
  Given value: {'class_path': 'icg.lit.preference.PreferenceStage'}"""
    assert shorten_parser_error(message) == (
        "model.init_args.optimizer.init_args.lr: expected float. Got value: fast (of torch.optim.AdamW)"
    )
    assert shorten_parser_error("unrecognized arguments: --x 1") == "unrecognized arguments: --x 1"


# ------------------------------------------------------------------------------------------------ the command table
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_in_the_table_has_help(name, capsys):
    """``icg <command> --help`` (of a grouped command: of its first subcommand too) prints usage and exits 0."""
    first = {"data": ["validate"], "users": ["fold-in"], "study": ["results"]}
    for words in ([name, "--help"], [name, *first.get(name, []), "--help"]):
        try:
            status = main(words)
        except SystemExit as done:  # jsonargparse's --help exits, as the console script does
            status = done.code or 0
        assert status == 0, words
        assert "usage" in capsys.readouterr().out.lower(), words


def test_every_table_entry_names_a_module_with_run():
    import importlib

    for name, command in COMMANDS.items():
        assert command.module == f"icg.commands.{name}"
        assert callable(importlib.import_module(command.module).run), name


def test_an_unknown_command_is_one_line(capsys):
    assert _fails(capsys, "nosuch") == (
        "icg nosuch: argument subcommand: invalid choice: 'nosuch' (choose from 'fit', 'validate', 'test', 'predict')"
    )


def test_an_unknown_option_of_a_jsonargparse_command_is_one_line(capsys):
    assert _fails(capsys, "explore", "--bogus", "1") == "icg explore: unrecognized arguments: --bogus 1"
    assert _fails(capsys, "export", "--stage3_ckpt", "x", "--out", "y", "--bogus", "1").startswith("icg export: ")


def test_main_sets_up_logging_once_at_the_command_s_level(monkeypatch, capsys):
    import logging

    import icg.cli

    levels = []
    monkeypatch.setattr(icg.cli, "setup_console", levels.append)
    for words in (["data", "--help"], ["study", "--help"], ["users", "--help"], ["--help"]):
        assert main(words) == 0
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert levels == [logging.INFO, logging.INFO, logging.WARNING, logging.INFO, logging.WARNING]
    capsys.readouterr()
