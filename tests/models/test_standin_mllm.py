"""The demo's stand-in MLLM (icg.models.standin_mllm, icg.lit.standin_mllm): its folder loads through
MetaTokenPrompter(mllm_path=...) like a real Qwen2-VL release (weights, tokenizer ids, prompt layout), a broken folder
is one error naming the config key, its word-level tokenizer and naming targets, a few steps lower its naming loss,
and `icg fit` with the demo config writes the folder and keeps the held-out items out of training."""

import pandas as pd
import pytest
import torch
from torch import Tensor

from icg.errors import ConfigError
from icg.models.meta_prompt import MetaTokenPrompter, seeded_meta_tokens
from icg.models.standin_mllm import StandInQwen2VL, held_out_items, naming_loss, word_tokenizer
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
    # the prompter lays prompts out as the stand-in was trained on them, and reads the same slots
    rows, batch = standin.inputs(TITLES), prompter.batch_inputs(TITLES)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert torch.equal(rows[key], batch[key])
    assert torch.equal(rows["slot_mask"], batch["meta_mask"])
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


def test_words_are_single_tokens_and_unknown_words_are_unk():
    tok = word_tokenizer(["red", "circle", "striped"])
    tokens = tok.convert_ids_to_tokens(tok("Red circle, STRIPED zebra", add_special_tokens=False)["input_ids"])
    assert tokens == ["red", "circle", ",", "striped", "[UNK]"]
    assert tok("<|image_pad|>", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<|image_pad|>")]


def test_naming_targets_weigh_each_title_word_once(standin):
    targets = standin.naming_targets(["Red circle, red striped (zebra)"])
    named = {standin.vocabulary()[i]: round(float(w), 4) for i, w in enumerate(targets[0]) if w > 0}
    assert named == {"red": 0.3333, "circle": 0.3333, "striped": 0.3333}  # no punctuation, no [UNK], red once
    with pytest.raises(ValueError, match="zebra"):
        standin.naming_targets(["zebra!"])
    unnamed = StandInQwen2VL({"seed": 3}, num_slots=4, image_size=56, unnamed_words=["On", "a"])
    targets = unnamed.naming_targets(["Red circle on a light backdrop"])
    named = {unnamed.vocabulary()[i] for i, w in enumerate(targets[0]) if w > 0}
    assert named == {"red", "circle", "light", "backdrop"}  # the filler words are left out, any case


def test_naming_loss_is_log_of_the_word_count_when_every_slot_names_them_equally():
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    flat = torch.tensor([[[0.0, 0.0, -1e4, -1e4]]]).expand(1, 3, 4)
    assert naming_loss(flat, targets).item() == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-5)
    assert naming_loss(torch.zeros(1, 3, 4), targets).item() == pytest.approx(float(torch.log(torch.tensor(4.0))))


def test_a_few_steps_lower_the_naming_loss():
    torch.manual_seed(0)
    model = StandInQwen2VL({}, num_slots=4, image_size=56)
    colours = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    images = colours[:, :, None, None].expand(4, 3, 32, 32).clone()
    titles = ["red", "green", "blue", "red square"]
    targets = model.naming_targets(titles).repeat(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def loss() -> Tensor:
        return naming_loss(model(titles + [""] * 4, torch.cat([images, images])), targets).mean()

    with torch.no_grad():
        first = loss()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        assert loss() < first - 0.5


def test_prompter_meta_tokens_start_from_their_own_seed(folder):
    prompter = MetaTokenPrompter(mllm_path=str(folder), num_meta_tokens=4, image_size=56, meta_token_seed=5)
    scale = float(prompter._core().get_input_embeddings().weight.float().std())
    assert torch.equal(prompter.meta_tokens.data, seeded_meta_tokens(4, 32, 5, scale))
    torch.manual_seed(0)
    drawn = MetaTokenPrompter(mllm_path=str(folder), num_meta_tokens=4, image_size=56).meta_tokens.data
    torch.manual_seed(0)
    assert torch.equal(
        drawn, MetaTokenPrompter(mllm_path=str(folder), num_meta_tokens=4, image_size=56).meta_tokens.data
    )
    assert not torch.equal(drawn, prompter.meta_tokens.data)


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

    named = []
    targets = standin_mllm.StandInQwen2VL.naming_targets

    def spy(self, titles):
        named.extend(titles)
        return targets(self, titles)

    monkeypatch.setattr(standin_mllm.StandInQwen2VL, "naming_targets", spy)
    out = tmp_path / "mllm"
    run_cli("fit", "--config", CONFIG, "--data.root", tiny_platform, "--data.batch_size", "20",
            "--model.init_args.export_dir", out, "--trainer.max_steps", "3", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", tmp_path)  # fmt: skip
    items = pd.read_parquet(tiny_platform / "items.parquet")
    held = set(items[held_out_items(list(items["item_id"]), 0.25)]["title"])
    kept = set(items["title"]) - held
    assert held and kept & set(named)
    assert not held & set(named) - kept
    assert set(named) - set(items["title"])  # freshly drawn items besides the batch's
    prompter = MetaTokenPrompter(mllm_path=str(out), num_meta_tokens=8, image_size=56)
    assert prompter.hidden_size == 64
