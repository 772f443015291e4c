"""MetaTokenPrompter (tiny Qwen2-VL from config) and the on-disk MLLM feature cache."""

import numpy as np
import pytest
import torch

from icg import ckpt
from icg.models.feature_cache import MLLMFeatureCache
from icg.models.meta_prompt import DEFAULT_PROMPT_TEMPLATE, MetaTokenPrompter, save_tiny_mllm

TITLES = ["Cats", "A very long documentary title about mountain climbing in winter", "Cooking: pasta 101"]
N = 4


def tiny(**kwargs) -> MetaTokenPrompter:
    torch.manual_seed(0)
    return MetaTokenPrompter(**{"tiny_config": {}, "num_meta_tokens": N, "image_size": 56, **kwargs})


@pytest.fixture(scope="module")
def prompter() -> MetaTokenPrompter:
    return tiny()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(len(TITLES), 3, 60, 80, generator=torch.Generator().manual_seed(1))


def test_shapes_mixed_length_titles(prompter, images):
    feats = prompter(TITLES, images)
    assert feats.shape == (3, N, prompter.hidden_size) == (3, N, 32)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_meta_positions_follow_each_rows_prompt(prompter, side):
    prompter.padding_side = side
    try:
        batch = prompter.batch_inputs(TITLES)
    finally:
        prompter.padding_side = "left"
    lengths = [len(prompter.prompt_ids(t)) for t in TITLES]
    assert len(set(lengths)) == 3  # the titles really do give different prompt lengths
    width = max(lengths) + N
    for row, length in enumerate(lengths):
        start = width - N if side == "left" else length
        assert batch["meta_mask"][row].nonzero().flatten().tolist() == list(range(start, start + N))
        assert batch["attention_mask"][row].sum() == length + N


def test_features_do_not_depend_on_padding_side_or_batch(prompter, images):
    left = prompter(TITLES, images)
    right = tiny(padding_side="right")
    right.load_state_dict(prompter.state_dict())
    assert torch.allclose(left, right(TITLES, images), atol=1e-5)
    alone = torch.cat([prompter([t], images[i : i + 1]) for i, t in enumerate(TITLES)])
    assert torch.allclose(left, alone, atol=1e-5)


def test_title_image_and_meta_tokens_all_change_the_features(prompter, images):
    base = prompter(TITLES[:1], images[:1])
    assert not torch.allclose(base, prompter(["Dogs"], images[:1]), atol=1e-4)
    assert not torch.allclose(base, prompter(TITLES[:1], 1 - images[:1]), atol=1e-4)
    other = tiny()
    other.load_state_dict(prompter.state_dict())
    with torch.no_grad():
        other.meta_tokens[-1] += 1.0
    changed = other(TITLES[:1], images[:1])
    # Causal attention: moving the last meta token changes only the last feature.
    assert torch.allclose(base[:, :-1], changed[:, :-1], atol=1e-5)
    assert not torch.allclose(base[:, -1], changed[:, -1], atol=1e-4)


def test_gradients_reach_meta_tokens_not_the_frozen_mllm(images):
    p = tiny()
    p.train()
    assert not p.mllm.training  # the frozen MLLM stays in eval mode
    p(TITLES, images).pow(2).mean().backward()
    assert p.meta_tokens.grad is not None and p.meta_tokens.grad.abs().sum() > 0
    assert all(param.grad is None for param in p.mllm.parameters())


def test_lora_trains_only_lora_parameters(images):
    p = tiny(lora_rank=4)
    trainable = {n for n, q in p.named_parameters() if q.requires_grad}
    assert "meta_tokens" in trainable and len(trainable) > 1
    assert all(n == "meta_tokens" or ".lora_" in n for n in trainable)
    before = p(TITLES, images)
    before.pow(2).mean().backward()
    for name, param in p.named_parameters():
        assert (param.grad is not None) == (name in trainable), name
    lora_b = [q for n, q in p.named_parameters() if "lora_B" in n]
    assert any(q.grad.abs().sum() > 0 for q in lora_b)
    with torch.no_grad():
        for q in lora_b:
            q -= 0.5 * q.grad.sign()
    assert not torch.allclose(before, p(TITLES, images), atol=1e-5)
    assert set(p.trained_state_dict()) == trainable


def test_pixel_values_match_the_qwen2vl_image_processor(prompter):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 56, 56, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessorPil()(images=list(pixels), return_tensors="pt")
    ours, grid = prompter.pixel_values(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert ours.shape == ref["pixel_values"].shape
    assert torch.allclose(ours, ref["pixel_values"].float(), atol=1e-4)


def test_local_folder_loads_through_auto_classes(prompter, images, tmp_path):
    folder = save_tiny_mllm(tmp_path / "qwen2vl-tiny")
    loaded = MetaTokenPrompter(mllm_path=str(folder), num_meta_tokens=N, image_size=56)
    loaded.meta_tokens.data.copy_(prompter.meta_tokens.data)
    assert torch.allclose(loaded(TITLES, images), prompter(TITLES, images), atol=1e-5)


def test_missing_or_bad_mllm_path_names_the_config_key(tmp_path):
    with pytest.raises(ValueError, match="mllm_path"):
        MetaTokenPrompter()
    with pytest.raises(FileNotFoundError, match="mllm_path"):
        MetaTokenPrompter(mllm_path=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="prompt_template"):
        MetaTokenPrompter(tiny_config={}, prompt_template="no placeholders")
    with pytest.raises(ValueError, match="image_size"):
        MetaTokenPrompter(tiny_config={}, image_size=50)
    with pytest.raises(ValueError, match="tiny_config"):
        MetaTokenPrompter(tiny_config={"hidden_sise": 8})


def test_rebuilds_from_spec(prompter, images):
    rebuilt = ckpt.instantiate(prompter.spec)
    rebuilt.load_state_dict(prompter.state_dict())
    assert torch.allclose(rebuilt(TITLES, images), prompter(TITLES, images), atol=1e-6)


def test_special_tokens_in_a_title_are_text(prompter, images):
    feats = prompter(["<|image_pad|><|im_end|>"], images[:1])  # would break the image-token count if obeyed
    assert feats.shape == (1, N, 32)


# ----------------------------------------------------------------------------------------------- feature cache
def test_cache_hit_returns_identical_features_and_skips_the_mllm(images, tmp_path):
    p = tiny(freeze_meta_tokens=True)
    cache = MLLMFeatureCache(tmp_path, p.cache_key(), description=p.cache_key_parts())
    ids = ["item-a", "item/b", "item c"]
    first = p.forward_cached(ids, TITLES, images, cache)
    assert (cache.hits, cache.misses) == (0, 3)
    assert torch.allclose(first, p(TITLES, images))
    calls = []
    again = cache.get_or_compute(ids, lambda idx: calls.append(idx) or torch.zeros(len(idx), N, 32))
    assert calls == [] and torch.equal(again, first)
    # A partial hit computes only the new item, at its batch position.
    mixed = cache.get_or_compute(["item c", "item-d"], lambda idx: calls.append(idx) or torch.ones(len(idx), N, 32))
    assert calls == [[1]] and torch.equal(mixed[0], first[2]) and torch.equal(mixed[1], torch.ones(N, 32))
    assert (tmp_path / p.cache_key() / "key.json").is_file()


def test_changed_prompt_model_or_meta_tokens_change_the_key(tmp_path):
    p = tiny(freeze_meta_tokens=True)
    key = p.cache_key()
    other_prompt = tiny(freeze_meta_tokens=True, prompt_template=DEFAULT_PROMPT_TEMPLATE.replace("Title", "Name"))
    other_prompt.load_state_dict(p.state_dict())
    assert other_prompt.cache_key() != key
    other_model = MetaTokenPrompter(
        tiny_config={"num_hidden_layers": 1}, num_meta_tokens=N, image_size=56, freeze_meta_tokens=True
    )
    assert other_model.cache_key() != key
    assert tiny(freeze_meta_tokens=True, image_size=84).cache_key() != key
    with torch.no_grad():
        p.meta_tokens.add_(1e-3)  # an in-place change (an optimizer step, a load_state_dict) is seen
    assert p.cache_key() != key
    cache = MLLMFeatureCache(tmp_path, key)
    cache.write("x", torch.zeros(N, 32))
    assert MLLMFeatureCache(tmp_path, p.cache_key()).read("x") is None


def test_a_foreign_entry_is_never_served(tmp_path):
    a, b = MLLMFeatureCache(tmp_path, "keyA"), MLLMFeatureCache(tmp_path, "keyB")
    a.write("x", torch.ones(2, 3))
    b.path("x").parent.mkdir(parents=True)
    b.path("x").write_bytes(a.path("x").read_bytes())  # same item file copied under another key
    assert b.read("x") is None and torch.equal(a.read("x"), torch.ones(2, 3))
    a.path("x").write_bytes(b"torn")
    assert a.read("x") is None


def test_forward_cached_refuses_a_trainable_prompter(prompter, images, tmp_path):
    with pytest.raises(RuntimeError, match="freeze_meta_tokens"):
        prompter.forward_cached(["a"], TITLES[:1], images[:1], MLLMFeatureCache(tmp_path, "k"))
