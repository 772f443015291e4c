"""An optional LoRA on the stock denoiser (UNet or Flux transformer), trained with the adapter; diffusers' format.

ICG (Bian et al., EMNLP 2025) keeps the base model stock and names an optional UNet LoRA; its closest peers align a
LoRA on the UNet under differentiable rewards (AlignProp, DRaFT). The LoRA layers are peft's, injected by diffusers'
own ``add_adapter`` (as diffusers' LoRA training scripts do), so the base weights stay frozen and untouched and only
the low-rank matrices train. :class:`LoRAWeights` registers those matrices -- and nothing of the denoiser -- in the
LightningModule (optimizer, DDP gradient sync, device moves, checkpoint) under peft's state-dict names. An export
writes them in diffusers' LoRA format, ``pytorch_lora_weights.safetensors`` with the peft config (rank, alpha, target
modules) in its metadata, which a stock pipeline reads with ``pipe.load_lora_weights(folder)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from icg import ckpt
from icg.diffusion.bases import get_family
from icg.errors import ConfigError, UserError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file name diffusers' load_lora_weights(folder) looks for
ADAPTER = "default"
_LAYER_TYPES = (nn.Linear, nn.Conv2d)


class LoRAMismatchError(UserError, ValueError):
    """A LoRA does not fit the denoiser it is put on (another base model); the message names the config key."""


@dataclass
class UNetLoRA:
    """LoRA on the denoiser (``model.init_args.unet_lora``); off when the block is absent.

    Args:
        rank: r, the rank of each low-rank update.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / rank``).
        target_modules: names of the layers to adapt, matched as peft does (a module whose name is the entry or ends
            with ``.`` + the entry): the attention projections by default, present in SD 1.5 / SDXL UNets and in Flux
            transformers alike.
    """

    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def peft_config(self):
        """The ``peft.LoraConfig`` (Gaussian A, zero B: training starts from the stock denoiser exactly)."""
        try:
            from peft import LoraConfig
        except ImportError as err:
            raise ImportError("model.init_args.unet_lora needs peft: pip install 'icg[lora]'") from err
        return LoraConfig(
            r=int(self.rank),
            lora_alpha=float(self.alpha),
            target_modules=list(self.target_modules),
            init_lora_weights="gaussian",
            lora_dropout=0.0,
        )


class LoRAWeights(nn.Module):
    """The LoRA matrices of a denoiser, registered under their peft names; the same ``Parameter`` objects.

    The denoiser itself stays out of the LightningModule (frozen, rebuilt from its folder); registering only these
    makes the LoRA part of the module's parameters and state dict, with keys equal to
    ``peft.utils.get_peft_model_state_dict(denoiser)``'s (``down_blocks.1....to_q.lora_A.weight``).
    """

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        from peft.tuners.lora import LoraLayer

        for name, module in denoiser.named_modules():
            if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
                continue
            node: nn.Module = self
            for part in name.split("."):
                if part not in node._modules:
                    node.add_module(part, nn.Module())
                node = node._modules[part]
            node.add_module("lora_A", module.lora_A[ADAPTER])
            node.add_module("lora_B", module.lora_B[ADAPTER])


def _layers(denoiser: nn.Module) -> dict[str, nn.Module]:
    """Every adaptable layer (Linear, Conv2d) by name; a peft-wrapped layer under its own name."""
    out = {}
    for name, module in denoiser.named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, _LAYER_TYPES):
            out[name] = base
        elif isinstance(module, _LAYER_TYPES) and not name.endswith(".base_layer") and ".lora_" not in name:
            out.setdefault(name, module)
    return out


def check_targets(denoiser: nn.Module, targets: list[str], config_key: str) -> None:
    """Fail before training, naming ``config_key``, when a target module matches no layer of the denoiser."""
    names = list(_layers(denoiser))
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not targets or missing:
        tails = [n.split(".") for n in names]
        leaves = sorted({".".join(t[-2:]) if t[-1].isdigit() else t[-1] for t in tails})
        raise ConfigError(
            f"{config_key}.target_modules={list(targets)}: "
            + (f"{missing} match no Linear/Conv2d layer of the {type(denoiser).__name__}" if missing else "empty")
            + f"; its layers end in e.g. {', '.join(leaves[:20])}"
        )


def add_lora(denoiser: nn.Module, lora: UNetLoRA, config_key: str = "model.init_args.unet_lora") -> LoRAWeights:
    """Inject a fresh LoRA into the frozen denoiser (fp32 matrices whatever the base's dtype); its weights.

    Args:
        denoiser: a ``UNet2DConditionModel`` or ``FluxTransformer2DModel`` (frozen; only the LoRA will train).
        lora: rank, alpha and target modules.
        config_key: the config block, named in errors.
    """
    if int(lora.rank) < 1:
        raise ConfigError(f"{config_key}.rank={lora.rank}: must be >= 1 (leave {config_key} unset for no LoRA)")
    if getattr(denoiser, "peft_config", None):
        raise ConfigError(f"{config_key}: the {type(denoiser).__name__} already carries a LoRA")
    check_targets(denoiser, list(lora.target_modules), config_key)
    denoiser.add_adapter(lora.peft_config(), adapter_name=ADAPTER)
    weights = LoRAWeights(denoiser)
    weights.float()  # trained in fp32 beside a bf16 base, as diffusers' scripts cast_training_params; peft casts back
    weights.requires_grad_(True)
    return weights


def current_lora(denoiser: nn.Module) -> tuple[UNetLoRA, dict[str, Tensor]] | None:
    """The LoRA a denoiser carries (its config and peft-named tensors, on CPU), or None."""
    config = (getattr(denoiser, "peft_config", None) or {}).get(ADAPTER)
    if config is None:
        return None
    targets = config.target_modules
    targets = sorted(targets) if isinstance(targets, set) else list(targets)
    lora = UNetLoRA(int(config.r), float(config.lora_alpha), targets)
    state = {k: v.detach().cpu().contiguous() for k, v in LoRAWeights(denoiser).state_dict().items()}
    return lora, state


def check_fits(denoiser: nn.Module, state: dict[str, Tensor], config_key: str, what: str = "the LoRA") -> None:
    """Fail, naming ``config_key``, when LoRA tensors do not fit the denoiser's layers (a LoRA of another base)."""
    layers = _layers(denoiser)
    problems = []
    for key, value in sorted(state.items()):
        path, _, rest = key.rpartition(".lora_")
        layer = layers.get(path)
        if layer is None:
            problems.append(f"no layer {path}")
            continue
        fan_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        fan_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        size = value.shape[1] if rest.startswith("A") else value.shape[0]
        if size != (fan_in if rest.startswith("A") else fan_out):
            problems.append(f"{key} has shape {tuple(value.shape)} for a layer of {fan_in} -> {fan_out}")
    if problems:
        raise LoRAMismatchError(
            f"{config_key}: {what} does not fit this {type(denoiser).__name__} ({len(problems)} of {len(state)} "
            f"tensors, e.g. {problems[0]}); it was trained on another base model -- load it onto the base it was "
            "trained on"
        )


def load_lora(
    denoiser: nn.Module, lora: UNetLoRA, state: dict[str, Tensor], config_key: str, what: str = "the LoRA"
) -> LoRAWeights:
    """Put a trained LoRA (peft-named tensors) onto a stock denoiser, after checking that it fits."""
    check_fits(denoiser, state, config_key, what)
    weights = add_lora(denoiser, lora, config_key)
    expected = set(weights.state_dict())
    if expected != set(state):
        raise LoRAMismatchError(
            f"{config_key}: {what} holds {len(state)} tensors but rank/targets {asdict(lora)} give {len(expected)} "
            f"on this {type(denoiser).__name__}; it was trained on another base model"
        )
    with torch.no_grad():
        weights.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return weights


# ------------------------------------------------------------------------------------------ diffusers' format
def save_lora(
    folder: str | Path, lora: UNetLoRA, state: dict[str, Tensor], family: str | None = None, *, kind: str | None = None
) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` in diffusers' format for a base of ``family`` (a key of
    ``icg.diffusion.bases.FAMILIES``: sd15 | sdxl | flux; ``kind`` is its former name).

    Written by the family's own LoRA loader (``save_lora_weights``) with the peft config as adapter metadata, so that
    ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` / ``FluxPipeline.load_lora_weights(folder)`` restores
    the same rank, alpha and targets. The denoiser's keys are filed under its folder's name (``unet.`` /
    ``transformer.``).
    """
    base = get_family(family or kind)
    name = base.denoiser_folder
    metadata = lora.peft_config().to_dict()
    layers = {f"{name}_lora_layers": state, f"{name}_lora_adapter_metadata": metadata}
    base.lora_loader().save_lora_weights(str(folder), **layers, weight_name=LORA_WEIGHTS)
    return Path(folder) / LORA_WEIGHTS


def read_lora(folder: str | Path, family: str) -> dict[str, Tensor]:
    """The peft-named denoiser tensors of ``folder/pytorch_lora_weights.safetensors`` (written by :func:`save_lora`)."""
    prefix = get_family(family).denoiser_folder + "."
    state = ckpt.read_safetensors(Path(folder) / LORA_WEIGHTS, f"export {folder}")
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
