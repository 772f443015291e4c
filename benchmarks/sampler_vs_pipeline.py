"""Time per image: icg's plain sampling loop vs diffusers' StableDiffusionPipeline on the same components.

Both get the same UNet, VAE and DDIM scheduler, the same conditioning tensors (``prompt_embeds`` /
``negative_prompt_embeds`` for the pipeline), steps, guidance, batch and seed. Repetitions are interleaved and the
order alternates, so drift (thermal, other processes) hits both sides alike; the medians and their ratio
(ours / pipeline, target <= 1.05) are reported.

    python -m benchmarks.sampler_vs_pipeline                                  # tiny preset, CPU
    python -m benchmarks.sampler_vs_pipeline --device cuda --preset sd15     # SD 1.5 architecture, 512 px, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from icg.diffusion.bases import from_preset
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.sampler import sample

PRESETS = {
    # size: image side in pixels; length: conditioning tokens (SD 1.5's CLIP gives 77)
    "tiny": dict(size=32, length=77, steps=20, batch=4, dtype="float32"),
    "sd15": dict(size=512, length=77, steps=30, batch=2, dtype="bfloat16"),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    return f"cpu {model}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    steps, batch = args.steps or preset["steps"], args.batch or preset["batch"]
    size, dtype = args.size or preset["size"], getattr(torch, args.dtype or preset["dtype"])
    device = torch.device(args.device)

    comps = from_preset(args.preset, device=device, dtype=dtype)
    pipe = comps.reference_pipeline()
    g = torch.Generator().manual_seed(0)
    width = comps.cross_attention_dim
    cond = Conditioning(torch.randn(batch, preset["length"], width, generator=g).to(device, dtype))
    uncond = Conditioning(torch.randn(batch, preset["length"], width, generator=g).to(device, dtype))

    def run_ours() -> None:
        with torch.no_grad():
            sample(
                comps,
                cond,
                uncond=uncond,
                guidance_scale=args.guidance,
                num_steps=steps,
                height=size,
                width=size,
                generator=torch.Generator(device).manual_seed(1),
            )

    def run_pipe() -> None:
        pipe(
            prompt_embeds=cond.encoder_hidden_states,
            negative_prompt_embeds=uncond.encoder_hidden_states,
            guidance_scale=args.guidance,
            num_inference_steps=steps,
            height=size,
            width=size,
            output_type="pt",
            generator=torch.Generator(device).manual_seed(1),
        )

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    timed(run_ours), timed(run_pipe)  # warm-up (allocator, kernels, lazy imports)
    ours, theirs = [], []
    for rep in range(args.reps):
        order = [(run_ours, ours), (run_pipe, theirs)]
        for fn, out in order if rep % 2 == 0 else order[::-1]:
            out.append(timed(fn) / batch)
    result = {
        "benchmark": "sampler_vs_pipeline",
        "preset": args.preset,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "steps": steps,
        "batch": batch,
        "guidance": args.guidance,
        "reps": args.reps,
        "ours_s_per_image": statistics.median(ours),
        "pipeline_s_per_image": statistics.median(theirs),
        "ours_all": ours,
        "pipeline_all": theirs,
    }
    result["ratio"] = result["ours_s_per_image"] / result["pipeline_s_per_image"]
    print(
        f"| {result['device']} | {args.preset} {size}px {result['dtype']} | T={steps} B={batch} cfg={args.guidance} "
        f"| {result['ours_s_per_image']:.4f} | {result['pipeline_s_per_image']:.4f} | {result['ratio']:.3f} |"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
