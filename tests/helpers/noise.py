"""Seeded initial latents, one CPU generator per seed, as the generator draws them."""

import torch


def seeded_noise(diffusion, seeds, image_size: int) -> torch.Tensor:
    """Initial latents of covers of side ``image_size``, each from its own CPU generator seeded by its seed."""
    side = image_size // diffusion.vae_scale_factor
    noise = [torch.randn(1, diffusion.latent_channels, side, side, generator=torch.Generator().manual_seed(int(s)))
             for s in seeds]  # fmt: skip
    return torch.cat(noise) * diffusion.scheduler.init_noise_sigma
