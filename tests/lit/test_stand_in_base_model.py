"""The demo's stand-in base model (icg.lit.base_model): a 2-step-per-phase CLI run on tiny sizes writes a stock
diffusers folder that the diffusion loader and the sampler accept, the VAE phase runs before the UNet phase, the
title encoder round-trips, and a width mismatch between title encoder and UNet is named by both config keys."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import REPO, run_cli

DEMO = REPO / "lightning_configs" / "demo" / "base_model.yaml"
# Tiny sizes over the demo config: 16 px covers, 8 x 8 x 4 latents, 2 VAE steps then 2 UNet steps. The UNet and VAE
# configs are plain dicts, so they are given whole (dotted CLI overrides of dict entries would arrive as strings).
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[8, 16],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=16, attention_head_dim=4,
                 norm_num_groups=4)  # fmt: skip
TINY_VAE = dict(in_channels=3, out_channels=3, block_out_channels=[8, 8], latent_channels=4, layers_per_block=1,
                down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                norm_num_groups=4, sample_size=16, mid_block_add_attention=False)  # fmt: skip
TINY = [
    "--model.init_args.title_encoder.init_args.num_buckets", "64",
    "--model.init_args.title_encoder.init_args.dim", "16",
    "--model.init_args.title_encoder.init_args.num_heads", "2",
    "--model.init_args.unet", json.dumps(TINY_UNET),
    "--model.init_args.vae", json.dumps(TINY_VAE),
    "--model.init_args.vae_steps", "2",
    "--model.init_args.unet_scheduler.init_args.T_max", "2",
    "--data.image_size", "16",
    "--data.batch_size", "4",
    "--trainer.max_steps", "4",
    "--trainer.logger", "false",
    "--trainer.enable_checkpointing", "false",
]  # fmt: skip


def fit_tiny(platform: Path, out: Path, *extra: str) -> None:
    run_cli("fit", "--config", DEMO, *TINY, "--data.root", platform, "--model.init_args.export_dir", out / "export",
            "--trainer.default_root_dir", out, *extra)  # fmt: skip


@pytest.fixture(scope="module")
def exported(tiny_platform, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base_model")
    fit_tiny(tiny_platform, out)
    return out / "export"


def test_export_is_a_loadable_diffusers_folder(exported):
    from icg.diffusion.components import DiffusionComponents
    from icg.diffusion.conditioning import Conditioning
    from icg.diffusion.sampler import sample
    from icg.models.title_tokens import load_title_encoder

    components = DiffusionComponents.from_pretrained_folder(exported)
    assert (components.cross_attention_dim, components.vae_scale_factor, components.default_image_size) == (16, 2, 16)
    # the VAE phase fitted the latent scale and the export carries it (diffusers' default is SD's 0.18215)
    assert components.vae.config.scaling_factor != pytest.approx(0.18215)
    encoder = load_title_encoder(exported)
    states, mask, _ = encoder(["Red circle on a dark backdrop, flat", ""])
    images = sample(
        components, Conditioning(states, mask.long()), num_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_vae_phase_precedes_unet_phase(tiny_platform, tmp_path, monkeypatch):
    from icg.lit.base_model import StandInBaseModel

    calls: list[str] = []
    vae_step, unet_step = StandInBaseModel.vae_step, StandInBaseModel.unet_step
    monkeypatch.setattr(StandInBaseModel, "vae_step", lambda self, *a: calls.append("vae") or vae_step(self, *a))
    monkeypatch.setattr(StandInBaseModel, "unet_step", lambda self, *a: calls.append("unet") or unet_step(self, *a))
    fit_tiny(tiny_platform, tmp_path)
    assert calls == ["vae", "vae", "unet", "unet"]


def test_too_few_steps_for_the_unet_phase_is_an_error(tiny_platform, tmp_path):
    with pytest.raises(RuntimeError, match="model.init_args.vae_steps"):
        fit_tiny(tiny_platform, tmp_path, "--trainer.max_steps", "2")


def test_width_mismatch_names_both_keys():
    from icg.lit.base_model import StandInBaseModel
    from icg.models.title_tokens import TitleTokenEncoder

    with pytest.raises(ValueError) as err:
        StandInBaseModel(unet={"cross_attention_dim": 32}, vae={}, title_encoder=TitleTokenEncoder(dim=16),
                         export_dir="unused")  # fmt: skip
    message = str(err.value)
    assert "model.init_args.unet.cross_attention_dim=32" in message
    assert "model.init_args.title_encoder.init_args.dim=16" in message


def test_title_encoder_round_trip(tmp_path):
    from icg.models.title_tokens import TITLE_ENCODER_DIR, TitleTokenEncoder, export_title_encoder, load_title_encoder

    torch.manual_seed(0)
    encoder = TitleTokenEncoder(num_buckets=32, dim=8, max_tokens=5, num_layers=1, num_heads=2).eval()
    export_title_encoder(tmp_path, encoder)
    loaded = load_title_encoder(tmp_path)
    titles = ["Blue heart on a light backdrop", "", "one two three four five six seven"]
    with torch.no_grad():
        for a, b in zip(encoder(titles), loaded(titles), strict=True):
            torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in loaded.parameters())
    (tmp_path / TITLE_ENCODER_DIR / "spec.json").unlink()
    with pytest.raises(FileNotFoundError, match="spec.json"):
        load_title_encoder(tmp_path, "base_model_path")


@pytest.mark.parametrize("captions", ["true", "false"])
def test_platform_captions_add_the_backdrop_tint_to_the_title(tiny_platform, tmp_path, monkeypatch, captions):
    from icg.data.synthetic import backdrop_captions, hue_names
    from icg.lit.base_model import StandInBaseModel

    seen: list[tuple[str, str, str]] = []
    text = StandInBaseModel._text

    def recorded(self, title: str, item: str) -> str:
        seen.append((title, item, out := text(self, title, item)))
        return out

    monkeypatch.setattr(StandInBaseModel, "_text", recorded)
    fit_tiny(tiny_platform, tmp_path, "--model.init_args.platform_captions", captions,
             "--model.init_args.caption_rate", "1", "--model.init_args.cond_dropout", "0")  # fmt: skip
    tints = backdrop_captions(tiny_platform)
    assert len(seen) == 8  # 2 UNet steps x batch 4
    assert {words.split()[0] for words in tints.values()} <= set(hue_names())
    for title, item, out in seen:
        assert out == (f"{title}, {tints[item]}" if captions == "true" else title)


def test_platform_captions_without_a_hidden_truth_is_one_line_naming_the_key(tiny_platform, tmp_path, capsys):
    import shutil

    from icg.cli import main

    platform = tmp_path / "data"
    shutil.copytree(tiny_platform, platform, ignore=shutil.ignore_patterns("truth"))
    words = ["fit", "--config", DEMO, *TINY, "--data.root", platform, "--model.init_args.export_dir", tmp_path / "e",
             "--trainer.default_root_dir", tmp_path, "--model.init_args.platform_captions", "true"]  # fmt: skip
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "model.init_args.platform_captions=true needs a synthetic platform" in err and "truth.json" in err
