"""CLIP-based rewards loaded from real on-disk layouts (tiny random weights): aesthetic, CLIP relevance, image ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from icg.ckpt import instantiate
from icg.models.clip_loading import load_clip_model, load_clip_tokenizer, save_tiny_clip
from icg.models.image_ops import CLIP_MEAN, CLIP_STD, clip_preprocess, normalize, resize_center_crop
from icg.models.rewards.aesthetic import AestheticReward, LaionAestheticHead
from icg.models.rewards.base import RewardContext
from icg.models.rewards.clip_relevance import ClipRelevance

TITLES = ["the cat and the hat", "a red car in the rain"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("weights") / "clip-vit-large-patch14", seed=0)


@pytest.fixture(scope="module")
def head_path(tmp_path_factory):
    torch.manual_seed(1)
    head = LaionAestheticHead(16)  # tiny CLIP projects to 16-d; the published head takes 768-d
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    path = tmp_path_factory.mktemp("laion") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(head.state_dict(), path)
    return path


@pytest.fixture()
def images():
    torch.manual_seed(2)
    return torch.rand(2, 3, 40, 48, requires_grad=True)  # non-square, not the CLIP size: exercises resize + crop


# ------------------------------------------------------------------------------------------------------ image ops


def test_resize_center_crop_matches_torchvision_rule():
    x = torch.rand(1, 3, 40, 60)
    out = resize_center_crop(x, 20)
    assert out.shape == (1, 3, 20, 20)
    # torchvision's Resize(20) on 40x60 gives 20x30, then CenterCrop(20) keeps columns 5..24.
    ref = F.interpolate(x, size=(20, 30), mode="bicubic", align_corners=False, antialias=True)[..., :, 5:25]
    torch.testing.assert_close(out, ref)
    # Already at size: untouched.
    y = torch.rand(1, 3, 20, 20)
    assert torch.equal(resize_center_crop(y, 20), y)


def test_normalize_and_clip_preprocess_are_differentiable():
    x = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    n = normalize(x, CLIP_MEAN, CLIP_STD)
    torch.testing.assert_close(n[0, :, 0, 0], (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
    clip_preprocess(x, 4).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------ aesthetic


def test_aesthetic_loads_real_layout_and_matches_manual(clip_dir, head_path, images):
    reward = AestheticReward(clip_path=str(clip_dir), head_path=str(head_path))
    assert reward.name == "aesthetic"
    assert not any(p.requires_grad for p in reward.parameters())
    scores = reward(images, RewardContext())
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # Independent computation: full CLIPModel from the same folder, L2-normalized embedding, the head's state dict.
    clip = load_clip_model(clip_dir)
    pixels = clip_preprocess(images.detach(), 32)
    emb = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    head = LaionAestheticHead(16)
    head.load_state_dict(torch.load(head_path, weights_only=True))
    expected = head.eval()(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(scores.detach(), expected, rtol=1e-5, atol=1e-5)
    unnormalized = head(emb).squeeze(-1)
    assert not torch.allclose(unnormalized, expected)  # the normalization is really applied
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_aesthetic_safetensors_head_spec_rebuild_and_eval_lock(clip_dir, head_path, tmp_path, images):
    st = tmp_path / "head.safetensors"
    save_file(torch.load(head_path, weights_only=True), str(st))
    reward = AestheticReward(clip_path=str(clip_dir), head_path=str(st))
    reward.train()  # a LightningModule's .train() must not switch dropout on
    assert not reward.training and not reward.head.layers[1].training
    rebuilt = instantiate(reward.spec)
    torch.testing.assert_close(rebuilt(images.detach(), RewardContext()), reward(images.detach(), RewardContext()))


def test_aesthetic_missing_paths_name_the_key(clip_dir, head_path, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.rewards\.aesthetic\.clip_path: .*does not exist.*CLIP"):
        AestheticReward(str(tmp_path / "nope"), str(head_path), config_key="model.rewards.aesthetic")
    with pytest.raises(FileNotFoundError, match=r"AestheticReward head_path: .*LAION aesthetic head"):
        AestheticReward(str(clip_dir), str(tmp_path / "missing.pth"))
    empty = tmp_path / "empty_clip"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"clip_path: .*no config.json"):
        AestheticReward(str(empty), str(head_path))


def test_aesthetic_head_width_mismatch_names_both_keys(clip_dir, tmp_path):
    path = tmp_path / "head768.pth"
    torch.save(LaionAestheticHead(768).state_dict(), path)
    with pytest.raises(ValueError, match=r"head_path: the head takes 768-d.*clip_path projects to 16-d"):
        AestheticReward(str(clip_dir), str(path))


# ------------------------------------------------------------------------------------------------ CLIP relevance


def test_clip_title_relevance_matches_manual_cosine_and_has_gradient(clip_dir, images):
    reward = ClipRelevance(clip_path=str(clip_dir), mode="title")
    assert reward.name == "clip_title"
    scores = reward(images, RewardContext(titles=TITLES))
    assert scores.shape == (2,) and (scores.abs() <= 1 + 1e-6).all()
    clip, tok = load_clip_model(clip_dir), load_clip_tokenizer(clip_dir)
    t = tok(TITLES, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    text = clip.text_projection(clip.text_model(**t).pooler_output)
    img = clip.visual_projection(clip.vision_model(pixel_values=clip_preprocess(images.detach(), 32)).pooler_output)
    torch.testing.assert_close(scores.detach(), F.cosine_similarity(img, text), rtol=1e-5, atol=1e-5)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0


def test_clip_reference_and_both_modes(clip_dir, images):
    ref = ClipRelevance(str(clip_dir), mode="reference")
    same = ref(images, RewardContext(reference=images.detach()))
    torch.testing.assert_close(same, torch.ones(2), rtol=0, atol=1e-5)  # an image is its own best reference
    other = ref(images, RewardContext(reference=images.detach().flip(0)))
    assert (other < 1 - 1e-4).all()
    both = ClipRelevance(str(clip_dir), mode="both")
    title = ClipRelevance(str(clip_dir), mode="title")
    ctx = RewardContext(titles=TITLES, reference=images.detach().flip(0))
    torch.testing.assert_close(both(images, ctx), (title(images, ctx) + other) / 2)
    both(images, ctx).sum().backward()
    assert images.grad.abs().sum() > 0


def test_clip_relevance_bad_inputs(clip_dir, images, tmp_path):
    with pytest.raises(ValueError, match="mode: must be one of"):
        ClipRelevance(str(clip_dir), mode="caption")
    reward = ClipRelevance(str(clip_dir), mode="both")
    with pytest.raises(ValueError, match="needs RewardContext.titles"):
        reward(images, RewardContext())
    with pytest.raises(ValueError, match="needs RewardContext.reference"):
        reward(images, RewardContext(titles=TITLES))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        reward(images[:, :1], RewardContext(titles=TITLES, reference=images))
    no_tok = tmp_path / "clip_no_tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).symlink_to(clip_dir / f)
    with pytest.raises(FileNotFoundError, match=r"rewards\.clip\.clip_path: .*no tokenizer files"):
        ClipRelevance(str(no_tok), config_key="rewards.clip")
    ClipRelevance(str(no_tok), mode="reference")  # the image-only mode needs no tokenizer
