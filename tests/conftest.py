"""Shared test setup: nothing reaches a network, and runs are small and deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.cli import TINY, only_ckpt, run_cli  # noqa: E402


@pytest.fixture(scope="session")
def tiny_platform(tmp_path_factory) -> Path:
    """A small synthetic platform (30 users, 60 items, 32 px) shared by the stage tests."""
    from icg.data.synthetic import generate_platform

    return generate_platform(tmp_path_factory.mktemp("platform") / "data", users=30, items=60, seed=0, image_size=32)


@pytest.fixture(scope="session")
def tiny_stage1_ckpt(tiny_platform, tmp_path_factory) -> Path:
    """Stage 1 of the tiny config, trained through the CLI on ``tiny_platform``."""
    out = tmp_path_factory.mktemp("stage1")
    run_cli(
        "fit",
        "--config",
        TINY / "stage1_preference.yaml",
        "--data.root",
        tiny_platform,
        "--trainer.default_root_dir",
        out,
    )
    return only_ckpt(out)


@pytest.fixture(scope="session")
def tiny_stage2_ckpt(tiny_platform, tiny_stage1_ckpt, tmp_path_factory) -> Path:
    """Stage 2 of the tiny config (reward bundle over the tiny stage-1 model), through the CLI."""
    out = tmp_path_factory.mktemp("stage2")
    run_cli(
        "fit",
        "--config",
        TINY / "stage2_rewards.yaml",
        "--data.root",
        tiny_platform,
        "--model.init_args.preference_ckpt",
        tiny_stage1_ckpt,
        "--trainer.default_root_dir",
        out,
    )
    return only_ckpt(out)


@pytest.fixture(scope="session")
def tiny_stage3_ckpt(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path_factory) -> Path:
    """Stage 3 of the tiny config (2 alignment steps) chained to the tiny stages 1 and 2, through the CLI."""
    out = tmp_path_factory.mktemp("stage3")
    run_cli(
        "fit",
        "--config",
        TINY / "stage3_alignment.yaml",
        "--data.root",
        tiny_platform,
        "--model.init_args.preference_ckpt",
        tiny_stage1_ckpt,
        "--model.init_args.rewards_ckpt",
        tiny_stage2_ckpt,
        "--trainer.default_root_dir",
        out,
    )
    return only_ckpt(out)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A stand-in base model folder (tiny random UNet/VAE/scheduler + title encoder, width 32), as the demo exports."""
    from icg.diffusion.components import DiffusionComponents
    from icg.lit.base_model import export_base_model
    from icg.models.title_tokens import TitleTokenEncoder

    base = DiffusionComponents.tiny(cross_attention_dim=32, sample_size=16)
    folder = tmp_path_factory.mktemp("base") / "base_model"
    return export_base_model(folder, base.unet, base.vae, base.scheduler, TitleTokenEncoder(dim=32))


@pytest.fixture(scope="session")
def tiny_export_on_base(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tiny_base_model, tmp_path_factory) -> Path:
    """An ``icg export`` of the tiny stage 3 trained on the ``tiny_base_model`` folder (so it has a title-only
    baseline: the folder's UNet prompted through its title encoder), as the demo's export is."""
    out = tmp_path_factory.mktemp("stage3_on_base")
    run_cli("fit", "--config", TINY / "stage3_alignment.yaml", "--data.root", tiny_platform,
            "--model.init_args.preference_ckpt", tiny_stage1_ckpt, "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
            "--model.init_args.diffusion.path", tiny_base_model, "--trainer.default_root_dir", out)  # fmt: skip
    run_cli("export", "--stage3_ckpt", only_ckpt(out), "--out", out / "export")
    return out / "export"


@pytest.fixture(scope="session")
def tiny_no_user_ckpt(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path_factory) -> Path:
    """The "ICG without user refinement" ablation of the tiny stage 3 (fusion_type none), through the CLI."""
    out = tmp_path_factory.mktemp("stage3_no_user")
    run_cli(
        "fit",
        "--config",
        TINY / "stage3_alignment.yaml",
        "--data.root",
        tiny_platform,
        "--model.init_args.preference_ckpt",
        tiny_stage1_ckpt,
        "--model.init_args.rewards_ckpt",
        tiny_stage2_ckpt,
        "--model.init_args.conditioner.init_args.fusion.init_args.fusion_type",
        "none",
        "--trainer.default_root_dir",
        out,
    )
    return only_ckpt(out)


@pytest.fixture(scope="module")
def tiny_methods(tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path_factory):
    """The tiny title-only, no-user and ICG evaluation methods over the tiny stages 1 and 2 (evaluation and study)."""
    from icg.diffusion.components import DiffusionComponents
    from icg.diffusion.source import DiffusionSource
    from icg.evaluation.methods import AlignmentMethod, TitleOnlyMethod
    from icg.lit.alignment import AlignmentStage
    from icg.lit.base_model import export_base_model
    from icg.models.adapter import ConditioningAdapter
    from icg.models.cover_conditioner import CoverConditioner
    from icg.models.fusion import UserFusion
    from icg.models.meta_prompt import MetaTokenPrompter
    from icg.models.title_tokens import TitleTokenEncoder

    torch.manual_seed(0)
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=4, image_size=56),
        UserFusion(32, 8, "user_token"),
        ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=8),
    )
    stage = AlignmentStage(
        conditioner,
        str(tiny_stage1_ckpt),
        str(tiny_stage2_ckpt),
        diffusion=DiffusionSource(tiny={"sample_size": 16}),
        num_steps=3,
        image_size=32,
    )
    stage.setup("predict")
    stage.place_frozen()
    stage.eval()
    folder = tmp_path_factory.mktemp("base") / "base_model"
    base = DiffusionComponents.tiny(cross_attention_dim=32, sample_size=16)
    export_base_model(folder, base.unet, base.vae, base.scheduler, TitleTokenEncoder(dim=32))
    title_only = TitleOnlyMethod.from_folder(folder, num_steps=3, image_size=32, seed=0)
    return {
        "title_only": title_only,
        "icg_no_user": AlignmentMethod(stage.generator, user="fallback"),
        "icg": AlignmentMethod(stage.generator),
    }


# `icg evaluate` arguments of the tiny end-to-end evaluation (6 held-out users, 4 x 4 gallery grid).
TINY_EVALUATION = ("--num_users", "6", "--downstream_users", "3", "--downstream_negatives", "2")


@pytest.fixture(scope="session")
def tiny_evaluation(tiny_platform, tiny_stage1_ckpt, tiny_stage3_ckpt, tiny_no_user_ckpt, tiny_base_model,
                    tmp_path_factory) -> tuple[Path, str]:  # fmt: skip
    """``icg evaluate`` through ``icg.cli.main`` on the tiny chained checkpoints: (its out_dir, what it printed)."""
    import contextlib
    import io

    from tests.helpers.lpips import save_backbone

    out = tmp_path_factory.mktemp("evaluation")
    save_backbone(out.parent / f"{out.name}_alexnet.pth")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_cli(
            "evaluate", "--data_root", tiny_platform, "--stage1_ckpt", tiny_stage1_ckpt,
            "--stage3_ckpt", tiny_stage3_ckpt, "--no_user_ckpt", tiny_no_user_ckpt, "--base_model", tiny_base_model,
            "--other_mllm_ckpt", tiny_no_user_ckpt,  # any other stage-3 checkpoint: the icg_other_mllm column
            "--lpips_backbone", out.parent / f"{out.name}_alexnet.pth", "--out_dir", out, *TINY_EVALUATION,
        )  # fmt: skip
    return out, printed.getvalue()
