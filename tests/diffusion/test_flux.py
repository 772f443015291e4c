"""Flux as a third base: the flow-matching loop against diffusers' Flux pipelines, its gradient windows, the
components and their checks, and stage 3 / export / generation on a tiny Flux (issue 14). Gradient checkpointing
is checked for every family in test_diffusion.py."""

from __future__ import annotations

import pytest
import torch

from icg.diffusion.components import DiffusionComponents, MissingComponentError
from icg.diffusion.conditioning import Conditioning, ConditioningError, check_widths, pack_latents, unpack_latents
from icg.diffusion.flux import FluxComponents
from icg.diffusion.sampler import denoising_loss, sample
from icg.diffusion.source import DiffusionSource

SIZE = 32  # pixels: the tiny VAE halves and Flux packs 2 x 2 latent cells, so 8 x 8 tokens


@pytest.fixture(scope="module")
def flux() -> FluxComponents:
    return FluxComponents.tiny()


def _cond(batch=2, length=7, seed=0, grad=False) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(batch, length, 32, generator=g).requires_grad_(grad)
    return Conditioning(hs, None, torch.randn(batch, 32, generator=g).requires_grad_(grad))


class TransformerSpy:
    """Forward hooks recording, per transformer call, whether its input and output carry a graph."""

    def __init__(self, transformer):
        self.inputs, self.outputs = [], []
        self.handles = [
            transformer.register_forward_pre_hook(
                lambda m, args, kwargs: self.inputs.append(kwargs["hidden_states"].requires_grad), with_kwargs=True
            ),
            transformer.register_forward_hook(lambda m, args, out: self.outputs.append(out[0].requires_grad)),
        ]

    def close(self):
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------------- pipeline parity
@pytest.mark.parametrize(("guidance_embeds", "true_cfg"), [(True, 1.0), (True, 3.0), (False, 3.0)])
def test_flow_sampler_matches_flux_pipeline(guidance_embeds, true_cfg):
    comps = FluxComponents.tiny(guidance_embeds=guidance_embeds, guidance=2.5)
    cond, uncond = _cond(seed=1), _cond(batch=1, seed=2)
    kwargs = dict(prompt_embeds=cond.encoder_hidden_states, pooled_prompt_embeds=cond.pooled, num_inference_steps=4,
                  height=SIZE, width=SIZE, guidance_scale=2.5, output_type="pt")  # fmt: skip
    if true_cfg > 1:
        kwargs |= dict(negative_prompt_embeds=uncond.encoder_hidden_states.repeat(2, 1, 1),
                       negative_pooled_prompt_embeds=uncond.pooled.repeat(2, 1), true_cfg_scale=true_cfg)  # fmt: skip
    with torch.no_grad():
        ref = comps.reference_pipeline()(**kwargs, generator=torch.Generator().manual_seed(7)).images
        ours = sample(comps, cond, uncond=uncond, guidance_scale=true_cfg, num_steps=4, height=SIZE,
                      generator=torch.Generator().manual_seed(7))  # fmt: skip
        other = sample(comps, cond, uncond=uncond, guidance_scale=true_cfg, num_steps=4, height=SIZE,
                       generator=torch.Generator().manual_seed(8))  # fmt: skip
    assert ours.shape == ref.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other, ref, atol=1e-3)  # not vacuous: the seed matters


def test_reference_guided_flow_sampler_matches_flux_img2img_pipeline(flux):
    cond = _cond(seed=1)
    reference = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))

    def gens():
        return [torch.Generator().manual_seed(s) for s in (11, 12)]

    with torch.no_grad():
        ref = flux.reference_pipeline("img2img")(
            prompt_embeds=cond.encoder_hidden_states, pooled_prompt_embeds=cond.pooled, image=reference,
            strength=0.5, num_inference_steps=5, height=SIZE, width=SIZE, guidance_scale=flux.guidance,
            generator=gens(), output_type="pt",
        ).images  # fmt: skip
        ours = sample(flux, cond, num_steps=5, reference=reference, strength=0.5, height=SIZE, generator=gens())
        alone = sample(flux, Conditioning(cond.encoder_hidden_states[1:], None, cond.pooled[1:]), num_steps=5,
                       reference=reference[1:], strength=0.5, height=SIZE, generator=gens()[1:])  # fmt: skip
        other = sample(flux, cond, num_steps=5, reference=1 - reference, strength=0.5, height=SIZE, generator=gens())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, ours[1:], atol=1e-5, rtol=1e-5)  # per-image generators: batch-independent
    assert not torch.allclose(other, ours, atol=1e-3)  # the reference matters


@torch.no_grad()
def test_user_guidance_on_the_flow_is_true_cfg_with_the_cold_start_negative(flux):
    cond, negative, empty = _cond(seed=1), _cond(seed=3), _cond(batch=1, seed=2)
    run = {"num_steps": 4, "height": SIZE}

    def draw(**kwargs):
        return sample(flux, cond, generator=torch.Generator().manual_seed(7), **run, **kwargs)

    assert torch.equal(draw(user_guidance=1.0, user_negative=negative), draw())  # off: the chain as before
    guided = draw(user_guidance=2.5, user_negative=negative)
    torch.testing.assert_close(guided, draw(guidance_scale=2.5, uncond=negative), atol=1e-5, rtol=1e-5)
    assert (guided - draw()).abs().max() > 1e-3
    both = draw(user_guidance=2.5, user_negative=negative, guidance_scale=3.0, uncond=empty)
    assert (both - guided).abs().max() > 1e-3  # the empty-title guidance on top changes it


# ------------------------------------------------------------------------------------------- gradient windows
def test_last_k_keeps_graph_only_inside_window_and_counts_the_steps_that_run(flux):
    for strength, calls in ((1.0, 5), (0.6, 3)):
        cond = _cond(grad=True)
        spy = TransformerSpy(flux.transformer)
        try:
            img = sample(
                flux,
                cond,
                num_steps=5,
                grad_window="last_k",
                k=2,
                height=SIZE,
                strength=strength,
                reference=torch.rand(2, 3, SIZE, SIZE),
                generator=torch.Generator().manual_seed(0),
            )
        finally:
            spy.close()
        assert spy.outputs == [False] * (calls - 2) + [True, True]
        assert spy.inputs == [False] * (calls - 1) + [True]  # the window's first input is detached
        img.sum().backward()
        assert cond.encoder_hidden_states.grad.abs().sum() > 0 and cond.pooled.grad.abs().sum() > 0
    with torch.no_grad():
        assert not sample(flux, _cond(grad=True), num_steps=3, height=SIZE, grad_window="last_k").requires_grad


def test_random_step_and_x0_shortcut_on_the_flow(flux, monkeypatch):
    seen = set()
    for seed in range(5):
        cond = _cond(grad=True)
        spy = TransformerSpy(flux.transformer)
        try:
            img = sample(flux, cond, num_steps=8, grad_window="random_step", random_step_range=(3, 6), height=SIZE,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
        finally:
            spy.close()
        assert sum(spy.outputs) == 1 and spy.outputs[-1] and 3 <= len(spy.outputs) - 1 <= 6
        seen.add(len(spy.outputs) - 1)
        img.mean().backward()
        assert cond.encoder_hidden_states.grad.abs().sum() > 0
    assert len(seen) > 1
    # The shortcut returns x_t - sigma_t * v of the last gradient step (sigma_t = t / 1000 on Flux's schedule).
    records = []
    original = flux.scheduler.step

    def spy_step(v, t, x, **kwargs):
        records.append((v.detach().clone(), float(t) / 1000, x.detach().clone()))
        return original(v, t, x, **kwargs)

    monkeypatch.setattr(flux.scheduler, "step", spy_step)
    kw = dict(num_steps=4, height=SIZE, decode=False)
    with torch.no_grad():
        full = sample(flux, _cond(), generator=torch.Generator().manual_seed(0), **kw)
        records.clear()
        refl = sample(flux, _cond(), generator=torch.Generator().manual_seed(0), grad_window="random_step",
                      random_step_range=(2, 2), **kw)  # fmt: skip
        last = sample(flux, _cond(), generator=torch.Generator().manual_seed(0), grad_window="last_k", k=1,
                      x0_shortcut=True, **kw)  # fmt: skip
    assert len(records) == 3 + 4  # the shortcut stops after its gradient step
    v, sigma, x = records[2]
    torch.testing.assert_close(refl, x - sigma * v, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(refl, full, atol=1e-3)
    # Euler's last step goes to sigma = 0, i.e. lands on its own predicted x0: the shortcut there is the full chain.
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-5)


def test_flux_denoising_loss_is_seeded_and_reaches_the_conditioning(flux):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cond = _cond(grad=True)
    a = denoising_loss(flux, images, cond, torch.Generator().manual_seed(1))
    b = denoising_loss(flux, images, cond, torch.Generator().manual_seed(1))
    c = denoising_loss(flux, images, cond, torch.Generator().manual_seed(2))
    assert torch.isfinite(a) and a.item() == b.item() and a.item() != c.item()
    a.backward()
    assert cond.encoder_hidden_states.grad.abs().sum() > 0 and cond.pooled.grad.abs().sum() > 0
    assert all(p.grad is None for p in flux.transformer.parameters())


def test_flux_sampler_refusals(flux):
    with pytest.raises(ValueError, match="no eta"):
        sample(flux, _cond(), num_steps=2, height=SIZE, eta=0.5)
    with pytest.raises(ValueError, match="multiples of 4"):
        sample(flux, _cond(), num_steps=2, height=30)
    with pytest.raises(ConditioningError, match="cannot mask padding"):
        sample(flux, Conditioning(torch.randn(2, 3, 32), torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.randn(2, 32)),
               num_steps=1, height=SIZE)  # fmt: skip
    with pytest.raises(ConditioningError, match="needs Conditioning.pooled"):
        sample(flux, Conditioning(torch.randn(2, 3, 32)), num_steps=1, height=SIZE)
    latents = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(unpack_latents(pack_latents(latents), 8, 8), latents, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- components, checks
def test_flux_folder_loads_through_the_config_key_and_wrong_variants_are_named(tmp_path, flux):
    flux.save_pretrained(tmp_path / "flux")
    DiffusionComponents.tiny().save_pretrained(tmp_path / "sd15")
    key = "model.init_args.diffusion.path"
    loaded = DiffusionSource(str(tmp_path / "flux"), variant="flux", guidance=2.0).load(key)
    assert isinstance(loaded, FluxComponents) and loaded.guidance == 2.0 and loaded.family.name == "flux"
    assert not any(p.requires_grad for p in loaded.transformer.parameters())
    cond = _cond()
    with torch.no_grad():
        a = sample(loaded, cond, num_steps=2, height=SIZE, generator=torch.Generator().manual_seed(0))
        b = sample(FluxComponents.tiny(guidance=2.0), cond, num_steps=2, height=SIZE,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(MissingComponentError, match=rf"{key}=.*transformer/ \(a Flux folder\).*variant to flux"):
        DiffusionSource(str(tmp_path / "flux"), variant="sd15").load(key)
    with pytest.raises(MissingComponentError, match=rf"{key}=.*holds a UNet.*variant='flux'"):
        DiffusionSource(str(tmp_path / "sd15"), variant="flux").load(key)
    with pytest.raises(ValueError, match=r"model.init_args.diffusion.variant='sd3': expected one of sd15, sdxl, flux"):
        DiffusionSource(variant="sd3").load(key)


def test_adapter_widths_are_checked_against_the_transformer_naming_both_keys():
    transformer = FluxComponents.tiny(cross_attention_dim=64, pooled_dim=48).transformer
    adapter_key, pooled_key, base = "model.adapter.cross_attention_dim", "model.adapter.pooled_dim", "model.diffusion"
    with pytest.raises(ConditioningError) as err:  # an SD 1.5 adapter (768, no pooled) on Flux
        check_widths(768, transformer, adapter_key, base, pooled_dim=None, pooled_key=pooled_key)
    assert f"{adapter_key}=768" in str(err.value) and f"{base} has joint_attention_dim (its token stream)=64" in str(
        err.value
    )
    with pytest.raises(ConditioningError, match=rf"{pooled_key}=None but the Flux transformer .*{base} expects .* 48"):
        check_widths(64, transformer, adapter_key, base, pooled_dim=None, pooled_key=pooled_key)
    check_widths(64, transformer, adapter_key, base, pooled_dim=48, pooled_key=pooled_key)
