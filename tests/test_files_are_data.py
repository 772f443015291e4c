"""Files are data: a ``class_path`` read from an export, a checkpoint, a ``spec.json`` or a config is checked against
the allow-list (``icg.ckpt.resolve_class``) before anything is imported or built. The payloads of issue 23 (a
``subprocess.Popen`` spec that would ``touch`` a file) are refused in one line naming the file, the key and the
class, with exit status 2, and the file is never created; the shipped classes still build.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from icg import ckpt
from icg.cli import main
from icg.diffusion.source import DiffusionSource
from icg.errors import ClassPathError
from icg.generation import CoverGenerator, UserTable
from icg.models.fusion import UserFusion
from icg.models.rewards.bundle import RewardBundle, load_reward_bundle, save_reward_bundle
from icg.models.rewards.standins import ColorfulnessAesthetic
from icg.models.title_tokens import TitleTokenEncoder, export_title_encoder, load_title_encoder
from tests.helpers.cli import TINY
from tests.helpers.generation import pairs_csv, tiny_generator, write_tiny_export

USERS = ["u0000", "u0002", "u0004"]


def popen(marker: Path) -> dict:
    """The issue's payload: building it runs ``touch <marker>``."""
    return {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}


class TouchOnInit(Callback):
    """A Callback jsonargparse accepts for ``trainer.callbacks`` whose constructor writes a file: outside icg."""

    def __init__(self, marker: str) -> None:
        Path(marker).touch()


def one_line(capsys, words, status: int = 2) -> str:
    assert main([str(w) for w in words]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("icg ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return write_tiny_export(tmp_path_factory.mktemp("data") / "export", UserTable(USERS, torch.randn(4, 8)))


@pytest.fixture
def tampered_export(export, tmp_path) -> tuple[Path, Path]:
    """A copy of the export whose ``icg_config.json`` carries the payload under ``conditioner.init_args.fusion``."""
    import shutil

    folder = Path(shutil.copytree(export, tmp_path / "tampered"))
    marker = tmp_path / "pwned"
    config = json.loads((folder / "icg_config.json").read_text())
    config["conditioner"]["init_args"]["fusion"] = popen(marker)
    (folder / "icg_config.json").write_text(json.dumps(config))
    return folder, marker


# ------------------------------------------------------------------------------------------------ the allow-list
@pytest.mark.parametrize(
    "class_path, why",
    [
        ("subprocess.Popen", "outside the allowed packages"),
        ("os.system", "outside the allowed packages"),
        ("torch.nn.Linear", "outside the allowed packages"),  # a library module: fine, but not in a file
        ("torch.optim.AdamW", "outside the allowed packages"),  # configs only
        ("icg.ckpt.importlib", "not a class defined in the icg package"),  # a module icg imported
        ("icg.ckpt.Path", "not a class defined in the icg package"),  # a class icg imported
        ("icg.ckpt.instantiate", "not a class defined in the icg package"),  # a function
        ("icg.errors.UserError", "not a subclass of torch.nn.Module"),
        ("icg.cli.subprocess.Popen", "cannot import"),
        ("icg..x", "not a dotted class name"),
        (42, "not a dotted class name"),
    ],
)
def test_spec_refuses_anything_but_icg_modules(class_path, why, tmp_path):
    spec = {"class_path": "icg.models.fusion.UserFusion", "init_args": {"x": {"class_path": class_path}}}
    with pytest.raises(ClassPathError, match=r"^f\.json: top\.init_args\.x: .*" + why) as info:
        ckpt.instantiate(spec, "top", "f.json")
    assert "\n" not in str(info.value)


def test_refused_before_import(monkeypatch):
    """A path outside the allowed packages is never imported (importing runs the module's code)."""
    imported = []
    monkeypatch.setattr(ckpt.importlib, "import_module", lambda name: imported.append(name))
    with pytest.raises(ClassPathError, match="'evil_module.Thing' is refused: outside the allowed packages"):
        ckpt.resolve_class("evil_module.Thing", config=True)
    assert imported == []


def test_configs_may_name_the_library_classes_they_use():
    assert ckpt.resolve_class("torch.optim.AdamW", config=True) is torch.optim.AdamW
    assert ckpt.resolve_class("lightning.pytorch.callbacks.ModelCheckpoint", config=True).__name__ == "ModelCheckpoint"
    assert ckpt.resolve_class("icg.lit.callbacks.CoverGrid", config=True).__name__ == "CoverGrid"
    with pytest.raises(ClassPathError, match="not a subclass of lightning.pytorch.callbacks.Callback"):
        ckpt.resolve_class("lightning.pytorch.callbacks.progress.rich_progress.RichProgressBarTheme", config=True)
    with pytest.raises(ClassPathError, match="not a subclass of torch.nn.Module"):
        ckpt.resolve_class("icg.lit.callbacks.CoverGrid")  # a checkpoint or export spec holds modules only


def test_a_legitimate_spec_still_builds():
    torch.manual_seed(3)
    fusion = UserFusion(32, 8, "user_token")
    rebuilt = ckpt.instantiate(json.loads(json.dumps(fusion.spec)))
    assert isinstance(rebuilt, UserFusion) and rebuilt.spec == fusion.spec
    conditioner = tiny_generator(UserTable(USERS, torch.randn(4, 8))).conditioner
    assert type(ckpt.instantiate(conditioner.spec)) is type(conditioner)


# ------------------------------------------------------------------------------------------------ export (payload a)
def test_from_pretrained_refuses_the_payload(export, tampered_export):
    folder, marker = tampered_export
    CoverGenerator.from_pretrained(export)  # the untouched export loads
    with pytest.raises(ClassPathError) as info:
        CoverGenerator.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    assert f"{folder / 'icg_config.json'}: conditioner.init_args.fusion: class_path 'subprocess.Popen'" in message
    assert not marker.exists()


def test_icg_generate_refuses_the_payload(tampered_export, tiny_platform, tmp_path, capsys):
    folder, marker = tampered_export
    pairs = pairs_csv(tiny_platform, tmp_path / "pairs.csv", rows=2, users=USERS)
    line = one_line(capsys, ["generate", "--export", folder, "--pairs", pairs, "--data_root", tiny_platform,
                             "--out", tmp_path / "covers", "--progress_bar", "false"])  # fmt: skip
    assert line.startswith("icg generate: ")
    assert "conditioner.init_args.fusion: class_path 'subprocess.Popen' is refused" in line
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ stage 3 (payload b)
def test_icg_export_refuses_the_payload_in_a_stage3_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    conditioner = tiny_generator(UserTable(USERS, torch.randn(4, 8))).conditioner
    spec = json.loads(json.dumps(conditioner.spec))
    weights = {f"conditioner.{k}": v for k, v in conditioner.trained_state_dict().items()}  # a whole stage-3 file
    spec["init_args"]["fusion"] = popen(marker)
    block = {
        "stage": "alignment",
        "version": ckpt.ICG_CKPT_VERSION,
        "specs": {"conditioner": spec},
        "diffusion": asdict(DiffusionSource(tiny={"cross_attention_dim": 32, "sample_size": 16})),
        "preference_ckpt": str(tmp_path / "stage1.ckpt"),
    }
    path = tmp_path / "stage3.ckpt"
    torch.save({"state_dict": weights, ckpt.ICG_KEY: block}, path)
    assert torch.load(path, weights_only=True)[ckpt.ICG_KEY]["specs"]["conditioner"]["init_args"]["fusion"]
    line = one_line(capsys, ["export", "--stage3_ckpt", path, "--out", tmp_path / "out"])
    assert f"{path}: icg.specs.conditioner.init_args.fusion: class_path 'subprocess.Popen' is refused" in line
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ other spec files
def test_reward_bundle_checkpoint_refuses_a_payload_reward(tmp_path):
    marker = tmp_path / "pwned"
    path = save_reward_bundle(RewardBundle([ColorfulnessAesthetic()]), tmp_path / "rewards.ckpt")
    load_reward_bundle(path)  # the untouched file loads
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[ckpt.ICG_KEY]["specs"]["bundle"]["init_args"]["rewards"][0] = popen(marker)
    torch.save(checkpoint, path)
    with pytest.raises(ClassPathError, match=r"rewards_ckpt: .*rewards\.ckpt: icg\.specs\.bundle\.init_args\.rewards"
                                             r"\[0\]: class_path 'subprocess\.Popen' is refused"):  # fmt: skip
        load_reward_bundle(path)
    assert not marker.exists()


def test_title_encoder_spec_json_refuses_a_payload(tmp_path):
    marker = tmp_path / "pwned"
    export_title_encoder(tmp_path, TitleTokenEncoder(num_buckets=16, dim=8, max_tokens=4))
    assert isinstance(load_title_encoder(tmp_path), TitleTokenEncoder)
    spec_file = next(tmp_path.rglob("spec.json"))
    spec_file.write_text(json.dumps(popen(marker)))
    with pytest.raises(ClassPathError, match=r"spec\.json: class_path 'subprocess\.Popen' is refused"):
        load_title_encoder(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ configs
def test_fit_refuses_a_config_file_naming_another_class(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainer": {"callbacks": [popen(marker)]}}))
    line = one_line(capsys, ["fit", "--config", TINY / "stage1_preference.yaml", "--config", bad,
                             "--data.root", tmp_path])  # fmt: skip
    assert f"{bad}: trainer.callbacks[0]: class_path 'subprocess.Popen' is refused" in line
    assert not marker.exists()


def test_fit_refuses_a_nested_config_file(tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "callback.yaml").write_text(yaml.safe_dump(popen(marker)))
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"trainer": {"callbacks": ["callback.yaml"]}}))
    line = one_line(capsys, ["fit", "--config", TINY / "stage1_preference.yaml", "--config", top,
                             "--data.root", tmp_path])  # fmt: skip
    assert f"{tmp_path / 'callback.yaml'}: class_path 'subprocess.Popen' is refused" in line
    assert not marker.exists()


def test_fit_refuses_a_command_line_class_before_building_it(tmp_path, capsys):
    """A Callback subclass jsonargparse accepts, defined outside icg: refused after parsing, before instantiation."""
    marker = tmp_path / "pwned"
    callback = json.dumps({"class_path": f"{__name__}.TouchOnInit", "init_args": {"marker": str(marker)}})
    line = one_line(capsys, ["fit", "--config", TINY / "stage1_preference.yaml", "--data.root", tmp_path,
                             f"--trainer.callbacks+={callback}"])  # fmt: skip
    assert re.search(rf"icg fit: trainer\.callbacks\[\d\]: class_path '{__name__}\.TouchOnInit' is refused", line)
    assert not marker.exists()
