"""User guidance (issue 20): each step moves from the cold-start user's prediction towards the user's by a scale s.

s = 1 is the cover as trained, bit for bit and with no extra denoiser row; s != 1 is classifier-free guidance with the
pairs' cold-start conditioning as the negative (and composes with the empty-title guidance on top); bad values are
one line; an export written before the setting existed reads as 1.
"""

import contextlib
import json

import pytest
import torch

from icg.diffusion.conditioning import Conditioning
from icg.diffusion.sampler import guided_predictor
from icg.errors import ConfigError
from icg.generation import CoverGenerator, SamplerSettings, UserTable
from icg.generation.export import ExportError
from icg.generation.generator import reference_batch, sample_covers
from tests.helpers.generation import tiny_generator

USERS = ["u1", "u2", "u3"]
TITLES = ["Red star, striped", "Blue circle", "Green heart on a dark backdrop"]


@pytest.fixture(scope="module")
def gen() -> CoverGenerator:
    torch.manual_seed(3)
    return tiny_generator(UserTable(USERS, torch.randn(len(USERS) + 1, 8)))


@pytest.fixture(scope="module")
def refs() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def covers(gen, refs, users=("u1", "u3", "u2"), **kwargs) -> torch.Tensor:
    return gen(list(users), TITLES, refs, item_ids=["i1", "i2", "i3"], output_type="pt", **kwargs).images


def denoiser_rows(gen, run) -> list[int]:
    """The batch of every denoiser call while ``run()`` samples."""
    rows = []
    hook = gen.diffusion.denoiser.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        run()
    finally:
        hook.remove()
    return rows


@torch.no_grad()
def test_scale_1_is_the_cover_as_trained_bit_for_bit_with_no_extra_denoiser_row(gen, refs):
    users = ["u1", "u3", "u2"]
    r = reference_batch(refs, gen.image_size)
    seeds = gen.seeds(users, ["i1", "i2", "i3"])
    emb, _ = gen.users.lookup(users)
    # the sampling path as it was before user guidance: the conditioning straight into the sampler
    before = sample_covers(gen.diffusion, gen.conditioning(emb, TITLES, r), seeds, num_steps=3, image_size=32)
    assert gen.settings.user_guidance == 1.0
    assert torch.equal(covers(gen, refs), before)
    assert torch.equal(covers(gen, refs, user_guidance=1.0), before)
    steps = gen.settings.num_steps
    assert denoiser_rows(gen, lambda: covers(gen, refs, user_guidance=1.0)) == [3] * steps
    assert denoiser_rows(gen, lambda: covers(gen, refs, user_guidance=2.0)) == [6] * steps  # + the cold-start rows
    both = denoiser_rows(gen, lambda: covers(gen, refs, user_guidance=2.0, guidance_scale=3.0))
    assert both == [9] * steps  # empty title, cold-start user, user: one call


@torch.no_grad()
def test_scale_s_is_classifier_free_guidance_with_the_cold_start_negative(gen, refs):
    users = ["u1", "u3", "u2"]
    r = reference_batch(refs, gen.image_size)
    seeds = gen.seeds(users, ["i1", "i2", "i3"])
    emb, _ = gen.users.lookup(users)
    negative = gen.conditioning(gen.users.fallback(3), TITLES, r)  # same titles and references, cold-start user
    cfg = sample_covers(gen.diffusion, gen.conditioning(emb, TITLES, r), seeds, num_steps=3, image_size=32,
                        guidance_scale=2.5, uncond=negative)  # fmt: skip
    guided = covers(gen, refs, user_guidance=2.5)
    assert torch.equal(guided, cfg)
    assert (guided - covers(gen, refs)).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every cover changed


@pytest.mark.parametrize(("s", "g"), [(2.0, 1.0), (0.5, 1.0), (0.0, 1.0), (3.0, 2.5), (0.0, 4.0)])
@torch.no_grad()
def test_the_guided_prediction_follows_the_formula(gen, refs, s, g):
    r = reference_batch(refs, gen.image_size)
    emb, _ = gen.users.lookup(["u1", "u2", "u3"])
    cond, negative = gen.conditioning(emb, TITLES, r), gen.fallback_conditioning(TITLES, r)
    uncond = gen.unconditional(3)
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    kw = {"image_size": (32, 32), "gradient_checkpointing": False, "autocast": contextlib.nullcontext()}

    def eps(c: Conditioning) -> torch.Tensor:
        return gen.diffusion.predictor(c, None, 1.0, **kw)(latents, t, False)

    guided = eps(negative) + s * (eps(cond) - eps(negative))
    expected = eps(uncond) + g * (guided - eps(uncond)) if g > 1 else guided
    got = guided_predictor(gen.diffusion, cond, uncond, g, negative, s, **kw)(latents, t, False)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # one batched call vs three: float noise x g s


@torch.no_grad()
def test_scale_0_draws_the_cold_start_users_cover_and_a_cold_start_pair_is_unmoved(gen, refs):
    r = reference_batch(refs, gen.image_size)
    seeds = gen.seeds(["u1", "u3", "u2"], ["i1", "i2", "i3"])
    cold = sample_covers(gen.diffusion, gen.fallback_conditioning(TITLES, r), seeds, num_steps=3, image_size=32)
    torch.testing.assert_close(covers(gen, refs, user_guidance=0.0), cold, atol=1e-5, rtol=0)
    strangers = ("x1", "x2", "x3")  # unknown: their conditioning is the negative, nothing to move towards
    torch.testing.assert_close(covers(gen, refs, strangers, user_guidance=4.0), covers(gen, refs, strangers),
                               atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_a_bad_scale_is_one_line_naming_it(gen, refs, bad):
    with pytest.raises(ConfigError, match=r"^user_guidance=.*: expected a finite number >= 0 \(1: the cover as"):
        covers(gen, refs, user_guidance=bad)
    assert "user_guidance" in SamplerSettings.problem({"user_guidance": bad})


def test_an_export_without_the_setting_reads_as_1_and_a_bad_one_is_refused(gen, tmp_path):
    folder = gen.save_pretrained(tmp_path / "export")
    config = json.loads((folder / "icg_config.json").read_text())
    assert config["sampler"]["user_guidance"] == 1.0
    del config["sampler"]["user_guidance"]  # as exports written before user guidance
    (folder / "icg_config.json").write_text(json.dumps(config))
    assert CoverGenerator.from_pretrained(folder).settings.user_guidance == 1.0
    config["sampler"]["user_guidance"] = -2
    (folder / "icg_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"sampler\.user_guidance=-2: expected a finite number >= 0"):
        CoverGenerator.from_pretrained(folder)
