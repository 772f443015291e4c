"""The handcrafted personalized prompt baseline (keywords of a user's train clicks) and the no-meta-token ablation."""

import numpy as np
import pytest
import torch

from icg.data.datamodule import ICGDataModule
from icg.data.splits import TRAIN
from icg.data.synthetic import prompt_vocabulary
from icg.diffusion.title_tokens import title_words
from icg.evaluation.keywords import HistoryKeywords, TrainClickTitles
from icg.evaluation.methods import PersonalizedPromptMethod
from icg.evaluation.sample import pairs_batch
from tests.helpers.cli import TINY, only_ckpt, run_cli


def test_keywords_are_the_most_frequent_words_ties_alphabetical_each_once_per_title():
    history = {"u": ["Red red circle, striped", "Blue square, striped", "The red star (flat)", "Pink heart"]}
    keywords = HistoryKeywords(history, vocabulary=prompt_vocabulary())
    # red 2 (once per title), striped 2, then blue, flat, pink 1 each: ties alphabetical; circle/square are no keywords
    assert keywords.ranked("u") == ("red", "striped", "blue", "flat", "pink")
    assert keywords.words("u", "Red heart on a dark backdrop", 2) == ["striped", "blue"]  # not the title's own words
    assert keywords.prompt("u", "Red heart on a dark backdrop", 2) == "Red heart on a dark backdrop, striped, blue"
    free = HistoryKeywords(history)  # no vocabulary: any title word but the stop words
    assert free.ranked("u")[:3] == ("red", "striped", "blue") and "the" not in free.ranked("u")


def test_a_user_without_train_clicks_gets_the_plain_title():
    keywords = HistoryKeywords({"u": [], "v": ["Teal star"]}, vocabulary=prompt_vocabulary())
    assert keywords.prompt("u", "Red circle", 2) == "Red circle"
    assert keywords.prompt("nobody", "Red circle", 2) == "Red circle"
    assert keywords.prompt("v", "Teal circle", 2) == "Teal circle"  # the only keyword is already in the title


def test_keywords_come_from_the_train_split_only(tiny_platform):
    dm = ICGDataModule(str(tiny_platform), image_size=32, holdout=3)
    dm.setup()
    log, titles = dm.log, dm.catalogue.titles
    clicked_titles = TrainClickTitles(dm)
    keywords = HistoryKeywords.from_datamodule(dm)
    leaks_possible = 0
    for row, user in enumerate(dm.user_ids):
        mine = log.user == row
        train = {str(titles[i]) for i in log.item[mine & (log.part == TRAIN) & (log.click > 0)]}
        held_out = {str(titles[i]) for i in log.item[mine & (log.part != TRAIN) & (log.click > 0)]}
        assert set(clicked_titles[str(user)]) == train
        train_words = {w for t in train for w in title_words(t)}
        only_held_out = {w for t in held_out for w in title_words(t)} - train_words
        leaks_possible += len(only_held_out)
        assert not only_held_out & set(keywords.ranked(str(user))), user  # a held-out click's words never appear
        assert set(keywords.ranked(str(user))) <= train_words
    assert leaks_possible > 0  # the check above had held-out-only words to catch


def test_covers_differ_from_title_only_with_a_history_and_equal_it_without(tiny_platform, tiny_methods):
    dm = ICGDataModule(str(tiny_platform), image_size=32)
    dm.setup()
    batch = pairs_batch(dm, [(0, 0), (1, 0)])
    with_history, without = str(batch["user_id"][0]), str(batch["user_id"][1])
    title = str(batch["title"][0])
    colour = next(w for w in prompt_vocabulary()[:8] if w not in title_words(title))
    keywords = HistoryKeywords({with_history: [f"{colour} star, hollow"] * 2, without: []}, prompt_vocabulary())
    base = tiny_methods["title_only"]
    method = PersonalizedPromptMethod(base.components, base.title_encoder, keywords, 2, num_steps=base.num_steps,
                                      image_size=base.image_size, seed=base.seed)  # fmt: skip
    assert method.prompts(batch)[0].startswith(title + ", ") and method.prompts(batch)[1] == str(batch["title"][1])
    ours, title_only = method(batch), base(batch)
    assert not torch.allclose(ours[0], title_only[0], atol=1e-3)
    torch.testing.assert_close(ours[1], title_only[1], rtol=0, atol=0)
    with pytest.raises(Exception, match="num_words"):
        PersonalizedPromptMethod(base.components, base.title_encoder, keywords, 0)


def test_conditioner_without_prompter_reads_title_prompt_and_user_token_only():
    from icg.diffusion.prompt_encoder import PromptEncoder
    from icg.errors import ConfigError
    from icg.models.adapter import ConditioningAdapter
    from icg.models.cover_conditioner import CoverConditioner
    from icg.models.fusion import UserFusion

    torch.manual_seed(0)
    title = PromptEncoder(tiny={"num_buckets": 64, "dim": 32, "max_tokens": 8, "num_heads": 4})
    adapter = ConditioningAdapter(32, 32, num_layers=1, num_heads=4, num_tokens=8)
    conditioner = CoverConditioner(None, UserFusion(32, 8, "user_token"), adapter, title_prompt=title)
    users = torch.randn(2, 8)
    cond = conditioner(["Red circle", "Blue star"], torch.rand(2, 3, 32, 32), users)
    assert cond.encoder_hidden_states.shape == (2, 8 + 8, 32)
    other_images = conditioner(["Red circle", "Blue star"], torch.rand(2, 3, 32, 32), users)
    torch.testing.assert_close(cond.encoder_hidden_states, other_images.encoder_hidden_states)  # the image is unread
    state = conditioner.trained_state_dict()
    assert state and not any(k.startswith("prompter.") for k in state)
    conditioner.load_trained_state_dict(state)
    with pytest.raises(ConfigError, match="user_token"):
        CoverConditioner(None, UserFusion(32, 8, "none"), adapter, title_prompt=title)
    with pytest.raises(ConfigError, match="title_prompt"):
        CoverConditioner(None, UserFusion(32, 8, "user_token"), adapter)


def test_no_meta_ablation_fits_and_generates(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    """The tiny stage 3 with ``prompter: null`` (what stage3_no_meta.yaml sets) trains a step and reloads as a
    method whose covers depend on the user."""
    from icg.evaluation.methods import AlignmentMethod
    from icg.generation.generator import CoverGenerator

    overlay = tmp_path / "no_meta.yaml"  # as stage3_no_meta.yaml does (a null subclass is a YAML value, not a flag)
    overlay.write_text("model:\n  init_args:\n    conditioner:\n      init_args:\n        prompter: null\n")
    run_cli("fit", "--config", TINY / "stage3_alignment.yaml", "--config", overlay, "--data.root", tiny_platform,
            "--model.init_args.preference_ckpt", tiny_stage1_ckpt, "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
            "--trainer.max_steps", "1", "--trainer.default_root_dir", tmp_path / "run")  # fmt: skip
    method = AlignmentMethod.from_checkpoint(only_ckpt(tmp_path / "run"), config_key="no_meta_ckpt")
    assert method.generator.conditioner.prompter is None
    dm = ICGDataModule(str(tiny_platform), image_size=method.image_size)
    dm.setup()
    batch = pairs_batch(dm, [(0, 0), (1, 0)])
    covers = method(batch)
    assert covers.shape == (2, 3, 32, 32) and bool(np.isfinite(covers.numpy()).all())
    run_cli("export", "--stage3_ckpt", only_ckpt(tmp_path / "run"), "--out", tmp_path / "export")  # no MLLM to export
    exported = AlignmentMethod(CoverGenerator.from_pretrained(tmp_path / "export"))
    assert exported.generator.conditioner.prompter is None
    torch.testing.assert_close(exported(batch), covers, rtol=0, atol=1e-5)
