"""UserFusion variants and the ConditioningAdapter against tiny stock diffusers UNets."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from icg import ckpt
from icg.diffusion.conditioning import Conditioning, ConditioningError, predict_noise
from icg.models.adapter import ConditioningAdapter
from icg.models.fusion import UserFusion

B, N, D, U = 3, 5, 16, 8


@pytest.fixture
def feats() -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def users() -> torch.Tensor:
    return torch.randn(B, U, generator=torch.Generator().manual_seed(1))


def perturb(module: torch.nn.Module) -> None:
    torch.manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))


# ------------------------------------------------------------------------------------------------------ fusion
def test_film_is_the_identity_at_init_and_trainable(feats, users):
    fusion = UserFusion(D, U, "film")
    out = fusion(feats, users)
    assert torch.equal(out, feats)
    out.pow(2).sum().backward()
    # The zero-initialised gate still gets a gradient, so training can open it.
    assert fusion.gate.weight.grad.abs().sum() > 0


def test_user_token_adds_one_token_and_keeps_the_item_tokens(feats, users):
    fusion = UserFusion(D, U, "user_token")
    out = fusion(feats, users)
    assert out.shape == (B, N + 1, D) and fusion.num_added_tokens == 1
    assert torch.equal(out[:, :N], feats)


@pytest.mark.parametrize("fusion_type", ["user_token", "film"])
def test_different_users_give_different_outputs(feats, users, fusion_type):
    fusion = UserFusion(D, U, fusion_type)
    perturb(fusion)
    same_item = feats[:1].expand(B, -1, -1)
    out = fusion(same_item, users)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.equal(fusion(same_item, users[:1].expand(B, -1))[0], fusion(same_item, users[:1].expand(B, -1))[1])


def test_none_passes_through_and_needs_no_user(feats):
    fusion = UserFusion(D, U, "none")
    assert fusion(feats, None) is feats
    assert len(list(fusion.parameters())) == 0


def test_fusion_errors_and_spec(feats):
    with pytest.raises(ValueError, match="fusion_type"):
        UserFusion(D, U, "concat")
    with pytest.raises(ValueError, match="user embedding"):
        UserFusion(D, U, "film")(feats, None)
    with pytest.raises(ValueError, match="user_emb"):
        UserFusion(D, U, "film")(feats, torch.zeros(B, U + 1))
    fusion = UserFusion(D, U, "film")
    rebuilt = ckpt.instantiate(fusion.spec)
    rebuilt.load_state_dict(fusion.state_dict())
    assert rebuilt.fusion_type == "film"


# ----------------------------------------------------------------------------------------------------- adapter
def tiny_unet(cross_attention_dim: int, sdxl: bool = False) -> UNet2DConditionModel:
    """A diffusers UNet with the real conditioning widths and tiny everything else."""
    torch.manual_seed(0)
    extra = {}
    if sdxl:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 1280 + 6 * 8,
        }
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
        **extra,
    )


def test_sd15_widths_and_unet_call(feats):
    adapter = ConditioningAdapter(D, 768, num_layers=1, num_heads=4, num_tokens=77)
    cond = adapter(feats)
    assert isinstance(cond, Conditioning)
    assert cond.encoder_hidden_states.shape == (B, 77, 768) and cond.pooled is None and cond.attention_mask is None
    unet = tiny_unet(768)
    adapter.check_unet(unet, unet_key="model.diffusion.init_args.path")
    eps = predict_noise(unet, torch.randn(B, 4, 8, 8), torch.tensor(10), cond)
    eps.pow(2).mean().backward()
    assert adapter.queries.grad.abs().sum() > 0 and adapter.in_proj[1].weight.grad.abs().sum() > 0


def test_sdxl_widths_with_pooled_vector(feats):
    adapter = ConditioningAdapter(D, 2048, num_layers=1, num_heads=2, pooled_dim=1280)
    cond = adapter(feats)
    assert cond.encoder_hidden_states.shape == (B, N, 2048) and cond.pooled.shape == (B, 1280)
    unet = tiny_unet(2048, sdxl=True)
    adapter.check_unet(unet, unet_key="model.diffusion.init_args.path")
    assert predict_noise(unet, torch.randn(B, 4, 8, 8), torch.tensor(10), cond).shape == (B, 4, 8, 8)


def test_width_mismatch_names_both_config_keys(feats):
    adapter = ConditioningAdapter(D, 768, num_layers=1)
    with pytest.raises(ConditioningError) as err:
        adapter.check_unet(tiny_unet(1024), unet_key="model.diffusion.init_args.path")
    assert "model.adapter.init_args.cross_attention_dim" in str(err.value)
    assert "model.diffusion.init_args.path" in str(err.value)
    with pytest.raises(ConditioningError, match="model.adapter.init_args.pooled_dim"):
        ConditioningAdapter(D, 2048, num_layers=1).check_unet(tiny_unet(2048, sdxl=True), unet_key="unet")


def test_keep_n_mode_carries_the_mask_and_ignores_padded_tokens(feats):
    adapter = ConditioningAdapter(D, 32, num_layers=2, num_heads=4, pooled_dim=8).eval()
    mask = torch.ones(B, N, dtype=torch.long)
    mask[0, -2:] = 0
    cond = adapter(feats, mask)
    assert torch.equal(cond.attention_mask, mask)
    garbage = feats.clone()
    garbage[0, -2:] = 100.0  # padded tokens must not leak into the real ones or the pooled vector
    cond2 = adapter(garbage, mask)
    assert torch.allclose(cond.encoder_hidden_states[0, :-2], cond2.encoder_hidden_states[0, :-2], atol=1e-5)
    assert torch.allclose(cond.pooled, cond2.pooled, atol=1e-5)


def test_adapter_rebuilds_from_spec_and_checks_args(feats):
    adapter = ConditioningAdapter(D, 24, num_layers=1, num_heads=4, num_tokens=6, pooled_dim=12)
    rebuilt = ckpt.instantiate(adapter.spec)
    rebuilt.load_state_dict(adapter.state_dict())
    a, b = adapter.eval()(feats), rebuilt.eval()(feats)
    assert torch.equal(a.encoder_hidden_states, b.encoder_hidden_states) and torch.equal(a.pooled, b.pooled)
    with pytest.raises(ValueError, match="num_heads"):
        ConditioningAdapter(D, 24, num_heads=5)
    with pytest.raises(ValueError, match="in_dim"):
        adapter(torch.zeros(B, N, D + 1))


def test_user_offset_starts_as_a_no_op_and_learns_per_user():
    from icg.models.fusion import UserOffset

    torch.manual_seed(0)
    offset = UserOffset(user_dim=6, num_tokens=3, width=8)
    tokens, users = torch.randn(4, 3, 8), torch.randn(4, 6)
    torch.testing.assert_close(offset(tokens, users), tokens, rtol=0, atol=0)
    target = torch.randn(4, 3, 8)
    optimizer = torch.optim.Adam(offset.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        ((offset(tokens, users) - tokens - target) ** 2).mean().backward()
        optimizer.step()
    moved = offset(tokens, users) - tokens
    assert not torch.allclose(moved[0], moved[1], atol=1e-3)  # different users, different offsets
    assert ((moved - target) ** 2).mean() < (target**2).mean()
    with pytest.raises(ValueError, match="tokens must be B x 3 x 8"):
        offset(torch.randn(4, 2, 8), users)
    with pytest.raises(ValueError, match="user_emb must be 4 x 6"):
        offset(tokens, None)
