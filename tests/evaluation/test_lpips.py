"""LPIPS to the reference with a local AlexNet backbone: torchmetrics' formula and shipped heads, no torchvision."""

from pathlib import Path

import pytest
import torch
import torchmetrics.functional.image.lpips as tm_lpips

from icg.evaluation.lpips import LPIPS, alexnet_features
from tests.helpers.lpips import save_backbone


def reference_lpips(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS written out: scale to [-1, 1], shift/scale, 5 ReLU taps, unit-normalize, squared diff, heads, mean."""
    heads = torch.load(Path(tm_lpips.__file__).parent / "lpips_models/alex.pth", map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    features = alexnet_features()
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})

    def taps(img: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((2 * img - 1) - shift) / scale, []
        for i, layer in enumerate(features):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(x.shape[0])
    for k, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        weight = heads[f"lin{k}.model.1.weight"]
        total += torch.nn.functional.conv2d((a - b) ** 2, weight).mean(dim=(1, 2, 3))
    return total


def test_lpips_matches_the_written_out_formula(tmp_path):
    state = save_backbone(tmp_path / "alexnet-owt-7be5be79.pth")
    lpips = LPIPS(tmp_path / "alexnet-owt-7be5be79.pth")
    torch.manual_seed(1)
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference_lpips(state, x, y)
    got = lpips(x, y)
    assert got.shape == (3,) and (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lpips(x, x), torch.zeros(3))
    assert not any(p.requires_grad for p in lpips.parameters())


def test_missing_or_wrong_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lpips_backbone: .*alexnet-owt"):
        LPIPS(tmp_path / "nope.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision AlexNet checkpoint"):
        LPIPS(tmp_path / "other.pth")
