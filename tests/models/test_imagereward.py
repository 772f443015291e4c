"""ImageReward port: official key layout, tiny on-disk checkpoint through the real loading path, gradients, errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from icg.ckpt import instantiate
from icg.models.rewards.base import RewardContext
from icg.models.rewards.blip import ImageRewardModel, MedConfig
from icg.models.rewards.imagereward import ImageRewardRelevance, build_blip_tokenizer

WORDS = ["a", "the", "cat", "on", "mat", "red", "car", "in", "rain", "night", "city", "##s", "!", ",", "cafe"]
SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    vision_width=24,
    vision_depth=2,
    vision_heads=2,
    vision_patch_size=8,
    image_size=32,
    embed_dim=8,
)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """ImageReward.pt (state dict, real key names) + med_config.json + a BERT-style vocab folder, all tiny."""
    root = tmp_path_factory.mktemp("imagereward")
    vocab_dir = root / "bert-base-uncased"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    med = {"architectures": ["BertModel"], "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0}
    med |= {"model_type": "bert", "add_cross_attention": True, "encoder_width": 768, "vocab_size": 23, **TINY}
    (root / "med_config.json").write_text(json.dumps(med))
    torch.manual_seed(0)
    model = ImageRewardModel(MedConfig(**{k: v for k, v in med.items() if k in MedConfig.__dataclass_fields__}))
    for name, p in model.named_parameters():
        if name.startswith("mlp."):  # a visible score scale (the package initializes its MLP near zero)
            torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    torch.save(model.state_dict(), root / "ImageReward.pt")
    return root


def _reward(root, **kw):
    return ImageRewardRelevance(
        checkpoint_path=str(root / "ImageReward.pt"),
        med_config_path=str(root / "med_config.json"),
        tokenizer_path=str(root / "bert-base-uncased"),
        **kw,
    )


def test_full_size_keys_match_the_official_checkpoint():
    with torch.device("meta"):
        state = ImageRewardModel(MedConfig()).state_dict()
    # The published ImageReward.pt: 625 tensors, ~447M parameters (ViT-L/16 + BERT-base with cross-attention).
    assert len(state) == 625
    assert sum(v.numel() for k, v in state.items() if k != "blip.text_encoder.embeddings.position_ids") > 440e6
    shapes = {
        "blip.visual_encoder.pos_embed": (1, 197, 1024),
        "blip.visual_encoder.patch_embed.proj.weight": (1024, 3, 16, 16),
        "blip.visual_encoder.blocks.23.attn.qkv.weight": (3072, 1024),
        "blip.text_encoder.embeddings.word_embeddings.weight": (30524, 768),
        "blip.text_encoder.embeddings.position_ids": (1, 512),
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight": (768, 1024),
        "blip.text_encoder.encoder.layer.0.attention.output.LayerNorm.weight": (768,),
        "blip.vision_proj.weight": (256, 1024),
        "mlp.layers.0.weight": (1024, 768),
        "mlp.layers.7.weight": (1, 16),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert {k.split(".")[0] for k in state} == {"blip", "mlp"}


def test_tokenizer_is_blips(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    tok = build_blip_tokenizer(tmp_path / "vocab.txt")  # the file itself is accepted as well as its folder
    n = len(SPECIALS + WORDS)
    assert tok.bos_token == "[DEC]" and tok.convert_tokens_to_ids("[DEC]") == n
    assert tok.enc_token_id == n + 1 and len(tok) == n + 2
    ids = tok(["The CATS on the mat!"], padding="max_length", truncation=True, max_length=35)["input_ids"][0]
    assert len(ids) == 35
    vocab = SPECIALS + WORDS
    assert [vocab[i] for i in ids[:8]] == ["[CLS]", "the", "cat", "##s", "on", "the", "mat", "!"]
    assert vocab[ids[8]] == "[SEP]" and set(ids[9:]) == {0}


def test_loads_tiny_real_layout_scores_and_gradient(tiny_files):
    reward = _reward(tiny_files)
    assert reward.name == "imagereward" and not reward.training
    assert not any(p.requires_grad for p in reward.parameters())
    torch.manual_seed(3)
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    scores = reward(images, RewardContext(titles=["a red car in the rain", "a cat on the mat"]))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # The title reaches the score through cross-attention: another title, another score.
    other = reward(images.detach(), RewardContext(titles=["night city", "night city"]))
    assert not torch.allclose(other, scores.detach())
    rebuilt = instantiate(reward.spec)
    torch.testing.assert_close(rebuilt(images.detach(), RewardContext(titles=["night city"] * 2)), other)


def test_padding_does_not_change_the_score(tiny_files):
    reward = _reward(tiny_files)
    short = _reward(tiny_files, max_length=12)
    images = torch.rand(1, 3, 32, 32)
    ctx = RewardContext(titles=["a cat on the mat"])
    torch.testing.assert_close(reward(images, ctx), short(images, ctx), rtol=1e-5, atol=1e-5)


def test_errors_name_the_key(tiny_files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"rewards\.ir\.checkpoint_path: .*does not exist.*ImageReward\.pt"):
        ImageRewardRelevance(
            str(tmp_path / "ImageReward.pt"),
            str(tiny_files / "med_config.json"),
            str(tiny_files / "bert-base-uncased"),
            config_key="rewards.ir",
        )
    with pytest.raises(FileNotFoundError, match=r"ImageRewardRelevance med_config_path: .*med_config.json"):
        ImageRewardRelevance(str(tiny_files / "ImageReward.pt"), str(tmp_path / "m.json"), str(tiny_files))
    with pytest.raises(FileNotFoundError, match=r"tokenizer_path: .*has no vocab.txt"):
        ImageRewardRelevance(str(tiny_files / "ImageReward.pt"), str(tiny_files / "med_config.json"), str(tmp_path))
    with pytest.raises(ValueError, match="backend: must be one of"):
        _reward(tiny_files, backend="hub")
    # A checkpoint that is not the layout: strict loading reports which key and which config key.
    state = torch.load(tiny_files / "ImageReward.pt", weights_only=True)
    state.pop("mlp.layers.7.bias")
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(ValueError, match=r"(?s)checkpoint_path: .*does not match.*mlp\.layers\.7\.bias"):
        ImageRewardRelevance(
            str(tmp_path / "ImageReward.pt"), str(tiny_files / "med_config.json"), str(tiny_files / "bert-base-uncased")
        )
    # A vocabulary larger than the model's embedding table.
    big = tmp_path / "big_vocab"
    big.mkdir()
    (big / "vocab.txt").write_text("\n".join(SPECIALS + WORDS + [f"w{i}" for i in range(10)]) + "\n")
    with pytest.raises(ValueError, match=r"tokenizer_path: the tokenizer has 33 tokens but .*vocab_size 23"):
        ImageRewardRelevance(str(tiny_files / "ImageReward.pt"), str(tiny_files / "med_config.json"), str(big))


def test_needs_titles(tiny_files):
    with pytest.raises(ValueError, match="needs RewardContext.titles"):
        _reward(tiny_files)(torch.rand(1, 3, 32, 32), RewardContext())


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None, reason="image-reward is installed here")
def test_package_backend_says_how_to_fix_when_missing(tiny_files):
    with pytest.raises(ImportError, match="backend='package' needs the image-reward package"):
        _reward(tiny_files, backend="package")
