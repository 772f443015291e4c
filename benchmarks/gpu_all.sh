#!/usr/bin/env bash
# icg's GPU benchmarks in one go (benchmarks/gpu_bench.py: SD 1.5-size architectures, random weights, 512 px, bf16;
# one table, one JSON). Usage, from the repository root on a CUDA machine:  bash benchmarks/gpu_all.sh OUT_DIR
# Writes OUT_DIR/gpu_bench.json, gpu_bench.txt and env.txt; about 3-5 minutes expected on an H100/H200 (not yet run).
# It needs a CUDA torch (the machine's python3; never the CPU .venv) and, where they are missing or older, the pinned
# diffusers and transformers: `make bench-gpu-wheels` builds them into .whl/ (ignored by git), and this script
# installs them from there with no network (carry .whl to a machine that has none; docs/performance.md, "GPU").
# Then the Flux-sized alignment step (FLUX.1-dev architecture, 12B, random weights, bf16) at 512 px; 1024 px with
# ICG_BENCH_FLUX1024=1 (over the 8-minute budget with the rest).
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_all.sh OUT_DIR}"
py="${PYTHON:-python3}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  site="${ICG_BENCH_SITE:-/tmp/icg-bench-site}"  # beside, not into, the machine's packages
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! why=$("$py" -c "import torch, diffusers, transformers" 2>&1); then
  echo "$py cannot import torch, diffusers and transformers (${#wheels[@]} wheel(s) from .whl/ installed; run" \
    "'make bench-gpu-wheels' to build them): $(tail -n 1 <<<"$why")" >&2
  exit 2
fi
{
  "$py" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__); print(torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
} | tee "$out/env.txt"
"$py" -m benchmarks.gpu_bench --device cuda --json "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.txt"
# Flux-sized (FLUX.1-dev architecture, 12B, random weights, bf16): one alignment step at 512 px (T=28; K=1/2,
# checkpointing, ReFL, and a rank-16 transformer LoRA). Needs ~24 GB for the weights alone.
"$py" -m benchmarks.alignment_memory --device cuda --preset flux --reps 2 \
  --json "$out/alignment_memory_flux.json" 2>&1 | tee "$out/alignment_memory_flux.txt"
if [ "${ICG_BENCH_FLUX1024:-0}" = 1 ]; then
  "$py" -m benchmarks.alignment_memory --device cuda --preset flux1024 --reps 2 \
    --json "$out/alignment_memory_flux1024.json" 2>&1 | tee "$out/alignment_memory_flux1024.txt"
fi
