"""Values that must agree with the data or an earlier stage are not typed: ``icg fit`` fills them in.

The stage-1 model's ``num_users`` is the number of user ids in ``data.root``; stage 3's user widths
(``fusion.user_dim``, ``user_offset.user_dim``) are the stage-1 model's ``embed_dim``, read from ``preference_ckpt``.
A value the config does give is kept, and the check it always had names it when it disagrees.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from icg.cli import ICGLightningCLI, main
from icg.data.schema import count_users
from icg.data.synthetic import generate_platform
from tests.helpers.cli import REPO, TINY

CONFIGS = REPO / "lightning_configs"
OFFSET = "model.init_args.conditioner.init_args.user_offset"


def _one_line(capsys, *words) -> str:
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return next(line for line in err.splitlines() if line.startswith("icg fit: "))


def test_no_shipped_config_types_a_count_or_a_stage1_width():
    for config in sorted(CONFIGS.rglob("*.yaml")):
        text = yaml.safe_dump(yaml.safe_load(config.read_text()))
        assert "user_dim" not in text, config
        model = (yaml.safe_load(config.read_text()).get("model") or {}).get("init_args") or {}
        assert "num_users" not in ((model.get("model") or {}).get("init_args") or {}), config


def test_stage1_user_table_is_sized_by_the_dataset(tmp_path):
    """The issue's case: the tiny config on a 40-user dataset (it used to say "set num_users to at least 40")."""
    root = generate_platform(tmp_path / "data", users=40, items=60, seed=1, image_size=32)
    cli = ICGLightningCLI(["--config", str(TINY / "stage1_preference.yaml"), "--data.root", str(root)], run=False)
    users = pd.read_parquet(root / "interactions.parquet")["user_id"].nunique()
    assert users == 40 and cli.model.model.num_users == 40


def test_a_given_num_users_is_kept(tiny_platform):
    words = ["--config", str(TINY / "stage1_preference.yaml"), "--data.root", str(tiny_platform)]
    cli = ICGLightningCLI([*words, "--model.init_args.model.init_args.num_users", "1000"], run=False)
    assert cli.model.model.num_users == 1000  # room for users added later is the user's choice


def test_count_users_reads_one_column_of_either_table_format(tmp_path):
    rows = {"user_id": ["b", "a", "b", "c", None], "item_id": list("vwxyz"), "click": [1] * 5, "timestamp": [0] * 5}
    pd.DataFrame(rows).to_parquet(tmp_path / "interactions.parquet", index=False)
    assert count_users(tmp_path) == 4  # a null id reads as "", one more user, as in the DataModule
    (tmp_path / "interactions.parquet").unlink()
    pd.DataFrame(rows).to_csv(tmp_path / "interactions.csv", index=False)
    assert count_users(tmp_path) == 4


def test_stage3_user_widths_come_from_the_stage1_checkpoint(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt,
                                                           tmp_path):  # fmt: skip
    offset = tmp_path / "offset.yaml"
    offset.write_text(yaml.safe_dump({"model": {"init_args": {"conditioner": {"init_args": {"user_offset": {
        "class_path": "icg.models.fusion.UserOffset", "init_args": {"num_tokens": 8, "width": 32}}}}}}}))  # fmt: skip
    cli = ICGLightningCLI(
        ["--config", str(TINY / "stage3_alignment.yaml"), "--config", str(offset), "--data.root", str(tiny_platform),
         "--model.init_args.preference_ckpt", str(tiny_stage1_ckpt), "--model.init_args.rewards_ckpt",
         str(tiny_stage2_ckpt)],
        run=False,
    )  # fmt: skip
    stage1 = yaml.safe_load((TINY / "stage1_preference.yaml").read_text())
    embed_dim = stage1["model"]["init_args"]["model"]["init_args"]["embed_dim"]
    assert cli.model.conditioner.fusion.user_dim == embed_dim
    assert cli.model.conditioner.user_offset.user_dim == embed_dim


def test_stage3_without_a_usable_stage1_checkpoint_is_one_line(capsys, tiny_platform, tiny_stage2_ckpt, tmp_path):
    words = ["fit", "--config", TINY / "stage3_alignment.yaml", "--data.root", tiny_platform,
             "--model.init_args.rewards_ckpt", tiny_stage2_ckpt, "--trainer.default_root_dir", tmp_path]  # fmt: skip
    line = _one_line(capsys, *words, "--model.init_args.preference_ckpt", tmp_path / "nope.ckpt")
    assert line.startswith("icg fit: model.init_args.preference_ckpt: checkpoint ") and "nope.ckpt" in line
    line = _one_line(capsys, *words, "--model.init_args.preference_ckpt", tiny_stage2_ckpt)
    assert "model.init_args.preference_ckpt" in line and "'rewards' stage" in line and "'preference'" in line


def test_a_conflicting_stage3_width_is_named(capsys, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    line = _one_line(
        capsys, "fit", "--config", TINY / "stage3_alignment.yaml", "--data.root", tiny_platform,
        "--model.init_args.preference_ckpt", tiny_stage1_ckpt, "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
        "--model.init_args.conditioner.init_args.fusion.init_args.user_dim", "5",
        "--trainer.default_root_dir", tmp_path,
    )  # fmt: skip
    assert line == (
        "icg fit: model.init_args.conditioner.init_args.fusion.init_args.user_dim=5 but the stage-1 model in "
        "model.init_args.preference_ckpt has user embeddings of width 8"
    )


@pytest.mark.parametrize("owner", ["UserFusion", "UserOffset"])
def test_a_width_left_out_outside_the_cli_is_named(owner):
    from icg.errors import ConfigError
    from icg.models.fusion import UserFusion, UserOffset

    with pytest.raises(ConfigError, match=rf"^{owner}\.user_dim: not given"):
        UserFusion(8) if owner == "UserFusion" else UserOffset(num_tokens=2, width=4)
    assert UserFusion(8, fusion_type="none").user_dim is None  # no user path, no width needed
