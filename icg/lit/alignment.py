"""Stage 3: align ICG's meta tokens, user fusion and adapter by back-propagating rewards through the sampler.

ICG (Bian et al., EMNLP 2025), method points 1-5 of docs/architecture.md. Each training step builds the personalized
conditioning of a batch of (user, item) pairs, samples covers with the frozen stock UNet keeping the graph only in
the gradient window (DRaFT-K, Clark et al. 2024; or ReFL's single random step, Xu et al. 2023), scores them with the
frozen stage-2 reward bundle and minimizes

    loss = -mean(sum_i w_i * normalized reward_i) + reg_weight * denoising loss on the item's reference cover

(the regularizer guards against reward hacking; ``warmup_steps`` train on the denoising loss alone). Frozen parts --
the MLLM, the UNet (or Flux transformer)/VAE, the reward bundle and the stage-1 user tower -- are kept out of the
optimizer and out of the checkpoint's state dict (they are rebuilt from their own paths), so checkpoints hold only what
this stage trains: the conditioner's trained parts and, with ``unet_lora``, the denoiser's LoRA matrices (AlignProp /
DRaFT align such a LoRA under the same rewards).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import grad_norm
from torch import Tensor

from icg import ckpt
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.lora import UNetLoRA, add_lora
from icg.diffusion.sampler import strength_in_range
from icg.diffusion.source import DiffusionSource
from icg.errors import ConfigError
from icg.generation.generator import CoverGenerator, GradientWindow, SamplerSettings
from icg.generation.users import UserTable
from icg.models.cover_conditioner import CoverConditioner
from icg.models.feature_cache import MLLMFeatureCache
from icg.models.preference import PreferenceModel
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import RewardBundle, RewardOutput, load_reward_bundle

log = logging.getLogger(__name__)
STAGE = "alignment"
GRAD_WINDOWS = ("none", "last_k", "random_step")


class NonFiniteRewardAbort(FloatingPointError):
    """Too many steps in a row produced NaN/Inf rewards; training stops instead of drifting."""


class TrainingOnly:
    """Frozen parts only training uses, held outside the module's submodules (so never in its state dict, optimizer
    or ``.to()``): the reward bundle (not loaded for ``predict``) and the MLLM feature cache."""

    def __init__(self) -> None:
        self.rewards: RewardBundle | None = None
        self.cache: MLLMFeatureCache | None = None


class AlignmentStage(LightningModule):
    """Multi-reward alignment of the cover conditioner (stage 3).

    Args:
        conditioner: meta-token prompter + user fusion + adapter (the trained part).
        preference_ckpt: stage-1 checkpoint: the frozen user tower whose embeddings the fusion refines.
        rewards_ckpt: stage-2 reward-bundle checkpoint: the frozen rewards, weights and normalization.
        diffusion: the stock UNet (or Flux transformer)/VAE/scheduler (local diffusers folder, or tiny from config).
        unet_lora: a LoRA on the denoiser trained with the adapter under the same loss (rank, alpha, target modules);
            None (default) keeps the denoiser entirely frozen. Exported in diffusers' LoRA format.
        optimizer: optimizer for the trained parameters.
        num_steps: T, DDIM steps per sample during training and validation.
        grad_window: ``last_k`` (DRaFT-K), ``random_step`` (ReFL) or ``none`` (denoising loss only).
        k: K of ``last_k``.
        random_step_range: inclusive step-index range of ``random_step``.
        x0_shortcut: decode the predicted x0 of the last gradient step (None: the mode's default).
        gradient_checkpointing: recompute the UNet inside the gradient window during backward.
        guidance_scale: classifier-free guidance at inference (predict); training samples without guidance.
        strength: 1 samples every cover from pure noise; 0 < strength < 1 is reference-guided (SDEdit): training and
            generation start from the item's reference cover noised to that level and run ``int(num_steps *
            strength)`` steps, so the layout of the item stays and the conditioning decides the rest; the gradient
            window's step indices count those steps.
        image_size: side of generated covers in pixels (None: the UNet's configured size).
        reward_weights: reward name -> weight, replacing the stage-2 bundle's weights for those rewards (None: the
            bundle's own weights).
        reg_weight: lambda of the denoising-loss regularizer on reference covers.
        warmup_steps: first optimizer steps train on the denoising loss only.
        max_nonfinite_steps: consecutive steps with NaN/Inf rewards tolerated (each skipped) before aborting.
        partner_users: pair every training item with a second, random user at the same noise: each batch of B pairs
            becomes B/2 of its pairs and, for each, the same item and reference for a user drawn uniformly from the
            DataModule's users. So half the training pairs are random (user, item) pairs whose reference does not
            already suit the user (train positives alone mostly teach fidelity), and the two covers of an item differ
            only by their user (the user-swap test, during training). Needs an even ``data.batch_size``.
        contrast_weight: weight of the contrastive personal reward (needs ``partner_users``): for partners a, b of one
            item, ``pref(u_a, x_a) - pref(u_a, x_b)`` (normalized stage-1 click reward of a's own cover minus that of
            the partner's cover, scored for a), and the same for b. 0 leaves the rewards as they are.
        feature_cache_dir: with a fully frozen prompter (``freeze_meta_tokens: true``, no LoRA), per-item MLLM
            features are cached here and the MLLM leaves the training step.
        seed: base seed of the per-step noise.
    """

    data_unit = "pairs"

    def __init__(  # noqa: PLR0913  # a LightningModule constructor LightningCLI reads (model.init_args)
        self,
        conditioner: CoverConditioner,
        preference_ckpt: str,
        rewards_ckpt: str,
        diffusion: DiffusionSource | None = None,
        unet_lora: UNetLoRA | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        num_steps: int = 20,
        grad_window: str = "last_k",
        k: int = 1,
        random_step_range: tuple[int, int] = (10, 18),
        x0_shortcut: bool | None = None,
        gradient_checkpointing: bool = False,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
        image_size: int | None = None,
        reward_weights: dict[str, float] | None = None,
        reg_weight: float = 1.0,
        warmup_steps: int = 0,
        max_nonfinite_steps: int = 5,
        partner_users: bool = False,
        contrast_weight: float = 0.0,
        feature_cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if contrast_weight and not partner_users:
            raise ConfigError("model.init_args.contrast_weight needs model.init_args.partner_users: true")
        if grad_window not in GRAD_WINDOWS:
            raise ConfigError(f"model.init_args.grad_window must be one of {GRAD_WINDOWS}, got {grad_window!r}")
        if not strength_in_range(strength):
            raise ConfigError(f"model.init_args.strength must be in (0, 1], got {strength}")
        self.save_hyperparameters(ignore=["conditioner", "optimizer", "diffusion", "unet_lora"])
        self.conditioner = conditioner
        self.diffusion_source = diffusion or DiffusionSource()
        self.unet_lora_config = unet_lora
        self.unet_lora: torch.nn.Module | None = None  # the LoRA matrices (registered in setup, once the UNet exists)
        self.optimizer_factory = optimizer
        # Frozen parts are not registered, so never in the state dict or the optimizer: the inference ones (denoiser,
        # VAE, user table) in the generator, built in setup() and used for training, validation, predict and export.
        self.generator: CoverGenerator | None = None
        self.training_only = TrainingOnly()
        self.user_ids: list[str] = []  # the DataModule's users, in user_idx order (recorded in checkpoints)
        self.user_rows: Tensor | None = None  # DataModule user_idx -> user-table row (-1: the cold-start fallback)
        self.nonfinite_steps = 0
        self.skipped_steps = 0

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        if self.generator is not None:
            return
        users, user_ids = PreferenceModel.from_checkpoint(
            self.hparams.preference_ckpt, "model.init_args.preference_ckpt"
        )
        if stage != "predict":  # making covers needs no reward weights
            bundle = load_reward_bundle(self.hparams.rewards_ckpt, "model.init_args.rewards_ckpt")
            if self.hparams.reward_weights:
                bundle.reweight(dict(self.hparams.reward_weights), "model.init_args.reward_weights")
            self.training_only.rewards = bundle
        diffusion = self.diffusion_source.load("model.init_args.diffusion.path")
        self.conditioner.check_denoiser(diffusion.denoiser, "model.init_args.diffusion")
        if self.unet_lora_config is not None:
            self.unet_lora = add_lora(diffusion.denoiser, self.unet_lora_config, "model.init_args.unet_lora")
        offset = self.conditioner.user_offset
        if offset is not None and offset.user_dim != users.embed_dim:
            raise ConfigError(
                f"model.init_args.conditioner.init_args.user_offset.init_args.user_dim={offset.user_dim} but the "
                f"stage-1 model in model.init_args.preference_ckpt has user embeddings of width {users.embed_dim}"
            )
        fusion = self.conditioner.fusion
        if fusion.fusion_type != "none" and fusion.user_dim != users.embed_dim:
            raise ConfigError(
                f"model.init_args.conditioner.init_args.fusion.init_args.user_dim={fusion.user_dim} but the stage-1 "
                f"model in model.init_args.preference_ckpt has user embeddings of width {users.embed_dim}"
            )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dm_users = list(getattr(datamodule, "user_ids", user_ids))
        table = UserTable.from_preference_model(users, user_ids)
        # DataModule user_idx -> stage-1 user_idx (-1: cold start, the stage-1 fallback embedding).
        user_map = table.index_map(dm_users)
        unknown = int((user_map < 0).sum())
        if unknown:
            log.warning(
                "%d of %d users are unknown to the stage-1 model: they get its fallback embedding",
                unknown,
                len(dm_users),
            )
        self.user_ids, self.user_rows = dm_users, user_map
        # The stage's own sampling options; the rest (user guidance: inference only) keep their defaults.
        settings = SamplerSettings(**{k: self.hparams[k] for k in asdict(SamplerSettings()) if k in self.hparams})
        self.generator = CoverGenerator(self.conditioner, diffusion, table, settings, source=self.diffusion_source)

    @property
    def rewards(self) -> RewardBundle | None:
        """The frozen stage-2 reward bundle (None where ``setup`` ran for ``predict``, which makes covers only)."""
        return self.training_only.rewards

    @property
    def feature_cache(self) -> MLLMFeatureCache | None:
        """The MLLM feature cache (``feature_cache_dir`` with a frozen prompter), once a step has opened it."""
        return self.training_only.cache

    @property
    def gradient_window(self) -> GradientWindow:
        """The training samples' gradient window, from this stage's hyperparameters."""
        return GradientWindow(**{k: self.hparams[k] for k in asdict(GradientWindow())})

    def place_frozen(self) -> None:
        """Move the frozen parts (the generator's denoiser, VAE and user table; the reward bundle) to this device."""
        self.generator.to(self.device)
        if self.rewards is not None:
            self.rewards.to(self.device)
        self.user_rows = self.user_rows.to(self.device)

    def on_fit_start(self) -> None:
        self.place_frozen()
        trained = {id(p) for p in self.conditioner.parameters() if p.requires_grad}
        lora = self.unet_lora is not None
        log.info(
            "alignment trains %d conditioner tensors%s (%d values); MLLM, %s, VAE, rewards and user tower are frozen",
            len(trained),
            f" + {len(list(self.unet_lora.parameters()))} LoRA tensors" if lora else "",
            sum(p.numel() for p in self.parameters() if p.requires_grad),
            "the denoiser's base weights" if lora else "the denoiser",
        )

    on_validation_start = on_test_start = on_predict_start = place_frozen

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer steps: the conditioner's trained parameters and the denoiser's LoRA (if any)."""
        params = [p for p in self.conditioner.parameters() if p.requires_grad]
        return params + (list(self.unet_lora.parameters()) if self.unet_lora is not None else [])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.trained_parameters())

    # ------------------------------------------------------------------------------------------------ steps
    def stage1_users(self, user_idx: Tensor) -> Tensor:
        """DataModule user indices -> stage-1 user indices (-1 for users stage 1 never saw)."""
        user_map = self.user_rows
        safe = user_idx.clamp(0, max(len(user_map) - 1, 0))
        return torch.where(user_idx >= 0, user_map[safe], torch.full_like(user_idx, -1))

    def condition(self, batch: dict[str, Any]) -> tuple[Conditioning, Tensor]:
        """The personalized conditioning of a batch of pairs, and the stage-1 user indices used for it."""
        users = self.stage1_users(batch["user_idx"])
        user_emb = self.generator.users.embeddings[users]  # -1: the last row, the cold-start fallback
        prompter = self.conditioner.prompter
        if (self.hparams.feature_cache_dir and prompter is not None
                and not any(p.requires_grad for p in prompter.parameters())):  # fmt: skip
            # Nothing in the prompter trains: its features are a pure function of the item, read from disk.
            if self.training_only.cache is None:
                self.training_only.cache = MLLMFeatureCache(self.hparams.feature_cache_dir, prompter.cache_key())
            features = prompter.forward_cached(batch["item_id"], batch["title"], batch["image"], self.feature_cache)
            return self.conditioner.condition(features, user_emb, batch["title"]), users
        return self.conditioner(batch["title"], batch["image"], user_emb), users

    def generate(
        self,
        cond: Conditioning,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        grad_window: str = "none",
        reference: Tensor | None = None,
    ) -> Tensor:
        """Training covers in [0, 1] (``CoverGenerator.sample_with_grad``), the graph kept in ``grad_window`` only.

        Validation, predict and export sample through ``self.generator`` (per-pair seeds) instead.
        """
        window = GradientWindow(**(asdict(self.gradient_window) | {"grad_window": grad_window}))
        return self.generator.sample_with_grad(cond, window, generator=generator, latents=latents, reference=reference)

    def score(self, images: Tensor, batch: dict[str, Any], users: Tensor) -> RewardOutput:
        context = RewardContext(titles=list(batch["title"]), user_idx=users, reference=batch["image"])
        return self.rewards(images, context)

    def _generator(self, salt: int) -> torch.Generator:
        seed = (self.hparams.seed * 1_000_003 + salt * 7919 + self.global_rank) % (2**63)
        return torch.Generator(device=self.device).manual_seed(seed)

    def with_partners(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[dict[str, Any], list]:
        """The first half of ``batch`` followed by the same items for random users, and one noise generator per
        pair with partners sharing a seed (``partner_users``)."""
        half = len(batch["item_id"]) // 2
        if half < 1:
            raise ConfigError("model.init_args.partner_users needs data.batch_size >= 2 (an even number)")
        first = {key: value[:half] for key, value in batch.items()}
        device = batch["user_idx"].device
        drawn = torch.randint(len(self.user_ids), (half,), generator=generator, device=generator.device).to(device)
        paired = {}
        for key, value in first.items():
            if key == "user_idx":
                paired[key] = torch.cat([value, drawn])
            elif key == "user_id":
                paired[key] = [*value, *(self.user_ids[int(k)] for k in drawn)]
            elif isinstance(value, Tensor):
                paired[key] = torch.cat([value, value])
            else:
                paired[key] = [*value, *value]
        seeds = torch.randint(2**62, (half,), generator=generator, device=generator.device).tolist()
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds * 2]
        return paired, generators

    def personal_contrast(self, images: Tensor, batch: dict[str, Any], users: Tensor) -> Tensor:
        """Per pair: the normalized click reward of its own cover minus that of its partner's cover, for its user."""
        half = images.shape[0] // 2
        swapped = torch.cat([images[half:], images[:half]])
        context = RewardContext(titles=list(batch["title"]), user_idx=users, reference=batch["image"])
        return self.rewards.normalized_score("preference", images, context) - self.rewards.normalized_score(
            "preference", swapped, context
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        generator = self._generator(self.global_step)
        noise: torch.Generator | list[torch.Generator] = generator
        if self.hparams.partner_users:
            batch, noise = self.with_partners(batch, generator)
        cond, users = self.condition(batch)
        # the regularizer reconstructs each reference under its own pair's conditioning: with partners, only the train
        # positives' (a reference need not suit a random user, and its backdrop is what the partner may change)
        kept = slice(0, len(users) // 2) if self.hparams.partner_users else slice(None)
        reg = self.generator.denoising_loss(batch["image"][kept], cond[kept], generator)
        self.log("train/denoise_loss", reg, prog_bar=True)
        if self.global_step < self.hparams.warmup_steps or self.hparams.grad_window == "none":
            return self.hparams.reg_weight * reg
        images = self.generate(cond, generator=noise, grad_window=self.hparams.grad_window, reference=batch["image"])
        rewards = self.score(images, batch, users)
        bad = rewards.nonfinite()
        if bad or not bool(torch.isfinite(rewards.total.detach()).all()):
            self._skip_nonfinite(bad)
            # DDP cannot skip a step on one rank (Lightning raises): this rank contributes its regularizer only.
            return self.hparams.reg_weight * reg if self.trainer_world_size() > 1 else None
        self.nonfinite_steps = 0
        objective = rewards.total
        if self.hparams.contrast_weight:
            contrast = self.personal_contrast(images, batch, users)
            self.log("train/reward/personal_contrast", contrast.mean(), batch_size=len(contrast))
            objective = objective + self.hparams.contrast_weight * contrast
        loss = -objective.mean() + self.hparams.reg_weight * reg
        self._log_rewards("train", rewards)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def trainer_world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _skip_nonfinite(self, bad: dict[str, int]) -> None:
        self.nonfinite_steps += 1
        self.skipped_steps += 1
        self.log("train/skipped_nonfinite_steps", float(self.skipped_steps))
        what = ", ".join(f"{k}: {v}" for k, v in bad.items()) or "the weighted total"
        if self.nonfinite_steps > self.hparams.max_nonfinite_steps:
            raise NonFiniteRewardAbort(
                f"step {self.global_step}: {self.nonfinite_steps} consecutive steps with NaN/Inf rewards ({what}); "
                "check the reward bundle's normalization and lower the learning rate (model.init_args.optimizer)"
            )
        log.warning(
            "step %d: NaN/Inf rewards (%s); step skipped (%d in a row, %d allowed)",
            self.global_step,
            what,
            self.nonfinite_steps,
            self.hparams.max_nonfinite_steps,
        )
        return None

    def _log_rewards(self, split: str, rewards: RewardOutput) -> None:
        # the batch size is said, not inferred from the batch dict (Lightning warns when it has to guess)
        when = {"on_step": split == "train", "on_epoch": split != "train", "sync_dist": split != "train",
                "batch_size": len(rewards.total)}  # fmt: skip
        for name, raw in rewards.raw.items():
            self.log(f"{split}/reward/{name}", raw.mean(), **when)
            self.log(f"{split}/reward_normalized/{name}", rewards.normalized[name].mean(), **when)
        self.log(f"{split}/reward/total", rewards.total.mean(), **when)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self.conditioner, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])
        if self.unet_lora is not None:
            lora_norms = grad_norm(self.unet_lora, norm_type=2)
            if "grad_2.0_norm_total" in lora_norms:
                self.log("train/grad_norm_unet_lora", lora_norms["grad_2.0_norm_total"])

    def batch_seeds(self, batch: dict[str, Any]) -> list[int]:
        """The per-(user, item) seeds of a batch of pairs (``icg.generation.seeds.pair_seed``)."""
        return self.generator.seeds(batch["user_id"], batch["item_id"])

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        cond, users = self.condition(batch)
        images = self.generator.sample(cond, self.batch_seeds(batch), batch["image"], guidance_scale=1.0)
        self._log_rewards("val", self.score(images, batch, users))

    test_step = validation_step

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Covers for a batch of pairs with per-pair deterministic seeds (independent of batching); reward scores
        only where the bundle is loaded (``icg test`` / ``validate``; ``predict`` makes covers only)."""
        cond, users = self.condition(batch)
        seeds = self.batch_seeds(batch)
        images = self.generator.sample(cond, seeds, batch["image"])
        scores = {}
        if self.rewards is not None:
            rewards = self.score(images, batch, users)
            scores = {name: raw.float().cpu() for name, raw in rewards.raw.items()} | {"total": rewards.total.cpu()}
        return {
            "images": images.cpu(),
            "user_id": list(batch["user_id"]),
            "item_id": list(batch["item_id"]),
            "seed": seeds,
            "scores": scores,
        }

    # ------------------------------------------------------------------------------------------- checkpoints
    def _frozen_keys(self) -> set[str]:
        trained = {f"conditioner.{k}" for k in self.conditioner.trained_state_dict()}
        return {k for k in self.state_dict() if k not in trained and not k.startswith("unet_lora.")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in self._frozen_keys():  # the stock MLLM is rebuilt from its path, not copied into every checkpoint
            checkpoint["state_dict"].pop(key, None)
        checkpoint[ckpt.ICG_KEY] = {
            "stage": STAGE,
            "version": ckpt.ICG_CKPT_VERSION,
            "specs": {"conditioner": self.conditioner.spec},
            # Absolute paths: the checkpoint is read from other folders (evaluation, export) than training ran in.
            "diffusion": asdict(self.diffusion_source) | {"path": _absolute(self.diffusion_source.path)},
            "unet_lora": asdict(self.unet_lora_config) if self.unet_lora_config is not None else None,
            "user_ids": list(self.user_ids),
            "preference_ckpt": _absolute(self.hparams.preference_ckpt),
            "rewards_ckpt": _absolute(self.hparams.rewards_ckpt),
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stage = checkpoint.get(ckpt.ICG_KEY, {}).get("stage")
        if stage != STAGE:
            raise ckpt.CheckpointError(
                f"--ckpt_path: {ckpt.a_stage_checkpoint(stage)} cannot resume the {STAGE!r} stage"
            )
        has_lora = any(k.startswith("unet_lora.") for k in checkpoint["state_dict"])
        if has_lora != (self.unet_lora is not None):
            raise ckpt.CheckpointError(
                f"--ckpt_path: the checkpoint was trained {'with' if has_lora else 'without'} a UNet LoRA but "
                f"model.init_args.unet_lora is {'unset' if has_lora else 'set'}; resume with the same setting"
            )
        own = self.state_dict()
        for key in self._frozen_keys():
            checkpoint["state_dict"].setdefault(key, own[key])
        self.skipped_steps = int(checkpoint[ckpt.ICG_KEY].get("skipped_steps", 0))

    def export(self, folder: str | Path, overwrite: bool = False) -> Path:
        """The export folder of this stage's generator (``icg.generation.export``; ``icg export`` from a checkpoint)."""
        return self.generator.save_pretrained(folder, provenance={"preference_ckpt": _absolute(
            self.hparams.preference_ckpt), "global_step": self.global_step}, overwrite=overwrite)  # fmt: skip


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
