"""The MLLM probe (icg.evaluation.mllm_probe): the linear probe scores what features carry and only that, the
prompter probe reports each input and attribute, and the platform probe reads the truth's labels."""

import numpy as np
import pytest
import torch

from icg.evaluation.mllm_probe import linear_probe, probe_platform, probe_prompter, seed_meta_tokens
from icg.models.meta_prompt import MetaTokenPrompter


def test_linear_probe_reads_what_the_features_carry_and_nothing_else():
    rng = np.random.default_rng(0)
    labels = np.array(["red", "green", "blue"] * 40)
    centres = {c: rng.normal(size=8) * 4 for c in ("red", "green", "blue")}
    carrying = np.stack([centres[c] for c in labels]) + rng.normal(size=(120, 8))
    test = np.arange(120) % 4 == 0
    assert linear_probe(carrying, labels, test) == 1.0
    assert linear_probe(rng.normal(size=(120, 8)), labels, test) < 0.6  # chance is 1/3
    with pytest.raises(ValueError, match="test"):
        linear_probe(carrying, labels, np.zeros(120, dtype=bool))


def test_prompter_probe_on_solid_colours():
    torch.manual_seed(0)
    prompter = MetaTokenPrompter(tiny_config={}, num_meta_tokens=2, image_size=56)
    names = ["red", "green", "blue"] * 8
    images = torch.eye(3)[torch.tensor([0, 1, 2] * 8)][:, :, None, None].expand(24, 3, 16, 16).clone()
    titles = [f"a {c} cover" for c in names]
    test = [i >= 18 for i in range(24)]
    result = probe_prompter(prompter, titles, images, {"colour": names}, test)
    assert set(result) == {"title_image/colour", "image_only/colour"}
    assert all(0.0 <= v <= 1.0 for v in result.values())
    # a solid colour is linear in the pixels, so even a random vision tower passes it to the meta positions
    assert result["image_only/colour"] == 1.0


def test_seed_meta_tokens_depends_on_the_seed_only():
    a = MetaTokenPrompter(tiny_config={}, num_meta_tokens=3, image_size=56)
    b = MetaTokenPrompter(tiny_config={"seed": 5}, num_meta_tokens=3, image_size=56)
    seed_meta_tokens(a, 7)
    seed_meta_tokens(b, 7)
    scale = lambda p: float(p.mllm.get_input_embeddings().weight.std())  # noqa: E731
    assert torch.allclose(a.meta_tokens / scale(a), b.meta_tokens / scale(b))


def test_platform_probe_reads_the_truths_labels(tiny_platform):
    result = probe_platform(tiny_platform, {"random": None}, holdout_fraction=0.25)
    assert set(result["random"]) == {f"{i}/{a}" for i in ("title_image", "image_only") for a in ("colour", "shape")}
    assert all(0.0 <= v <= 1.0 for v in result["random"].values())
