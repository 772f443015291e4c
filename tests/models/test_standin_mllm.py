"""The demo's stand-in MLLM (icg.models.standin_mllm, icg.lit.standin_mllm): its folder loads through
MetaTokenPrompter(mllm_path=...) like a real Qwen2-VL release (weights, tokenizer ids, prompt layout), a broken folder
is one error naming the config key, a few steps lower its losses, and `icg fit` with the demo config writes the
folder and keeps the held-out items out of training."""

import pandas as pd
import pytest
import torch
from torch import Tensor

from icg.errors import ConfigError
from icg.models.meta_prompt import MetaTokenPrompter
from icg.models.standin_mllm import StandInQwen2VL, held_out_items, matching_loss
from tests.helpers.cli import REPO, run_cli

KEY = "model.init_args.conditioner.init_args.prompter.init_args.mllm_path"
TITLES = ["Red circle on a light backdrop, flat", "A striped blue star against a dark background"]
CONFIG = REPO / "lightning_configs" / "demo" / "mllm.yaml"


@pytest.fixture(scope="module")
def standin():
    return StandInQwen2VL({"seed": 3}, num_slots=4, image_size=56)


@pytest.fixture(scope="module")
def folder(standin, tmp_path_factory):
    return standin.save_pretrained(tmp_path_factory.mktemp("mllm") / "mllm")


def test_folder_loads_as_the_prompters_mllm(standin, folder):
    from transformers import AutoTokenizer

    texts = [*TITLES, "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>ünï<|im_end|>"]
    reloaded = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert [reloaded(t)["input_ids"] for t in texts] == [standin.tokenizer(t)["input_ids"] for t in texts]
    prompter = MetaTokenPrompter(mllm_path=str(folder), num_meta_tokens=4, image_size=56)
    trained = standin.model.model.state_dict()
    assert set(prompter.mllm.state_dict()) == set(trained)
    assert all(torch.equal(v, trained[k]) for k, v in prompter.mllm.state_dict().items())
    # the prompter lays prompts out as the stand-in was trained on them
    rows = standin.inputs(TITLES, ["x", "y"])
    for i, title in enumerate(TITLES):
        start = int(rows["slot_mask"][i].nonzero()[0])
        assert rows["input_ids"][i, :start].tolist() == prompter.prompt_ids(title)
    feats = prompter(TITLES, torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 4, 32) and torch.isfinite(feats).all()


def test_saving_again_replaces_the_folder_whole(standin, folder):
    (folder / "stale.txt").write_text("from an earlier run")
    standin.save_pretrained(folder)
    assert not (folder / "stale.txt").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_missing_or_broken_folder_is_one_error_naming_the_key(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=KEY):
        MetaTokenPrompter(mllm_path=str(tmp_path / "runs/demo/mllm"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match=KEY):
        MetaTokenPrompter(mllm_path=str(broken))


def test_a_few_steps_lower_both_losses():
    torch.manual_seed(0)
    model = StandInQwen2VL({}, num_slots=4, image_size=56)
    colours = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    images = colours[:, :, None, None].expand(4, 3, 32, 32).clone()
    titles = ["red", "green", "blue", "red square"]
    blank = torch.full_like(images, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def losses() -> tuple[Tensor, Tensor]:
        caption, feats = model([""] * 4 + titles, torch.cat([images, blank]), titles + titles)
        return caption.mean(), matching_loss(feats[:4], feats[4:])

    torch.manual_seed(1)
    with torch.no_grad():
        first = losses()
    for _ in range(8):
        caption, matching = losses()
        optimizer.zero_grad()
        (caption + matching).backward()
        optimizer.step()
    torch.manual_seed(1)
    with torch.no_grad():
        last = losses()
    assert last[0] < first[0] - 0.5
    assert last[1] < first[1]


def test_held_out_items_are_a_fixed_share():
    ids = [f"i{n:05d}" for n in range(2000)]
    held = held_out_items(ids, 0.25)
    assert held == held_out_items(ids, 0.25)
    assert 0.2 < sum(held) / len(ids) < 0.3
    assert not any(held_out_items(ids, 0.0))
    with pytest.raises(ValueError, match="fraction"):
        held_out_items(ids, 1.0)


def test_demo_config_fits_without_the_held_out_items(tiny_platform, tmp_path, monkeypatch):
    from icg.models import standin_mllm

    written = []
    forward = standin_mllm.StandInQwen2VL.forward

    def spy(self, prompt_titles, images, targets):
        written.extend(targets)
        return forward(self, prompt_titles, images, targets)

    monkeypatch.setattr(standin_mllm.StandInQwen2VL, "forward", spy)
    out = tmp_path / "mllm"
    run_cli("fit", "--config", CONFIG, "--data.root", tiny_platform, "--data.batch_size", "20",
            "--model.init_args.export_dir", out, "--trainer.max_steps", "3", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", tmp_path)  # fmt: skip
    items = pd.read_parquet(tiny_platform / "items.parquet")
    held = items[held_out_items(list(items["item_id"]), 0.25)]
    assert len(held) and written
    assert not set(held["title"]) & set(written) - set(items[~items.index.isin(held.index)]["title"])
    prompter = MetaTokenPrompter(mllm_path=str(out), num_meta_tokens=8, image_size=56)
    assert prompter.hidden_size == 32
