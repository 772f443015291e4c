#!/usr/bin/env bash
# Every GPU benchmark of icg.diffusion in one go: the SD 1.5-sized preset (random weights, 512 px, bf16), then the
# Flux-sized alignment step (FLUX.1-dev architecture, 512 and 1024 px, bf16).
# Usage (from the repository root, on a CUDA machine):  bash benchmarks/gpu_all.sh OUT_DIR
# Writes OUT_DIR/<benchmark>.json and .txt and OUT_DIR/env.txt. Needs torch with CUDA and diffusers; where diffusers
# is missing (the lent GPU image has torch but not diffusers) it installs a wheel from .whl/ (carry that folder), e.g.
#   .venv/bin/pip download --no-deps -d .whl diffusers==0.42.1
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_all.sh OUT_DIR}"
py="${PYTHON:-python3}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$py" -c "import diffusers" 2>/dev/null; then
  shopt -s nullglob
  wheels=(.whl/diffusers-*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "diffusers is not importable by $py and no .whl/diffusers-*.whl to install" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-deps --no-index "${wheels[0]}"
fi
{
  "$py" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__); print(torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} | tee "$out/env.txt"

"$py" -m benchmarks.sampler_vs_pipeline --device cuda --preset sd15 --reps 3 \
  --json "$out/sampler_vs_pipeline.json" 2>&1 | tee "$out/sampler_vs_pipeline.txt"
"$py" -m benchmarks.alignment_memory --device cuda --preset sd15 --reps 2 \
  --json "$out/alignment_memory.json" 2>&1 | tee "$out/alignment_memory.txt"
# Flux-sized (FLUX.1-dev architecture, 12B, random weights, bf16): one alignment step at 512 and 1024 px (T=28;
# K=1/2, checkpointing, ReFL, and a rank-16 transformer LoRA). Needs ~24 GB for the weights alone.
"$py" -m benchmarks.alignment_memory --device cuda --preset flux --reps 2 \
  --json "$out/alignment_memory_flux.json" 2>&1 | tee "$out/alignment_memory_flux.txt"
"$py" -m benchmarks.alignment_memory --device cuda --preset flux1024 --reps 2 \
  --json "$out/alignment_memory_flux1024.json" 2>&1 | tee "$out/alignment_memory_flux1024.txt"
