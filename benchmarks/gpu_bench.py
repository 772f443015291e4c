"""Every GPU figure icg needs, in one process and one table: SD 1.5-size architectures, random weights, 512 px, bf16.

Random weights cost the same FLOPs and memory as the real checkpoints, so nothing is downloaded. Measured, each
against its reference:

* **UNet throughput**: FLOPs of one SD 1.5 UNet forward (``torch.utils.flop_counter``) over its median time, as a
  share of the card's dense bf16 peak (from its name; H100/H200 SXM 989 TFLOP/s) and of a large bf16 matmul timed
  here (what the card reaches in practice).
* **Alignment step**: ``icg.diffusion.sampler.sample`` with a DRaFT-K window (K = 1, 2, 4) from a trainable
  conditioning (the adapter's output stand-in), a differentiable reward on the decoded image, ``backward``; median
  step time and peak CUDA memory above the models, with and without gradient checkpointing.
* **Generation**: seconds per image of icg's sampling loop vs diffusers' ``StableDiffusionPipeline`` on the same UNet,
  VAE, DDIM scheduler, conditioning tensors and seeds (interleaved repetitions; ratio ours / pipeline).
* **MLLM vs feature cache**: a 2B-size Qwen2-VL built from config (1536 wide, 28 layers; 32-layer 1280-wide vision
  tower) through ``MetaTokenPrompter``: a batch's forward vs reading the same features from ``MLLMFeatureCache``.

    python -m benchmarks.gpu_bench --device cuda --json runs/bench-gpu/gpu_bench.json    # on a CUDA machine
    python -m benchmarks.gpu_bench --smoke                                               # tiny sizes, CPU: runs?

``benchmarks/gpu_all.sh`` runs it with what it needs (docs/performance.md, "GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' data sheets, matched against the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
# A 2B-size Qwen2-VL (Qwen2-VL-2B-Instruct's widths and depths; the byte-level tiny tokenizer's small vocabulary
# replaces its 151k-token embedding table, which a forward only indexes).
QWEN2_VL_2B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vision_depth": 32,
    "vision_embed_dim": 1280,
    "vision_num_heads": 16,
    "vision_mlp_ratio": 4,
}


@dataclass
class Sizes:
    """What one run measures; ``full`` is the GPU run, ``smoke`` a tiny CPU run that proves the script works."""

    preset: str  # icg.diffusion.bases.from_preset preset: sd15 or tiny
    dtype: str
    image: int  # pixels per side
    unet_batch: int
    align_steps: int  # T of the alignment chain
    align_ks: list[int]
    gen_steps: int
    gen_batch: int
    matmul: int  # side of the square matmul that stands for the card's practical peak
    mllm: dict = field(default_factory=dict)  # tiny_config of the MLLM
    mllm_batch: int = 8
    mllm_image: int = 448
    meta_tokens: int = 64
    reps: int = 3


FULL = Sizes("sd15", "bfloat16", 512, 8, 20, [1, 2, 4], 30, 4, 8192, QWEN2_VL_2B)
SMOKE = Sizes("tiny", "float32", 32, 2, 4, [1, 2], 4, 2, 128, {}, mllm_batch=2, mllm_image=56, meta_tokens=4, reps=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def bench_matmul(sizes: Sizes, device: torch.device, dtype: torch.dtype) -> dict:
    n = sizes.matmul
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: a @ b, device, reps=max(sizes.reps, 5), warmup=3)
    return {"size": n, "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def bench_unet(comps, sizes: Sizes, device: torch.device, dtype: torch.dtype, matmul_tflops: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    unet = comps.unet
    side = sizes.image // comps.vae_scale_factor
    latents = torch.randn(sizes.unet_batch, unet.config.in_channels, side, side, device=device, dtype=dtype)
    context = torch.randn(sizes.unet_batch, 77, comps.cross_attention_dim, device=device, dtype=dtype)
    step = torch.tensor(500, device=device)

    def forward() -> None:
        with torch.no_grad():
            unet(latents, step, encoder_hidden_states=context)

    with FlopCounterMode(display=False) as counter:
        forward()
    flops = counter.get_total_flops()
    seconds = _median_seconds(forward, device, reps=max(sizes.reps, 5), warmup=2)
    tflops = flops / seconds / 1e12
    peak = _peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {
        "batch": sizes.unet_batch,
        "latent_side": side,
        "gflops_per_forward": flops / 1e9,
        "seconds": seconds,
        "tflops": tflops,
        "spec_peak_tflops": peak,
        "share_of_spec_peak": tflops / peak if peak else None,
        "share_of_measured_matmul": tflops / matmul_tflops,
    }


def bench_alignment(comps, sizes: Sizes, device: torch.device) -> list[dict]:
    from icg.diffusion.conditioning import Conditioning
    from icg.diffusion.sampler import sample

    rows = []
    for checkpointing in (False, True):
        for k in sizes.align_ks:
            gen = torch.Generator().manual_seed(0)
            hidden = torch.randn(1, 77, comps.cross_attention_dim, generator=gen).to(device).requires_grad_(True)

            def step(hidden=hidden, k=k, checkpointing=checkpointing) -> None:
                image = sample(
                    comps,
                    Conditioning(hidden),
                    num_steps=sizes.align_steps,
                    grad_window="last_k",
                    k=k,
                    gradient_checkpointing=checkpointing,
                    height=sizes.image,
                    width=sizes.image,
                    generator=torch.Generator(device).manual_seed(1),
                )
                ((image - 0.5) ** 2).mean().backward()  # any differentiable reward of the pixels
                hidden.grad = None

            base = 0
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            seconds = _median_seconds(step, device, reps=sizes.reps)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
            rows.append(
                {
                    "T": sizes.align_steps,
                    "K": k,
                    "checkpointing": checkpointing,
                    "step_s": seconds,
                    "peak_mib_above_models": peak,
                }
            )
    return rows


def bench_generation(comps, sizes: Sizes, device: torch.device, dtype: torch.dtype) -> dict:
    from icg.diffusion.conditioning import Conditioning
    from icg.diffusion.sampler import sample

    pipe = comps.reference_pipeline()
    gen = torch.Generator().manual_seed(0)
    width = comps.cross_attention_dim
    cond = Conditioning(torch.randn(sizes.gen_batch, 77, width, generator=gen).to(device, dtype))
    uncond = Conditioning(torch.randn(sizes.gen_batch, 77, width, generator=gen).to(device, dtype))

    def ours() -> None:
        with torch.no_grad():
            sample(
                comps,
                cond,
                uncond=uncond,
                guidance_scale=7.5,
                num_steps=sizes.gen_steps,
                height=sizes.image,
                width=sizes.image,
                generator=torch.Generator(device).manual_seed(1),
            )

    def theirs() -> None:
        pipe(
            prompt_embeds=cond.encoder_hidden_states,
            negative_prompt_embeds=uncond.encoder_hidden_states,
            guidance_scale=7.5,
            num_inference_steps=sizes.gen_steps,
            height=sizes.image,
            width=sizes.image,
            output_type="pt",
            generator=torch.Generator(device).manual_seed(1),
        )

    ours(), theirs()  # warm-up
    times: dict[str, list[float]] = {"ours": [], "pipeline": []}
    for rep in range(sizes.reps):
        order = [("ours", ours), ("pipeline", theirs)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            times[name].append(_median_seconds(fn, device, reps=1, warmup=0) / sizes.gen_batch)
    ours_s, pipe_s = statistics.median(times["ours"]), statistics.median(times["pipeline"])
    return {
        "steps": sizes.gen_steps,
        "batch": sizes.gen_batch,
        "guidance": 7.5,
        "ours_s_per_image": ours_s,
        "pipeline_s_per_image": pipe_s,
        "ratio": ours_s / pipe_s,
    }


def bench_mllm(sizes: Sizes, device: torch.device, dtype: str) -> dict:
    from icg.models.feature_cache import MLLMFeatureCache
    from icg.models.meta_prompt import MetaTokenPrompter

    with torch.device(device):  # 2B parameters are initialised where they will run
        prompter = MetaTokenPrompter(
            tiny_config=sizes.mllm,
            num_meta_tokens=sizes.meta_tokens,
            image_size=sizes.mllm_image,
            mllm_dtype=dtype,
            freeze_meta_tokens=True,
        )
    prompter.eval()
    params = sum(p.numel() for p in prompter.parameters())
    n = sizes.mllm_batch
    titles = [f"Item {i}: a title of a few words, number {i * 7}" for i in range(n)]
    images = torch.rand(n, 3, sizes.mllm_image, sizes.mllm_image, device=device)
    ids = [f"item-{i}" for i in range(n)]

    def forward() -> None:
        with torch.no_grad():
            prompter(titles, images)

    forward_s = _median_seconds(forward, device, reps=sizes.reps, warmup=1)
    with tempfile.TemporaryDirectory() as folder:
        cache = MLLMFeatureCache(folder, prompter.cache_key())
        start = time.perf_counter()
        first = prompter.forward_cached(ids, titles, images, cache)
        _sync(device)
        cold_s = time.perf_counter() - start

        def read() -> None:
            assert torch.equal(prompter.forward_cached(ids, titles, images, cache), first)

        read_s = _median_seconds(read, device, reps=max(sizes.reps, 5))
    return {
        "params_M": params / 1e6,
        "hidden": prompter.hidden_size,
        "batch": n,
        "image": sizes.mllm_image,
        "meta_tokens": sizes.meta_tokens,
        "prompt_tokens": len(prompter.prompt_ids(titles[0])),
        "forward_s": forward_s,
        "first_pass_s": cold_s,
        "cache_read_s": read_s,
        "speedup": forward_s / read_s,
    }


@dataclass
class Result:
    env: dict
    matmul: dict
    unet: dict
    alignment: list[dict]
    generation: dict
    mllm: dict
    seconds: float

    def table(self) -> str:
        u, g, m = self.unet, self.generation, self.mllm
        share = f"{u['share_of_spec_peak']:.1%} of {u['spec_peak_tflops']:.0f}" if u["share_of_spec_peak"] else "n/a"
        lines = [
            "| part | setting | figure |",
            "| --- | --- | --- |",
            f"| matmul | {self.matmul['size']}^3 {self.env['dtype']} | {self.matmul['tflops']:.1f} TFLOP/s |",
            f"| UNet forward | batch {u['batch']}, {u['latent_side']}^2 latents, {u['gflops_per_forward']:.4g} GFLOP"
            f" | {u['seconds'] * 1e3:.1f} ms, {u['tflops']:.1f} TFLOP/s = {share} spec peak, "
            f"{u['share_of_measured_matmul']:.1%} of the matmul |",
        ]
        for row in self.alignment:
            peak = f"{row['peak_mib_above_models']:.0f} MiB" if row["peak_mib_above_models"] is not None else "n/a"
            lines.append(
                f"| alignment step | T={row['T']} K={row['K']} checkpointing={row['checkpointing']} "
                f"| {row['step_s']:.3f} s, peak {peak} |"
            )
        lines.append(
            f"| generation | T={g['steps']} batch {g['batch']} cfg {g['guidance']} | ours "
            f"{g['ours_s_per_image']:.3f} s/img, StableDiffusionPipeline {g['pipeline_s_per_image']:.3f} "
            f"s/img, ratio {g['ratio']:.3f} |"
        )
        lines.append(
            f"| MLLM vs cache | {m['params_M']:.0f}M params, batch {m['batch']}, {m['image']} px, "
            f"{m['prompt_tokens']} prompt tokens | forward {m['forward_s'] * 1e3:.1f} ms, cache read "
            f"{m['cache_read_s'] * 1e3:.1f} ms, {m['speedup']:.0f}x |"
        )
        lines.append(
            f"device: {self.env['device']}; torch {self.env['torch']}, diffusers {self.env['diffusers']}, "
            f"transformers {self.env['transformers']}; {self.seconds:.0f} s in all"
        )
        return "\n".join(lines)


def run(sizes: Sizes, device: torch.device) -> Result:
    import diffusers
    import transformers

    from icg.diffusion.bases import from_preset

    started = time.perf_counter()
    dtype = getattr(torch, sizes.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    env = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "dtype": sizes.dtype,
        "preset": sizes.preset,
        "image": sizes.image,
    }
    matmul = bench_matmul(sizes, device, dtype)
    comps = from_preset(sizes.preset, device=device, dtype=dtype)
    unet = bench_unet(comps, sizes, device, dtype, matmul["tflops"])
    alignment = bench_alignment(comps, sizes, device)
    generation = bench_generation(comps, sizes, device, dtype)
    del comps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mllm = bench_mllm(sizes, device, sizes.dtype)
    return Result(env, matmul, unet, alignment, generation, mllm, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU in seconds): proves the script runs")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (use --smoke on a CPU machine)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result = run(SMOKE if args.smoke else FULL, device)
    print(result.table())  # noqa: T201 - a benchmark's output
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({**asdict(result), "sizes": asdict(SMOKE if args.smoke else FULL)}, f, indent=1)
    return result


if __name__ == "__main__":
    main()
