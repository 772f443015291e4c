"""The stage-1 click model as a plain nn.Module: pixel gradients, cold start, history, titles, cache, rebuild."""

import pytest
import torch

from icg import ckpt
from icg.models.image_encoders import ClipVisionEncoder, PaletteOccupancy, TinyImageEncoder
from icg.models.preference import ItemFeatureCache, PreferenceModel

TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8, "projection_dim": 16}  # fmt: skip


def make_model(**kwargs) -> PreferenceModel:
    torch.manual_seed(0)
    encoder = kwargs.pop("image_encoder", None) or TinyImageEncoder(input_size=16, channels=[8], color_bins=2)
    hidden_dim = kwargs.pop("hidden_dim", 16)
    return PreferenceModel(encoder, num_users=kwargs.pop("num_users", 5), embed_dim=8, hidden_dim=hidden_dim, **kwargs)


@pytest.mark.parametrize("encoder", ["tiny", "clip"])
def test_gradient_reaches_pixels_through_frozen_encoder(encoder):
    image_encoder = ClipVisionEncoder(config=TINY_CLIP) if encoder == "clip" else None
    model = make_model(image_encoder=image_encoder).train()
    images = torch.rand(3, 3, 40, 40, requires_grad=True)
    model(images, torch.tensor([0, 1, 2])).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.image_encoder.parameters())  # frozen: no weight gradients
    assert not model.image_encoder.training  # train() keeps a frozen encoder in eval mode
    assert model.user_embedding_table.weight.grad is not None


def test_trainable_encoder_gets_gradients():
    model = make_model(freeze_encoder=False).train()
    model(torch.rand(2, 3, 16, 16), torch.tensor([0, 1])).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_encoder.parameters())


def test_cold_start_users_get_the_fallback_row_not_an_index_error():
    model = make_model().eval()
    images = torch.rand(4, 3, 16, 16)
    logits = model(images, torch.tensor([-1, 5, 99, 0]))  # -1 (unseen), 5 and 99 are outside [0, 5)
    fallback = model(images, torch.full((4,), model.fallback_index))
    assert torch.allclose(logits[:3], fallback[:3])
    assert not torch.allclose(logits[3], fallback[3])
    emb = model.user_embedding(torch.tensor([-1]))
    assert emb.shape == (1, 8) and torch.all(emb == 0)  # untrained fallback: zero embedding (documented)


def test_cold_start_dropout_trains_the_fallback_row():
    model = make_model(cold_start_dropout=0.5).train()
    model(torch.rand(64, 3, 16, 16), torch.zeros(64, dtype=torch.long)).sum().backward()
    assert model.user_embedding_table.weight.grad[model.fallback_index].abs().sum() > 0


def test_cold_start_dropout_mask_comes_from_the_given_generator_only():
    model = make_model(cold_start_dropout=0.5).train()
    users = torch.arange(5).repeat(20)

    def rows(seed: int) -> torch.Tensor:
        return model.user_rows(users, torch.Generator().manual_seed(seed))

    torch.manual_seed(1)
    first = rows(7)
    torch.manual_seed(2)  # the global RNG no longer matters
    assert torch.equal(first, rows(7))
    assert not torch.equal(first, rows(8))
    dropped = (first == model.fallback_index).float().mean().item()
    assert 0.3 < dropped < 0.7, dropped  # 100 draws at p = 0.5
    state = torch.random.get_rng_state()
    rows(7)
    assert torch.equal(state, torch.random.get_rng_state())  # nor is it consumed


def test_history_mean_ignores_masked_entries():
    model = make_model(history_type="mean").eval()
    images, users = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    feats = torch.randn(2, 3, model.feature_dim)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    base = model(images, users, feats, mask)
    changed = feats.clone()
    changed[~mask] = 100.0
    assert torch.allclose(base, model(images, users, changed, mask))
    assert not torch.allclose(base, model(images, users, feats))  # unmasked: the padding counts


def test_titles_are_required_and_used_when_configured():
    model = make_model(title_type="hashed").eval()
    images, users = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="titles"):
        model(images, users)
    a = model(images, users, titles=["Red circle", ""])
    b = model(images, users, titles=["Blue star on dark", ""])
    assert a[0] != b[0] and a[1] == b[1]


def test_spec_rebuilds_the_same_model():
    model = make_model(history_type="mean", title_type="hashed").eval()
    rebuilt = ckpt.instantiate(model.spec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    images, users = torch.rand(2, 3, 16, 16), torch.tensor([0, -1])
    assert torch.allclose(model(images, users, titles=["a", "b"]), rebuilt(images, users, titles=["a", "b"]))


def test_item_feature_cache_encodes_each_item_once():
    model = make_model().eval()
    cache = ItemFeatureCache(num_items=4, feature_dim=model.feature_dim)
    calls = []

    def encode(images):
        calls.append(len(images))
        return model.encode_images(images)

    images = torch.rand(3, 3, 16, 16)
    first = cache.lookup(torch.tensor([0, 2, -1]), images, encode)
    second = cache.lookup(torch.tensor([0, 2, -1]), images, encode)
    assert calls == [3, 1]  # the unknown item (-1) is encoded every time, never cached
    assert torch.allclose(first, second) and torch.allclose(first, model.encode_images(images))
    rows, mask = cache.rows(torch.tensor([[0, 1, -1]]))
    assert mask.tolist() == [[True, False, False]] and torch.allclose(rows[0, 0], first[0])


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="history_type"):
        make_model(history_type="sum")
    with pytest.raises(FileNotFoundError, match="image_encoder"):
        ClipVisionEncoder(path="/nonexistent/clip")
    with pytest.raises(ValueError, match="expected"):
        make_model()(torch.rand(2, 16, 16), torch.tensor([0, 1]))


def test_palette_occupancy_finds_hues_and_passes_gradients():
    palette = PaletteOccupancy(hues=12)
    assert palette.feature_dim == 24
    red, grey = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.4)
    red[:, 0] = 0.9  # (0.9, 0, 0): nearest to the vivid red anchor (hue 0)
    half = torch.cat([red[..., :4], grey[..., 4:]], dim=-1).requires_grad_(True)
    occ = palette(torch.cat([red, grey]))
    assert occ[0, 0] > 0.9 and occ[0].argmax() == 0
    assert occ[1].sum() < 0.05  # grey pixels go to the neutral anchors, not to a hue
    out = palette(half)
    assert out[0, 0].item() == pytest.approx(0.5, abs=0.05)
    out[0, 0].backward()
    assert half.grad.abs().sum() > 0
    encoder = TinyImageEncoder(input_size=16, channels=[], color_bins=0, palette_hues=6)
    assert encoder(torch.rand(2, 3, 20, 20)).shape == (2, encoder.feature_dim) and encoder.feature_dim == 10 + 12


def test_linear_item_tower_with_feature_standardization():
    model = make_model(hidden_dim=0, item_norm="batch")
    assert len(model.item_tower) == 2 and isinstance(model.item_tower[0], torch.nn.BatchNorm1d)
    images = torch.rand(6, 3, 16, 16, requires_grad=True)
    model.train()(images, torch.arange(6) % 5).sum().backward()  # updates the running statistics
    assert images.grad.abs().sum() > 0
    model.eval()
    # eval mode: fixed statistics, so a cover's score does not depend on the rest of the batch
    assert torch.allclose(model(images[:1], torch.tensor([0])), model(images, torch.arange(6) % 5)[:1], atol=1e-5)
    with pytest.raises(ValueError, match="item_norm"):
        make_model(item_norm="group")
    with pytest.raises(ValueError, match="hidden_dim"):
        make_model(hidden_dim=-1)


def test_user_penalty_is_the_squared_norm_of_the_id_rows():
    model = make_model(cold_start_dropout=0.5).train()  # dropout must not reach the penalty
    with torch.no_grad():
        model.user_embedding_table.weight[2] = 1.0
    penalty = model.user_penalty(torch.tensor([2, -1, 99]))
    assert penalty.tolist() == pytest.approx([8.0, 0.0, 0.0])  # unseen users: the (zero) fallback row
