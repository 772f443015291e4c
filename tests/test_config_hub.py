"""Every shipped YAML is a test case: each one is built through the CLI (``ICGLightningCLI(..., run=False)``).

A stage config builds its model, DataModule and Trainer; a fragment (a YAML without ``model.class_path``) is stacked
on the config its header comment names, as a user would stack it. What a config leaves ``null`` because the user must
give it (``data.root``, ``preference_ckpt``, ``rewards_ckpt``) gets a tiny stand-in, and what it reads from ``runs/``
(the demo's earlier steps) or ``data/`` (the real configs' default datasets) is put there as a tiny stand-in too.
Nothing stands in for ``weights/``: a config naming weights must fail before it builds, with an error that names the
config key and the missing file.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningModule, Trainer

from icg.cli import ICGLightningCLI
from icg.data.datamodule import ICGDataModule
from tests.helpers.cli import REPO, run_cli

CONFIG_DIR = REPO / "lightning_configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
WEIGHTS_ROOT = "weights/"
RUNS_ROOT = "runs/"
STANDIN_ROOTS = (RUNS_ROOT, "data/")  # earlier steps' outputs and the real configs' default datasets


def config_id(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR).with_suffix(""))


def is_fragment(path: Path) -> bool:
    model = (yaml.safe_load(path.read_text()) or {}).get("model")
    return not (isinstance(model, dict) and "class_path" in model)


def stack(path: Path) -> list[Path]:
    """The configs ``path`` is used with, in order: a fragment is stacked on the first YAML its header names."""
    if not is_fragment(path):
        return [path]
    header = "".join(line for line in path.read_text().splitlines(keepends=True)[:10] if line.startswith("#"))
    named = []
    for name in re.findall(r"[\w./-]+\.yaml", header):
        found = next((p for p in (REPO / name, path.parent / name) if p.is_file()), None)
        assert found is not None, f"{config_id(path)}: its header names {name}, which does not exist"
        if found.resolve() != path.resolve():
            named.append(found)
    assert named, f"{config_id(path)} is a fragment: its header comment must name the config it stacks on"
    return [*stack(named[0]), path]


def config_args(chain: list[Path]) -> list[str]:
    return [word for config in chain for word in ("--config", str(config))]


def print_config(*configs: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        run_cli("fit", *config_args(list(configs)), "--print_config")
    assert done.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """Dotted config keys -> leaf values (list items as ``key[i]``)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: tree}


@pytest.fixture(scope="module")
def standins(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path_factory) -> dict[str, object]:
    """Config-key suffix -> the tiny stand-in of what that key names (base models: a function of the width)."""
    from icg.diffusion.components import DiffusionComponents
    from icg.lit.base_model import export_base_model
    from icg.models.title_tokens import TitleTokenEncoder

    folders = {}

    def base_model(width: int) -> Path:  # the demo's stand-in base model at the width its stage 3 expects
        if width not in folders:
            base = DiffusionComponents.tiny(cross_attention_dim=width, sample_size=16)
            folder = tmp_path_factory.mktemp(f"base{width}") / "base_model"
            title_encoder = TitleTokenEncoder(dim=width)
            folders[width] = export_base_model(folder, base.unet, base.vae, base.scheduler, title_encoder)
        return folders[width]

    def tiny_mllm(_width: int) -> Path:  # the demo's stand-in MLLM, untrained, sized as demo/mllm.yaml says
        if "mllm" not in folders:
            import yaml

            from icg.models.standin_mllm import StandInQwen2VL

            config = yaml.safe_load((REPO / "lightning_configs" / "demo" / "mllm.yaml").read_text())
            standin = StandInQwen2VL(config["model"]["init_args"]["mllm"]["init_args"]["tiny_config"])
            folders["mllm"] = standin.save_pretrained(tmp_path_factory.mktemp("mllm") / "mllm")
        return folders["mllm"]

    return {
        "data.root": tiny_platform,
        "prompter.init_args.mllm_path": tiny_mllm,
        "preference_ckpt": tiny_stage1_ckpt,
        "rewards_ckpt": tiny_stage2_ckpt,
        "diffusion.path": base_model,
        "title_prompt.init_args.path": base_model,
    }


# null in a config: the user must pass them
REQUIRED = ("data.root", "model.init_args.preference_ckpt", "model.init_args.rewards_ckpt")
ADAPTER_WIDTH = "model.init_args.conditioner.init_args.adapter.init_args.cross_attention_dim"
# What `srun` sets for task 0 of a 2-node job: a config with an explicit SLURMEnvironment builds only inside one.
SLURM_TASK_ENV = {
    "SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "icg-test", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "node[1-2]",
}  # fmt: skip


def prepare(parsed: dict, standins: dict[str, object], workspace: Path) -> list[str]:
    """Overrides for the required keys left null; tiny stand-ins at the ``runs/`` paths the config reads."""
    overrides, flat = [], flatten(parsed)
    for key, value in flat.items():
        suffix = next((s for s in standins if key == s or key.endswith("." + s)), None)
        if suffix is None:
            continue
        standin = standins[suffix]
        if callable(standin):
            standin = standin(flat.get(ADAPTER_WIDTH, 32))
        if value is None and key in REQUIRED:
            overrides += [f"--{key}", str(standin)]
        elif isinstance(value, str) and value.startswith(STANDIN_ROOTS) and not (workspace / value).exists():
            (workspace / value).parent.mkdir(parents=True, exist_ok=True)
            (workspace / value).symlink_to(standin)
    return overrides


def pretend_gpu(monkeypatch) -> None:
    """Let the trainer preflight (icg.lit.preflight) see one CUDA GPU with NCCL: a real config that asks for a GPU
    then fails where it would on a GPU node without the weights."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)


def names_key_and_file(message: str, key: str, path: str) -> bool:
    """A line of ``message`` that starts with the config key (``key: ...`` or ``key=...``) and quotes the file."""
    line = re.compile(rf"^\s*(?:- )?{re.escape(key)}\s*[:=].*{re.escape(path)}", re.M)
    return line.search(message) is not None


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_config_builds_or_names_its_missing_weights(config, standins, tmp_path, monkeypatch):
    chain = stack(config)
    parsed = print_config(*chain)
    monkeypatch.chdir(tmp_path)  # the configs' relative paths resolve here: no weights/, tiny stand-ins in runs/
    if any(CONFIG_DIR / "slurm" in c.parents for c in chain):
        for name, value in SLURM_TASK_ENV.items():
            monkeypatch.setenv(name, value)
    words = config_args(chain) + prepare(parsed, standins, tmp_path)
    weights = {k: v for k, v in flatten(parsed).items() if isinstance(v, str) and v.startswith(WEIGHTS_ROOT)}
    if weights:
        if str(parsed["trainer"].get("accelerator")) in ("gpu", "cuda"):
            pretend_gpu(monkeypatch)  # the model (and its missing weights) is built before any device is touched
        before = sorted(tmp_path.rglob("*"))
        with pytest.raises(Exception) as err:  # noqa: B017  (jsonargparse wraps the loader's error)
            ICGLightningCLI(words, run=False)
        message = str(err.value)
        named = [(key, path) for key, path in weights.items() if names_key_and_file(message, key, path)]
        assert named, f"the error names none of the config's weights keys with its file: {message[-1500:]}"
        assert sorted(tmp_path.rglob("*")) == before, "a failed build left files behind"
        return
    cli = ICGLightningCLI(words, run=False)
    module, _, name = parsed["model"]["class_path"].rpartition(".")
    assert isinstance(cli.model, LightningModule) and type(cli.model).__module__ == module
    assert type(cli.model).__name__ == name
    assert isinstance(cli.datamodule, ICGDataModule) and isinstance(cli.trainer, Trainer)
    # the YAML's values reached the objects, not only the parser
    for key, value in parsed["model"].get("init_args", {}).items():
        if isinstance(value, int | float | str | bool) and key in cli.model.hparams:
            assert cli.model.hparams[key] == value, key
    for key, value in parsed["data"].items():
        if isinstance(value, int | float | bool) and key in cli.datamodule.hparams:
            assert cli.datamodule.hparams[key] == value, key
    for key in ("max_epochs", "max_steps", "num_nodes"):
        if parsed["trainer"].get(key) is not None:
            assert getattr(cli.trainer, key) == parsed["trainer"][key], key


def test_configs_are_found():
    names = {config_id(p) for p in CONFIGS}
    for tier in ("tiny", "demo", "real"):
        for stage in ("stage1_preference", "stage2_rewards", "stage3_alignment"):
            assert f"{tier}/{stage}" in names
    assert {config_id(p) for p in CONFIGS if is_fragment(p)} >= {"real/stage3_alignment_sdxl", "slurm/trainer_ddp_cpu"}


def test_sdxl_variant_stacks_on_the_real_stage3():
    parsed = print_config(*stack(CONFIG_DIR / "real/stage3_alignment_sdxl.yaml"))
    conditioner = parsed["model"]["init_args"]["conditioner"]["init_args"]
    adapter = conditioner["adapter"]["init_args"]
    # The title first, through SDXL's own two text encoders, which also give the pooled vector.
    assert (adapter["cross_attention_dim"], adapter["pooled_dim"]) == (2048, None)
    assert conditioner["title_prompt"]["init_args"]["path"] == "weights/stable-diffusion-xl-base-1.0"
    assert parsed["model"]["init_args"]["diffusion"]["variant"] == "sdxl"


def test_flux_variant_stacks_on_the_real_stage3():
    parsed = print_config(*stack(CONFIG_DIR / "real/stage3_alignment_flux.yaml"))
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


def test_movielens_fragment_stacks_on_the_real_stage1():
    parsed = print_config(*stack(CONFIG_DIR / "real/stage1_movielens.yaml"))
    assert (parsed["data"]["holdout"], parsed["model"]["init_args"]["top_k"]) == (10, 5)
    model = parsed["model"]["init_args"]["model"]["init_args"]
    assert model["num_users"] is None and model["embed_dim"] == 64  # counted from data.root; the rest is kept


def test_real_stage3_fails_early_naming_the_missing_mllm(tiny_stage1_ckpt, tmp_path, monkeypatch, capsys):
    from icg.cli import main

    monkeypatch.chdir(tmp_path)  # no weights/ here
    words = ["fit", "--config", str(REPO / "lightning_configs/real/stage3_alignment.yaml"), "--data.root",
             str(tmp_path), "--model.init_args.preference_ckpt", str(tiny_stage1_ckpt),
             "--model.init_args.rewards_ckpt", "y.ckpt"]  # fmt: skip
    assert main(words) == 2  # this machine has no GPU, which the real stage 3 asks for: refused before anything loads
    err = capsys.readouterr().err
    assert "trainer.accelerator: gpu" in err and "sees none" in err and "Traceback" not in err
    pretend_gpu(monkeypatch)  # on a GPU node: the first missing thing is the MLLM
    assert main(words) == 2
    err = capsys.readouterr().err
    assert "mllm_path" in err and "Qwen2-VL-2B-Instruct" in err and "Traceback" not in err


def test_demo_stages_share_one_split():
    """Every demo stage, the stage-1 table and the evaluation hold out the same clicks per user."""
    from icg.demo.paths import HOLDOUT

    for stage in ("stage1_preference", "stage2_rewards", "stage3_alignment"):
        config = yaml.safe_load((CONFIG_DIR / f"demo/{stage}.yaml").read_text())
        assert config["data"].get("holdout", 1) == HOLDOUT, stage


def test_demo_ablation_fragment_drops_every_user_path():
    parsed = print_config(*stack(CONFIG_DIR / "demo/stage3_no_user.yaml"))
    conditioner = parsed["model"]["init_args"]["conditioner"]["init_args"]
    assert conditioner["fusion"]["init_args"]["fusion_type"] == "none" and conditioner["user_offset"] is None
    assert parsed["trainer"]["default_root_dir"] == "runs/demo/stage3_no_user"
