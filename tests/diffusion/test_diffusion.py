"""icg.diffusion: conditioning contract, component loading, and the sampler's gradient window (tiny models, CPU)."""

from __future__ import annotations

import pytest
import torch

from icg.diffusion.bases import FAMILIES
from icg.diffusion.components import DiffusionComponents, MissingComponentError
from icg.diffusion.conditioning import Conditioning, ConditioningError, check_widths, predict_noise
from icg.diffusion.sampler import decode, denoising_loss, encode, gradient_steps, sample

SIZE = 16  # pixels; the tiny VAE downsamples by 2, so latents are 8 x 8


@pytest.fixture(scope="module")
def comps() -> DiffusionComponents:
    return DiffusionComponents.tiny()


@pytest.fixture(scope="module")
def comps_sdxl() -> DiffusionComponents:
    return DiffusionComponents.tiny(variant="sdxl")


def _cond(batch: int = 2, length: int = 5, width: int = 32, pooled: int | None = None, seed: int = 0, grad=False):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(batch, length, width, generator=g).requires_grad_(grad)
    p = torch.randn(batch, pooled, generator=g).requires_grad_(grad) if pooled else None
    return Conditioning(hs, None, p)


class UNetSpy:
    """Forward hooks recording, per UNet call, whether its input latents and its output carry a graph."""

    def __init__(self, unet):
        self.inputs, self.outputs = [], []
        self.handles = [
            unet.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0].requires_grad)),
            unet.register_forward_hook(lambda m, args, out: self.outputs.append(out[0].requires_grad)),
        ]

    def close(self):
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------------- pipeline parity
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sampler_matches_stable_diffusion_pipeline(comps, guidance):
    pipe = comps.reference_pipeline()
    cond, uncond = _cond(seed=1), _cond(seed=2)
    with torch.no_grad():
        ref = pipe(
            prompt_embeds=cond.encoder_hidden_states,
            negative_prompt_embeds=uncond.encoder_hidden_states,
            guidance_scale=guidance,
            num_inference_steps=4,
            height=SIZE,
            width=SIZE,
            generator=torch.Generator().manual_seed(7),
            output_type="pt",
        ).images
        ours = sample(
            comps,
            cond,
            uncond=uncond,
            guidance_scale=guidance,
            num_steps=4,
            height=SIZE,
            width=SIZE,
            generator=torch.Generator().manual_seed(7),
        )
    assert ours.shape == ref.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # The comparison is not vacuous: another seed gives another image.
    with torch.no_grad():
        other = sample(
            comps,
            cond,
            uncond=uncond,
            guidance_scale=guidance,
            num_steps=4,
            height=SIZE,
            generator=torch.Generator().manual_seed(8),
        )
    assert not torch.allclose(other, ref, atol=1e-3)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_reference_guided_sampler_matches_img2img_pipeline(comps, guidance):
    """strength < 1 starts from the noised reference latent as StableDiffusionImg2ImgPipeline does, per-image seeds."""
    pipe = comps.reference_pipeline("img2img")
    cond, uncond = _cond(seed=1), _cond(seed=2)
    reference = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))

    def gens():
        return [torch.Generator().manual_seed(s) for s in (11, 12)]

    with torch.no_grad():
        ref = pipe(
            prompt_embeds=cond.encoder_hidden_states,
            negative_prompt_embeds=uncond.encoder_hidden_states,
            image=reference,
            strength=0.6,
            guidance_scale=guidance,
            num_inference_steps=5,
            generator=gens(),
            output_type="pt",
        ).images
        ours = sample(comps, cond, uncond=uncond, guidance_scale=guidance, num_steps=5, reference=reference,
                      strength=0.6, height=SIZE, generator=gens())  # fmt: skip
        # Per-image generators: a pair's cover does not depend on the batch it is in.
        alone = sample(comps, Conditioning(cond.encoder_hidden_states[1:]), guidance_scale=guidance,
                       uncond=Conditioning(uncond.encoder_hidden_states[1:]), num_steps=5, reference=reference[1:],
                       strength=0.6, height=SIZE, generator=gens()[1:])  # fmt: skip
        full = sample(comps, cond, uncond=uncond, guidance_scale=guidance, num_steps=5, height=SIZE,
                      generator=gens())  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, ours[1:], atol=1e-5, rtol=1e-5)
    # Not vacuous: the reference matters, and strength 1 is a different (pure-noise) chain.
    assert not torch.allclose(full, ours, atol=1e-3)
    with torch.no_grad():
        other = sample(comps, cond, uncond=uncond, guidance_scale=guidance, num_steps=5, reference=1 - reference,
                       strength=0.6, height=SIZE, generator=gens())  # fmt: skip
    assert not torch.allclose(other, ours, atol=1e-3)


def test_reference_guided_gradient_window_counts_the_steps_that_run(comps):
    cond = _cond(grad=True)
    reference = torch.rand(2, 3, SIZE, SIZE)
    spy = UNetSpy(comps.unet)
    try:
        images = sample(comps, cond, num_steps=10, strength=0.5, reference=reference, grad_window="last_k", k=2,
                        height=SIZE, generator=torch.Generator().manual_seed(0))  # fmt: skip
    finally:
        spy.close()
    assert len(spy.outputs) == 5 and spy.outputs == [False, False, False, True, True]
    images.mean().backward()
    assert cond.encoder_hidden_states.grad is not None
    with pytest.raises(ValueError, match="needs `reference`"):
        sample(comps, cond, num_steps=10, strength=0.5, height=SIZE)
    with pytest.raises(ValueError, match="number of steps that run"):
        sample(comps, cond, num_steps=10, strength=0.5, reference=reference, grad_window="random_step",
               random_step_range=(2, 6), height=SIZE)  # fmt: skip
    with pytest.raises(ValueError, match="strength must be in"):
        sample(comps, cond, num_steps=10, strength=0.0, reference=reference, height=SIZE)


# ------------------------------------------------------------------------------------------- gradient window
def test_last_k_keeps_graph_only_inside_window(comps):
    cond = _cond(grad=True)
    spy = UNetSpy(comps.unet)
    try:
        img = sample(
            comps, cond, num_steps=5, grad_window="last_k", k=2, height=SIZE, generator=torch.Generator().manual_seed(0)
        )
    finally:
        spy.close()
    assert spy.outputs == [False, False, False, True, True]
    # Latents entering the window were produced without grad and detached; only the second window step's input
    # carries a graph (from the first window step).
    assert spy.inputs == [False, False, False, False, True]
    img.sum().backward()
    assert cond.encoder_hidden_states.grad is not None
    assert cond.encoder_hidden_states.grad.abs().sum() > 0


def test_no_window_gives_no_graph(comps):
    cond = _cond(grad=True)
    img = sample(comps, cond, num_steps=3, height=SIZE, generator=torch.Generator().manual_seed(0))
    assert not img.requires_grad


def test_random_step_has_exactly_one_grad_call_and_returns_its_x0(comps):
    seen = set()
    for seed in range(6):
        cond = _cond(grad=True)
        spy = UNetSpy(comps.unet)
        try:
            img = sample(
                comps,
                cond,
                num_steps=8,
                grad_window="random_step",
                random_step_range=(3, 6),
                height=SIZE,
                generator=torch.Generator().manual_seed(seed),
            )
        finally:
            spy.close()
        assert sum(spy.outputs) == 1
        step = len(spy.outputs) - 1  # the gradient step is the last call: later steps are skipped (ReFL)
        assert spy.outputs[step] and 3 <= step <= 6
        seen.add(step)
        img.mean().backward()
        assert cond.encoder_hidden_states.grad.abs().sum() > 0
    assert len(seen) > 1, "the gradient step should vary with the generator"
    with pytest.raises(ValueError, match="x0_shortcut=False"):
        sample(comps, _cond(), num_steps=8, grad_window="random_step", random_step_range=(3, 6), x0_shortcut=False)
    with pytest.raises(ValueError, match="random_step_range"):
        sample(comps, _cond(), num_steps=8, grad_window="random_step", random_step_range=(3, 8))


def test_x0_shortcut_returns_last_gradient_steps_predicted_x0(comps, monkeypatch):
    records = []
    original_step = comps.scheduler.step

    def spy_step(*args, **kwargs):
        out = original_step(*args, **kwargs)
        records.append(out.pred_original_sample.detach().clone())
        return out

    monkeypatch.setattr(comps.scheduler, "step", spy_step)
    kw = dict(num_steps=4, grad_window="last_k", k=1, height=SIZE, decode=False)
    with torch.no_grad():
        full = sample(comps, _cond(), generator=torch.Generator().manual_seed(0), **kw)
        records.clear()
        short = sample(comps, _cond(), generator=torch.Generator().manual_seed(0), x0_shortcut=True, **kw)
    assert len(records) == 4
    torch.testing.assert_close(short, records[-1])
    assert not torch.allclose(short, full)
    # ReFL's step at the last index is the same computation as DRaFT-1 with the shortcut.
    with torch.no_grad():
        refl = sample(
            comps,
            _cond(),
            generator=torch.Generator().manual_seed(0),
            num_steps=4,
            grad_window="random_step",
            random_step_range=(3, 3),
            height=SIZE,
            decode=False,
        )
    torch.testing.assert_close(refl, short)


# Pixel side and title-prompt length of each family's tiny components: SD's VAE halves (8 x 8 latents); Flux also
# packs 2 x 2 latent cells (8 x 8 tokens).
FAMILY_SIZES = {"sd15": (16, 5), "flux": (32, 7)}


@pytest.fixture(scope="module", params=list(FAMILY_SIZES))
def tiny_family(request):
    """(tiny components of a registered family, pixel side, a conditioning builder of its widths)."""
    components = FAMILIES[request.param].tiny()
    size, length = FAMILY_SIZES[request.param]

    def cond(batch: int = 2, seed: int = 0, grad: bool = False) -> Conditioning:
        return _cond(batch, length, components.cross_attention_dim, components.pooled_dim, seed, grad)

    return components, size, cond


def test_gradient_checkpointing_gives_same_gradient(tiny_family):
    components, size, cond_of = tiny_family
    grads = []
    for ckpt in (False, True):
        cond = cond_of(grad=True)
        img = sample(
            components,
            cond,
            num_steps=4,
            grad_window="last_k",
            k=3,
            height=size,
            gradient_checkpointing=ckpt,
            guidance_scale=3.0,
            uncond=cond_of(batch=1, seed=5),
            generator=torch.Generator().manual_seed(0),
        )
        (img * torch.linspace(0, 1, size)).sum().backward()
        grads.append(cond.encoder_hidden_states.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_gradient_steps_and_bad_windows():
    assert gradient_steps(10, "last_k", 3) == [7, 8, 9]
    assert gradient_steps(10, "none") == []
    with pytest.raises(ValueError, match="k <= num_steps"):
        gradient_steps(4, "last_k", 5)
    with pytest.raises(ValueError, match="grad_window must be one of"):
        gradient_steps(4, "all")


# ------------------------------------------------------------------------------------------- conditioning shapes
def test_sd15_and_sdxl_conditioning_shapes_run():
    sd15 = DiffusionComponents.tiny(cross_attention_dim=768)
    assert (sd15.cross_attention_dim, sd15.pooled_dim, sd15.latent_channels) == (768, None, 4)
    with torch.no_grad():
        img = sample(sd15, _cond(batch=1, length=77, width=768), num_steps=2, height=SIZE)
    assert img.shape == (1, 3, SIZE, SIZE) and 0 <= img.min() and img.max() <= 1

    sdxl = DiffusionComponents.tiny(cross_attention_dim=2048, variant="sdxl", pooled_dim=1280)
    assert (sdxl.cross_attention_dim, sdxl.pooled_dim) == (2048, 1280)
    cond = _cond(batch=2, length=77, width=2048, pooled=1280, grad=True)
    img = sample(
        sdxl,
        cond,
        num_steps=2,
        height=SIZE,
        grad_window="last_k",
        guidance_scale=2.0,
        uncond=_cond(batch=1, length=77, width=2048, pooled=1280, seed=3),
    )
    assert img.shape == (2, 3, SIZE, SIZE)
    img.mean().backward()
    assert cond.pooled.grad.abs().sum() > 0  # the pooled vector reaches the UNet through added_cond_kwargs


def test_predict_noise_sdxl_time_ids_and_errors(comps, comps_sdxl):
    lat = torch.randn(2, 4, 8, 8)
    cond = _cond(pooled=32)
    with torch.no_grad():
        a = predict_noise(comps_sdxl.unet, lat, 10, cond, image_size=(16, 16))
        b = predict_noise(comps_sdxl.unet, lat, 10, cond, image_size=(32, 16))
    assert a.shape == lat.shape and not torch.allclose(a, b)  # time ids come from the image size
    with pytest.raises(ConditioningError, match="needs Conditioning.pooled"):
        predict_noise(comps_sdxl.unet, lat, 10, _cond())
    with pytest.raises(ConditioningError, match="takes no pooled"):
        predict_noise(comps.unet, lat, 10, cond)
    with pytest.raises(ConditioningError, match="batch"):
        predict_noise(comps.unet, lat, 10, _cond(batch=3))


def test_attention_mask_and_cat(comps):
    lat = torch.randn(2, 4, 8, 8)
    cond = _cond()
    masked = Conditioning(cond.encoder_hidden_states, torch.tensor([[1, 1, 0, 0, 0]] * 2))
    with torch.no_grad():
        assert not torch.allclose(predict_noise(comps.unet, lat, 10, cond), predict_noise(comps.unet, lat, 10, masked))
    both = Conditioning.cat([cond, masked])
    assert both.batch_size == 4 and both.attention_mask.tolist()[0] == [1] * 5
    assert cond.repeat(3).batch_size == 6
    with pytest.raises(ConditioningError, match="B x L x C"):
        Conditioning(torch.zeros(2, 5))
    with pytest.raises(ConditioningError, match="different L x C"):
        Conditioning.cat([cond, _cond(length=4)])


def test_check_widths_names_both_keys(comps, comps_sdxl):
    check_widths(32, comps.unet, "model.adapter.out_dim", "model.diffusion.path")
    with pytest.raises(ConditioningError) as err:
        check_widths(768, comps.unet, "model.adapter.out_dim", "model.diffusion.path")
    assert "model.adapter.out_dim=768" in str(err.value) and "model.diffusion.path" in str(err.value)
    assert "cross_attention_dim=32" in str(err.value)
    check_widths(32, comps_sdxl.unet, "a.out", "d.path", pooled_dim=32, pooled_key="a.pooled")
    with pytest.raises(ConditioningError, match="a.pooled=None.*d.path"):
        check_widths(32, comps_sdxl.unet, "a.out", "d.path", pooled_key="a.pooled")


# ------------------------------------------------------------------------------------------- loading
def test_load_from_saved_folder_and_missing_parts(tmp_path, comps):
    comps.save_pretrained(tmp_path / "sd")
    loaded = DiffusionComponents.from_pretrained_folder(tmp_path / "sd", config_key="model.diffusion.path")
    assert not any(p.requires_grad for p in loaded.unet.parameters()) and not loaded.vae.training
    cond = _cond()
    with torch.no_grad():
        a = sample(comps, cond, num_steps=3, height=SIZE, generator=torch.Generator().manual_seed(0))
        b = sample(loaded, cond, num_steps=3, height=SIZE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)

    with pytest.raises(ValueError, match="sd15-layout UNet but variant='sdxl'"):
        DiffusionComponents.from_pretrained_folder(tmp_path / "sd", variant="sdxl")
    with pytest.raises(MissingComponentError, match="model.diffusion.path=.*not a directory"):
        DiffusionComponents.from_pretrained_folder(tmp_path / "nowhere", config_key="model.diffusion.path")
    for weights in (tmp_path / "sd" / "vae").glob("diffusion_pytorch_model*"):
        weights.unlink()
    with pytest.raises(MissingComponentError, match=r"model.diffusion.path=.*vae/diffusion_pytorch_model"):
        DiffusionComponents.from_pretrained_folder(tmp_path / "sd", config_key="model.diffusion.path")
    (tmp_path / "sd" / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(MissingComponentError, match=r"my.key=.*scheduler/scheduler_config.json"):
        DiffusionComponents.from_pretrained_folder(tmp_path / "sd", config_key="my.key")


def test_sdxl_folder_roundtrip(tmp_path, comps_sdxl):
    comps_sdxl.save_pretrained(tmp_path)
    loaded = DiffusionComponents.from_pretrained_folder(tmp_path, variant="sdxl")
    assert loaded.pooled_dim == 32


# ------------------------------------------------------------------------------------------- VAE and regularizer
def test_denoising_loss_and_vae_helpers(comps):
    images = torch.rand(2, 3, SIZE, SIZE)
    cond = _cond(grad=True)
    loss = denoising_loss(comps, images, cond, generator=torch.Generator().manual_seed(0))
    again = denoising_loss(comps, images, cond, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() == pytest.approx(again.item())
    loss.backward()
    assert cond.encoder_hidden_states.grad.abs().sum() > 0
    with torch.no_grad():
        z = encode(comps.vae, images, torch.Generator().manual_seed(0))
        out = decode(comps.vae, z)
    assert z.shape == (2, 4, 8, 8) and out.shape == images.shape and 0 <= out.min() and out.max() <= 1
