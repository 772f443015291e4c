"""Every shipped YAML is a test case: it parses through the real CLI, and real-checkpoint configs fail early on a
missing file with a message that names the config key."""

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

CONFIGS = sorted((REPO / "lightning_configs").glob("*/*.yaml"))
FRAGMENTS = (
    "real/stage3_alignment_sdxl",
    "real/stage3_alignment_flux",
    "demo/stage3_no_user",
)  # stacked after a stage config, tested so
STAGE_CONFIGS = [
    p for p in CONFIGS if p.parent.name in ("tiny", "demo", "real") and f"{p.parent.name}/{p.stem}" not in FRAGMENTS
]


def print_config(*configs: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        run_cli("fit", *[w for c in configs for w in ("--config", c)], "--print_config")
    assert done.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_configs_are_found():
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
    for tier in ("tiny", "demo", "real"):
        for stage in ("stage1_preference", "stage2_rewards", "stage3_alignment"):
            assert f"{tier}/{stage}" in names


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stage_config_parses(config):
    parsed = print_config(config)
    assert parsed["model"]["class_path"].startswith("icg.lit.")


def test_sdxl_variant_stacks_on_the_real_stage3():
    parsed = print_config(REPO / "lightning_configs/real/stage3_alignment.yaml",
                          REPO / "lightning_configs/real/stage3_alignment_sdxl.yaml")  # fmt: skip
    conditioner = parsed["model"]["init_args"]["conditioner"]["init_args"]
    adapter = conditioner["adapter"]["init_args"]
    # The title first, through SDXL's own two text encoders, which also give the pooled vector.
    assert (adapter["cross_attention_dim"], adapter["pooled_dim"]) == (2048, None)
    assert conditioner["title_prompt"]["init_args"]["path"] == "weights/stable-diffusion-xl-base-1.0"
    assert parsed["model"]["init_args"]["diffusion"]["variant"] == "sdxl"


def test_flux_variant_stacks_on_the_real_stage3():
    parsed = print_config(REPO / "lightning_configs/real/stage3_alignment.yaml",
                          REPO / "lightning_configs/real/stage3_alignment_flux.yaml")  # fmt: skip
    init = parsed["model"]["init_args"]
    conditioner = init["conditioner"]["init_args"]
    assert (
        conditioner["adapter"]["init_args"]["cross_attention_dim"],
        conditioner["adapter"]["init_args"]["pooled_dim"],
    ) == (4096, None)
    title = conditioner["title_prompt"]["init_args"]
    assert (title["path"], title["max_length"]) == ("weights/FLUX.1-dev", 128)
    assert conditioner["user_offset"]["init_args"]["width"] == 4096
    assert (init["diffusion"]["variant"], init["diffusion"]["guidance"], init["num_steps"]) == ("flux", 3.5, 28)


def test_unet_lora_is_a_config_block():
    parsed = print_config(REPO / "lightning_configs/real/stage3_alignment.yaml")
    assert parsed["model"]["init_args"]["unet_lora"] is None  # off by default


def test_real_stage3_fails_early_naming_the_missing_mllm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no weights/ here
    with pytest.raises(Exception, match="mllm_path") as err:
        run_cli("fit", "--config", REPO / "lightning_configs/real/stage3_alignment.yaml", "--data.root", tmp_path,
                "--model.init_args.preference_ckpt", "x.ckpt", "--model.init_args.rewards_ckpt", "y.ckpt")  # fmt: skip
    assert "Qwen2-VL-2B-Instruct" in str(err.value)


@pytest.mark.parametrize("tier", ["tiny", "demo", "real"])
def test_stage3_user_width_matches_its_stage1(tier):
    """Stages chain by checkpoint, so their widths must agree in the shipped configs (stage 3 checks it at setup)."""
    stage1 = yaml.safe_load((REPO / f"lightning_configs/{tier}/stage1_preference.yaml").read_text())
    stage3 = yaml.safe_load((REPO / f"lightning_configs/{tier}/stage3_alignment.yaml").read_text())
    embed_dim = stage1["model"]["init_args"]["model"]["init_args"]["embed_dim"]
    conditioner = stage3["model"]["init_args"]["conditioner"]["init_args"]
    assert conditioner["fusion"]["init_args"]["user_dim"] == embed_dim
    if conditioner.get("user_offset"):
        assert conditioner["user_offset"]["init_args"]["user_dim"] == embed_dim


def test_demo_stages_share_one_split():
    """Every demo stage, the stage-1 table and the evaluation hold out the same clicks per user."""
    from icg.demo import HOLDOUT

    for stage in ("stage1_preference", "stage2_rewards", "stage3_alignment"):
        config = yaml.safe_load((REPO / f"lightning_configs/demo/{stage}.yaml").read_text())
        assert config["data"].get("holdout", 1) == HOLDOUT, stage


def test_demo_ablation_fragment_drops_every_user_path():
    parsed = print_config(REPO / "lightning_configs/demo/stage3_alignment.yaml",
                          REPO / "lightning_configs/demo/stage3_no_user.yaml")  # fmt: skip
    conditioner = parsed["model"]["init_args"]["conditioner"]["init_args"]
    assert conditioner["fusion"]["init_args"]["fusion_type"] == "none" and conditioner["user_offset"] is None
    assert parsed["trainer"]["default_root_dir"] == "runs/demo/stage3_no_user"
