"""Time per batch: frozen MLLM forward vs. reading the same meta-token features from the on-disk cache.

ICG's MLLM (and, when frozen, the meta tokens) can leave the training step: features are computed once per item
and read back from ``MLLMFeatureCache``. This measures what that saves, for the tiny Qwen2-VL used in tests and a
mid-size Qwen2-VL built from config (random weights; the cost of a forward does not depend on the values).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_cache.py --json benchmarks/results/feature_cache.json

Numbers go to docs/performance.md ("MLLM feature cache").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from icg.models.feature_cache import MLLMFeatureCache
from icg.models.meta_prompt import MetaTokenPrompter

MODELS = {
    "tiny": {},
    # A 1024-wide, 4-layer language model (head dim 64, GQA 16/4) and a 4-layer 256-d vision tower (~62M params).
    "mid": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vision_depth": 4,
        "vision_embed_dim": 256,
        "vision_num_heads": 4,
        "vision_mlp_ratio": 4,
    },
}


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench(name: str, tiny_config: dict, batch: int, image_size: int, tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    prompter = MetaTokenPrompter(
        tiny_config=tiny_config, num_meta_tokens=tokens, image_size=image_size, freeze_meta_tokens=True
    )
    params = sum(p.numel() for p in prompter.parameters())
    titles = [f"Item {i}: a title of some words, number {i * 7}" for i in range(batch)]
    images = torch.rand(batch, 3, image_size, image_size)
    ids = [f"item-{i}" for i in range(batch)]

    def forward():
        with torch.no_grad():
            prompter(titles, images)

    forward()  # warm-up (allocator, lazy init)
    fwd = timed(forward, repeats)
    with tempfile.TemporaryDirectory() as folder:
        cache = MLLMFeatureCache(folder, prompter.cache_key())
        start = time.perf_counter()
        cold = prompter.forward_cached(ids, titles, images, cache)
        cold_s = time.perf_counter() - start

        def read():
            out = prompter.forward_cached(ids, titles, images, cache)
            assert torch.equal(out, cold)

        read()
        hit = timed(read, repeats * 5)
        bytes_per_item = os.path.getsize(cache.path(ids[0]))
    fwd_ms, hit_ms = 1000 * statistics.median(fwd), 1000 * statistics.median(hit)
    return {
        "model": name,
        "params_M": round(params / 1e6, 3),
        "batch": batch,
        "image_size": image_size,
        "meta_tokens": tokens,
        "hidden": prompter.hidden_size,
        "prompt_tokens": len(prompter.prompt_ids(titles[0])),
        "mllm_forward_ms": round(fwd_ms, 2),
        "cold_cache_ms": round(1000 * cold_s, 2),
        "cache_read_ms": round(hit_ms, 3),
        "speedup": round(fwd_ms / hit_ms, 1),
        "bytes_per_item": bytes_per_item,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--meta-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = [bench(m, MODELS[m], args.batch, args.image_size, args.meta_tokens, args.repeats) for m in args.models]
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": "cpu",
    }
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(json.dumps(env))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
