"""The demo's stand-in base model: a tiny text-to-image latent diffusion model trained on the synthetic covers.

Not one of ICG's three stages. The synthetic platform has no pretrained diffusion model, so before stage 3 the demo
trains a small one that plays the part SD 1.5 plays for real data: a VAE (trained first, then frozen), a UNet
conditioned on title tokens, and a hashed-word title encoder standing in for CLIP's text encoder. It is written as a
stock diffusers folder (``unet/``, ``vae/``, ``scheduler/``) that stage 3 loads like any checkpoint, plus
``title_encoder/`` for the "base model prompted with the title" baseline. Titles are dropped with probability
``cond_dropout`` so classifier-free guidance has an unconditional branch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from icg import ckpt
from icg.data.synthetic import backdrop_captions
from icg.diffusion.components import SD_SCHEDULE
from icg.diffusion.conditioning import Conditioning, predict_noise
from icg.diffusion.sampler import encode
from icg.diffusion.title_tokens import TitleTokenEncoder, export_title_encoder
from icg.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)
STAGE = "base_model"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class StandInBaseModel(LightningModule):
    """Trains the demo's stand-in for SD 1.5 (VAE for ``vae_steps``, then UNet + title encoder).

    Args:
        unet: ``UNet2DConditionModel`` config (its ``cross_attention_dim`` must equal the title encoder's ``dim``).
        vae: ``AutoencoderKL`` config.
        title_encoder: the hashed-word title encoder (the base model's "text encoder").
        export_dir: where the diffusers folder (+ ``title_encoder/``) is written when training ends.
        vae_optimizer: optimizer of the VAE phase.
        unet_optimizer: optimizer of the UNet + title-encoder phase.
        unet_scheduler: learning-rate schedule of the UNet phase, stepped once per UNet step (None: constant); its
            horizon (e.g. ``T_max`` of cosine annealing) counts UNet steps, i.e. ``trainer.max_steps - vae_steps``.
        vae_steps: optimizer steps of the VAE phase.
        kl_weight: weight of the VAE's KL term.
        cond_dropout: probability of training a sample with an empty title (for classifier-free guidance).
        vae_sample_posterior: decode a sample of the posterior during the VAE phase (SD's recipe) instead of its
            mode. Off by default: AutoencoderKL's log-variance starts near 0, so a sample carries unit noise that
            swamps the few latent channels of a tiny VAE, and in a short phase the decoder learns to ignore the
            latents and paint mean colours (demo covers, one 300-step trial at lr 5e-4: 40 % vs 79 % of
            reconstructions keeping the object's palette colour).
        platform_captions: train under captions as well as titles (a synthetic platform only). Its hidden truth
            (``data.root``'s ``truth/``) names each cover's backdrop tint, which titles never do
            (``icg.data.synthetic.backdrop_captions``); with probability ``caption_rate`` a cover trains under its
            title plus those words, as SD 1.5 learnt from captions that describe more than a platform's titles.
            Without them the base model has no words for the tint, so no conditioning can choose it (docs/stage3.md,
            part 4).
        caption_rate: probability of the captioned text instead of the bare title.
        prediction_type: the UNet's target, ``epsilon`` (SD 1.5) or ``v_prediction``; written to the exported
            scheduler config, which the sampler and stage 3's denoising loss follow. ``v_prediction`` suits the
            demo's short UNet phase: its target at high noise is the clean latent, so the global layout (background
            tone, object colour) is learned first, where an epsilon UNet of the same budget draws blotches.
    """

    data_unit = "items"

    def __init__(  # noqa: PLR0913  # a LightningModule constructor LightningCLI reads (model.init_args)
        self,
        unet: dict,
        vae: dict,
        title_encoder: TitleTokenEncoder,
        export_dir: str,
        vae_optimizer: OptimizerCallable = torch.optim.AdamW,
        unet_optimizer: OptimizerCallable = torch.optim.AdamW,
        unet_scheduler: LRSchedulerCallable | None = None,
        vae_steps: int = 300,
        kl_weight: float = 1e-6,
        cond_dropout: float = 0.1,
        vae_sample_posterior: bool = False,
        prediction_type: str = "epsilon",
        platform_captions: bool = False,
        caption_rate: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["title_encoder", "vae_optimizer", "unet_optimizer", "unet_scheduler"])
        self.automatic_optimization = False
        if int(unet.get("cross_attention_dim", -1)) != title_encoder.dim:
            raise ConfigError(
                f"model.init_args.unet.cross_attention_dim={unet.get('cross_attention_dim')} must equal "
                f"model.init_args.title_encoder.init_args.dim={title_encoder.dim}"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"model.init_args.prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.unet = UNet2DConditionModel(**unet)
        self.vae = AutoencoderKL(**vae)
        self.title_encoder = title_encoder
        self.scheduler = DDIMScheduler(**SD_SCHEDULE, prediction_type=prediction_type)
        self.vae_optimizer = vae_optimizer
        self.unet_optimizer = unet_optimizer
        self.unet_scheduler = unet_scheduler
        self.register_buffer("latent_scale", torch.zeros(()))  # fitted when the VAE phase ends
        if not 0.0 <= caption_rate <= 1.0:
            raise ConfigError(f"model.init_args.caption_rate={caption_rate}: expected a probability in [0, 1]")
        self.captions: dict[str, str] = {}

    def setup(self, stage: str) -> None:
        if self.hparams.platform_captions and not self.captions:
            root = getattr(self.trainer.datamodule, "root", None)
            if root is None:
                raise ConfigError("model.init_args.platform_captions=true needs ICGDataModule's data.root")
            try:
                self.captions = backdrop_captions(root)
            except MissingFileError as err:
                raise ConfigError(f"model.init_args.platform_captions=true needs a synthetic platform: {err}") from None

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list]:
        vae_opt = self.vae_optimizer(self.vae.parameters())
        unet_opt = self.unet_optimizer(list(self.unet.parameters()) + list(self.title_encoder.parameters()))
        # Manual optimization: the schedule is stepped in training_step, on UNet steps only.
        return [vae_opt, unet_opt], [self.unet_scheduler(unet_opt)] if self.unet_scheduler else []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        vae_opt, unet_opt = self.optimizers()
        if self.global_step < self.hparams.vae_steps:
            return self.vae_step(batch, vae_opt)
        return self.unet_step(batch, unet_opt)

    def vae_step(self, batch: dict[str, Any], optimizer: Any) -> Tensor:
        """One step of the VAE phase: reconstruction + a small KL term, on the covers in [-1, 1]."""
        images = batch["image"] * 2 - 1
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample() if self.hparams.vae_sample_posterior else posterior.mode()
        recon = self.vae.decode(latents).sample
        rec = F.mse_loss(recon, images)
        loss = rec + self.hparams.kl_weight * posterior.kl().mean()
        self.log("train/vae_recon", rec, prog_bar=True)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss

    def unet_step(self, batch: dict[str, Any], optimizer: Any) -> Tensor:
        """One step of the UNet phase: the denoising loss under the (sometimes dropped) title's tokens."""
        if self.latent_scale == 0:
            self._fit_latent_scale(batch["image"])
        titles = [self._text(title, item) for title, item in zip(batch["title"], batch["item_id"], strict=True)]
        states, mask, _ = self.title_encoder(titles)
        loss = self.denoising_loss(batch["image"], Conditioning(states, mask.long()))
        self.log("train/denoise_loss", loss, prog_bar=True)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        if self.unet_scheduler is not None:
            self.lr_schedulers().step()
        return loss

    @torch.no_grad()
    def _text(self, title: str, item_id: str) -> str:
        """The text a cover trains under: empty (``cond_dropout``), its title, or its title and caption words."""
        if torch.rand(()) < self.hparams.cond_dropout:
            return ""
        words = self.captions.get(item_id)
        return f"{title}, {words}" if words and torch.rand(()) < self.hparams.caption_rate else title

    def _fit_latent_scale(self, images: Tensor) -> None:
        """SD's 0.18215 plays this role: scale latents to unit variance so the noise schedule fits them."""
        self.vae.eval().requires_grad_(False)
        if not self.hparams.vae_sample_posterior:
            _pin_posterior_logvar(self.vae)
        latents = self.vae.encode(images * 2 - 1).latent_dist.mean
        self.latent_scale.fill_(1.0 / latents.std().clamp_min(1e-4))
        self.vae.register_to_config(scaling_factor=float(self.latent_scale))
        log.info("VAE phase done: latent scaling factor %.4f", float(self.latent_scale))

    def denoising_loss(self, images: Tensor, cond: Conditioning) -> Tensor:
        with torch.no_grad():
            latents = encode(self.vae, images)
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = noise if self.hparams.prediction_type == "epsilon" else self.scheduler.get_velocity(latents, noise, t)
        return F.mse_loss(predict_noise(self.unet, noisy, t, cond), target)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        scale = float(checkpoint["state_dict"].get("latent_scale", 0.0))
        if scale:
            self.vae.register_to_config(scaling_factor=scale)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ckpt.ICG_KEY] = {"stage": STAGE, "version": ckpt.ICG_CKPT_VERSION,
                                    "specs": {"title_encoder": self.title_encoder.spec}}  # fmt: skip

    def on_train_end(self) -> None:
        if self.latent_scale == 0:
            raise RuntimeError(
                f"the base model trained only its VAE (model.init_args.vae_steps={self.hparams.vae_steps} >= the "
                "steps run): raise trainer.max_steps so the UNet trains too"
            )
        if self.trainer.is_global_zero:
            export_base_model(self.hparams.export_dir, self.unet, self.vae, self.scheduler, self.title_encoder)


@torch.no_grad()
def _pin_posterior_logvar(vae: AutoencoderKL, logvar: float = -30.0) -> None:
    """Make the posterior (near-)deterministic: its log-variance channels become the constant ``logvar``.

    A VAE trained on the posterior's mode never saw latent noise, but ``encode`` (the UNet phase, stage 3's
    denoising loss) draws a posterior sample; a log-variance left near 0 would add unit noise to every latent.
    -30 is ``DiagonalGaussianDistribution``'s lower clamp (std ~3e-7).
    """
    conv = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    half = conv.out_channels // 2
    conv.weight[half:].zero_()
    conv.bias[half:].fill_(logvar)


def export_base_model(folder: str | Path, unet, vae, scheduler, title_encoder: TitleTokenEncoder) -> Path:
    """A stock diffusers folder (``unet/``, ``vae/``, ``scheduler/``) plus ``title_encoder/``."""
    folder = Path(folder)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    export_title_encoder(folder, title_encoder)
    log.info("stand-in base model written to %s", folder)
    return folder
