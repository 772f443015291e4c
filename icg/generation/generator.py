"""``CoverGenerator``: a trained ICG as one object that turns (user, title, reference image) into covers.

ICG (Bian et al., EMNLP 2025) ends in covers: for the items a platform is about to show, for each user. This is the
inference half, apart from training: load once from an export folder (``icg export``), then call::

    gen = CoverGenerator.from_pretrained("runs/demo/export", device="cuda")
    covers = gen(["u0001", "u0002"], ["Red star on a dark backdrop"] * 2, [Image.open("i00042.png")] * 2, seed=0)
    covers.images[0].save("cover.png")

It holds the trained conditioner (meta tokens + user fusion + adapter, on the stock MLLM and the base model's text
encoder), the user table (stage-1 embeddings, cold-start fallback), the stock UNet/VAE/scheduler and the sampler
settings. Covers are deterministic per (user, item, seed) whatever the batch (``icg.generation.seeds``). Stage 3's
validation and predict, the evaluation and ``icg generate`` all sample through :meth:`CoverGenerator.sample`.

``strength < 1`` is reference-guided generation (SDEdit; diffusers' img2img): the chain starts from the item's
reference cover noised to that level, so the item's layout stays and ICG personalizes the rest.

Two options make a cover more the user's, each at a cost (docs/generation.md): ``user_guidance`` s moves every step's
prediction from the cold-start user's (same title, same reference) towards the user's (1: as trained; one more
denoiser row per cover otherwise), and ``candidates`` N draws N covers per pair and keeps the one the stage-1 click
model scores highest (``icg.generation.picking``; N times the sampling).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.conditioning import Conditioning
from icg.diffusion.lora import LORA_WEIGHTS, current_lora, load_lora
from icg.diffusion.sampler import denoising_loss, sample, user_guidance_in_range
from icg.diffusion.source import DTYPES, DiffusionSource
from icg.errors import ConfigError, UserError
from icg.generation.export import ExportParts, checkpoint_parts, negative_conditioning, read_export, write_parts
from icg.generation.picking import BestOf, PickedCovers, best_of
from icg.generation.seeds import content_key, pair_generators, pair_seed
from icg.generation.settings import SamplerSettings
from icg.generation.users import UserTable

log = logging.getLogger(__name__)

ImageInput = Tensor | Sequence[Image.Image | str | Path]


@dataclass
class GradientWindow:
    """Where stage 3's sampling keeps the autograd graph (``icg.diffusion.sampler.sample``'s gradient window).

    Args:
        grad_window: ``last_k`` (DRaFT-K, Clark et al. 2024), ``random_step`` (ReFL, Xu et al. 2023) or ``none``.
        k: K of ``last_k``.
        random_step_range: inclusive step-index range of ``random_step``.
        x0_shortcut: decode the predicted x0 of the last gradient step (None: the mode's default).
        gradient_checkpointing: recompute the denoiser inside the gradient window during backward.
    """

    grad_window: str = "last_k"
    k: int = 1
    random_step_range: tuple[int, int] = (10, 18)
    x0_shortcut: bool | None = None
    gradient_checkpointing: bool = False


@dataclass
class GeneratedCovers:
    """What a call returns, one entry per (user, item) in the order given.

    Args:
        images: PIL images (``output_type="pil"``) or a B x 3 x H x W tensor in [0, 1] (``"pt"``).
        user_ids: the users.
        item_keys: the item ids given, or content keys (title + reference pixels) where none were.
        seeds: each cover's seed (``icg.generation.seeds.pair_seed``); with ``best_of`` the pair's seed, which is
            candidate 0's (the picked candidate's own seed is ``candidate_seeds([seed], candidate)[0]``).
        fallback: True where the user is unknown to the export and got the cold-start fallback embedding.
        candidate: with ``best_of``, the index of the candidate picked for each pair (else empty).
        score: with ``best_of``, its click probability under the stage-1 model (else empty).
        candidate_scores: with ``best_of``, B x N: every candidate's click probability.
        candidate_images: with ``best_of.keep_all``, B x N x 3 x H x W: every candidate, in [0, 1].
    """

    images: list[Image.Image] | Tensor
    user_ids: list[str]
    item_keys: list[str]
    seeds: list[int]
    fallback: list[bool] = field(default_factory=list)
    candidate: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    candidate_scores: Tensor | None = None
    candidate_images: Tensor | None = None


def reference_batch(images: ImageInput, size: int, device: torch.device | str = "cpu") -> Tensor:
    """Reference covers as a B x 3 x size x size tensor in [0, 1].

    A tensor (B x 3 x H x W in [0, 1]) is resized with antialiased bicubic interpolation if needed; PIL images and
    paths are center-cropped to a square and resized exactly as the DataModule decodes covers (``ImageOps.fit``,
    bicubic), so a dataset's item gives the same reference either way.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B x 3 x H x W in [0, 1], got shape {tuple(images.shape)}")
        x = images.float()
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return x.to(device)
    tensors = []
    for image in images:
        if isinstance(image, str | Path):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
        tensors.append(torch.from_numpy(np.asarray(fitted, dtype=np.uint8).copy()).permute(2, 0, 1))
    return (torch.stack(tensors).float() / 255.0).to(device)


def to_pil(images: Tensor) -> list[Image.Image]:
    """B x 3 x H x W in [0, 1] -> PIL images (rounded to 8 bits as diffusers' ``numpy_to_pil``)."""
    array = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def sample_covers(  # noqa: PLR0913  # sampler options to move into a dataclass (STYLE habit 20; issue 22)
    diffusion: DiffusionComponents,
    cond: Conditioning,
    seeds: Sequence[int],
    references: ImageInput | None = None,
    *,
    num_steps: int,
    guidance_scale: float = 1.0,
    strength: float = 1.0,
    image_size: int | None = None,
    uncond: Conditioning | None = None,
    user_guidance: float = 1.0,
    user_negative: Conditioning | None = None,
) -> Tensor:
    """Covers (B x 3 x H x W in [0, 1]) for a conditioning, each from its own seed: the one inference sampling path.

    ICG's generator and the evaluation's baselines all sample here, so methods differ only in their conditioning.
    Every cover starts from its own seed's noise (reference-guided: and its own VAE posterior sample), so a cover
    does not depend on the batch it is in.
    """
    if len(seeds) != cond.batch_size:
        raise ValueError(f"{len(seeds)} seeds for a conditioning of {cond.batch_size} covers")
    size = int(image_size or diffusion.default_image_size)
    if strength < 1:
        if references is None:
            raise ValueError(f"strength={strength} (reference-guided) needs the reference covers")
        references = reference_batch(references, size, diffusion.device)
    return sample(
        diffusion,
        cond,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        uncond=uncond,
        user_guidance=user_guidance,
        user_negative=user_negative,
        generator=pair_generators(seeds),
        reference=references if strength < 1 else None,
        strength=strength,
        height=size,
        width=size,
    )


def check_user_guidance(user_guidance: float, name: str = "user_guidance") -> None:
    """Refuse a user-guidance scale that is not a finite number >= 0, in one line naming ``name`` (a flag or key)."""
    if not user_guidance_in_range(user_guidance):
        raise ConfigError(f"{name}={user_guidance!r}: expected a finite number >= 0 (1: the cover as trained, 0: the "
                          "cold-start user's cover, > 1: more of the user)")  # fmt: skip


def check_pipeline_guidance(guidance_scale: float, user_guidance: float) -> None:
    """Refuse what a stock diffusers pipeline cannot draw: it takes one negative and guides only with scales > 1."""
    check_user_guidance(user_guidance)
    if user_guidance != 1 and guidance_scale > 1:
        raise ConfigError(f"user_guidance={user_guidance:g} with guidance_scale={guidance_scale:g}: a diffusers "
                          "pipeline takes one negative, so it cannot do both; set one of them to 1, or sample with "
                          "CoverGenerator itself")  # fmt: skip
    if user_guidance < 1:
        raise ConfigError(f"user_guidance={user_guidance:g}: a diffusers pipeline guides only with scales > 1; sample "
                          "0 <= user_guidance < 1 with CoverGenerator itself")  # fmt: skip


class CoverGenerator:
    """A trained ICG: ``(user ids, titles, reference images) -> covers``.

    Args:
        conditioner: the trained ``CoverConditioner`` (meta-token prompter, user fusion, adapter, title prompt).
        diffusion: the stock UNet, VAE and DDIM scheduler.
        users: the user table (stage-1 embeddings and the cold-start fallback).
        settings: sampling defaults.
        negative: the classifier-free guidance negative (1 row); None computes it from the conditioner when needed
            (during training the conditioner changes, so it is never cached then).
        source: where ``diffusion`` came from (recorded by :meth:`save_pretrained`).
        provenance: where the trained weights came from (checkpoint paths, step), as an export records it.
    """

    def __init__(
        self,
        conditioner: torch.nn.Module,
        diffusion: DiffusionComponents,
        users: UserTable,
        settings: SamplerSettings | None = None,
        negative: Conditioning | None = None,
        source: DiffusionSource | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.conditioner = conditioner
        self.diffusion = diffusion
        self.users = users
        self.settings = settings or SamplerSettings()
        self.negative = negative
        self.source = source
        self.provenance = dict(provenance or {})
        self.mllm_calls = 0  # rows the MLLM has read (item features computed), for the cost of a run

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        base_model: str | None = None,
        mllm: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> CoverGenerator:
        """Load an ``icg export`` folder.

        Args:
            folder: the export folder.
            base_model: the base diffusion folder, overriding the path recorded at export (the title prompt's text
                encoder is read from it too when it was read from the base model at export).
            mllm: the MLLM folder, overriding the path recorded at export.
            device: where the generator runs.
            dtype: UNet/VAE dtype (``torch.bfloat16``, ``"float16"``...); None keeps the export's.
        """
        folder = Path(folder)
        parts = read_export(folder, base_model=base_model, mllm=mllm)
        return cls.from_parts(parts, device, dtype, config_key="base_model",
                              lora_name=f"the UNet LoRA in {folder / LORA_WEIGHTS}")  # fmt: skip

    @classmethod
    def from_checkpoint(  # noqa: PLR0913  # the checkpoint's paths, each overridable as the evaluation's keys are
        cls,
        stage3_ckpt: str | Path,
        preference_ckpt: str | None = None,
        base_model: str | None = None,
        mllm: str | None = None,
        device: torch.device | str = "cpu",
        config_key: str = "stage3_ckpt",
        keep_tiny: bool = False,
    ) -> CoverGenerator:
        """A ready generator straight from a stage-3 checkpoint (evaluation; no export folder needed); the arguments
        are ``icg.generation.export.checkpoint_parts``'s."""
        parts = checkpoint_parts(stage3_ckpt, preference_ckpt, base_model, mllm, config_key, keep_tiny)
        return cls.from_parts(parts, device, None, config_key=f"{config_key} (diffusion)")

    @classmethod
    def from_parts(
        cls,
        parts: ExportParts,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        config_key: str = "base_model",
        lora_name: str = "the stage-3 checkpoint's UNet LoRA",
    ) -> CoverGenerator:
        """The generator of an export's or a checkpoint's parts: loads their diffusion model (and their LoRA onto it).

        Args:
            parts: what ``icg.generation.export`` read (``read_export``, ``checkpoint_parts``).
            device: where the generator runs.
            dtype: UNet/VAE dtype (``torch.bfloat16``, ``"float16"``...); None keeps the loaded one.
            config_key: the key that names the diffusion folder, quoted in errors.
            lora_name: what the LoRA is called in errors (a LoRA trained on another base is refused).
        """
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise UserError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        diffusion = parts.source.load(config_key)
        if parts.lora is not None:  # the trained LoRA onto the stock denoiser, refused if trained on another base
            load_lora(diffusion.denoiser, *parts.lora, config_key=config_key, what=lora_name)
        generator = cls(parts.conditioner, diffusion, parts.users, parts.settings, source=parts.source,
                        provenance=parts.provenance).to(device, dtype)  # fmt: skip
        if parts.negative is not None:
            generator.negative = parts.negative.to(generator.device)
        return generator

    def save_pretrained(
        self, folder: str | Path, provenance: dict[str, Any] | None = None, overwrite: bool = False
    ) -> Path:
        """Write an export folder (see ``icg.generation.export``) that :meth:`from_pretrained` loads."""
        if self.source is None:
            raise ValueError("this generator does not know where its diffusion model came from (source=None)")
        parts = ExportParts(self.conditioner, self.users, self.settings, self.source, dict(provenance or {}),
                            current_lora(self.diffusion.denoiser))  # fmt: skip
        return write_parts(parts, folder, overwrite=overwrite)

    # ----------------------------------------------------------------------------------------------- plumbing
    @property
    def device(self) -> torch.device:
        return self.diffusion.device

    @property
    def image_size(self) -> int:
        return int(self.settings.image_size or self.diffusion.default_image_size)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CoverGenerator:
        """Move (and optionally cast the UNet/VAE) in place; returns self."""
        self.diffusion.to(device, dtype)
        self.conditioner.to(device)
        self.users.to(device)
        if self.negative is not None:
            self.negative = self.negative.to(device)
        return self

    def item_features(
        self, titles: Sequence[str], references: Tensor, item_keys: Sequence[Any] | None = None
    ) -> Tensor:
        """B x N x D meta-token features of the B rows' items: the MLLM's part, counted in :attr:`mllm_calls`.

        With ``item_keys`` (one hashable key per row: item id, title, reference), the MLLM reads each distinct item of
        the batch once and its rows share the result. The distinct items of a batch are padded as the batch's rows
        would be (the same titles, so the same longest prompt), so the features equal those of one MLLM row per pair.
        """
        if item_keys is None:
            self.mllm_calls += len(titles)
            return self.conditioner.item_features(list(titles), references.to(self.device))
        first: dict[Any, int] = {}  # each distinct item's first row, in order of appearance
        for row, key in enumerate(item_keys):
            first.setdefault(key, row)
        position = {key: i for i, key in enumerate(first)}
        index, rows = [position[key] for key in item_keys], list(first.values())
        self.mllm_calls += len(rows)
        features = self.conditioner.item_features([titles[r] for r in rows], references[rows].to(self.device))
        return features[torch.tensor(index, device=features.device)]

    def conditioning(
        self, user_emb: Tensor, titles: Sequence[str], references: Tensor, features: Tensor | None = None
    ) -> Conditioning:
        """The personalized conditioning of B pairs from user embeddings, titles and references (or the items'
        :meth:`item_features`, computed once and shared)."""
        if features is None:
            features = self.item_features(titles, references)
        return self.conditioner.condition(features, user_emb.to(self.device), list(titles))

    def fallback_conditioning(
        self, titles: Sequence[str], references: Tensor, features: Tensor | None = None
    ) -> Conditioning:
        """User guidance's negative: the B pairs' own titles and references with the cold-start user."""
        return self.conditioning(self.users.fallback(len(titles)), titles, references, features)

    def pair_conditioning(
        self,
        user_emb: Tensor,
        titles: Sequence[str],
        references: Tensor,
        user_guidance: float | None = None,
        item_keys: Sequence[Any] | None = None,
    ) -> tuple[Conditioning, Conditioning | None]:
        """The B pairs' conditioning and, when ``user_guidance`` (None: the export's) is not 1, their cold-start
        negative (:meth:`fallback_conditioning`); what :meth:`sample` takes as ``cond`` and ``user_negative``. The
        MLLM reads the items once for both (and, with ``item_keys``, each distinct item of the batch once)."""
        user_guidance = self.settings.user_guidance if user_guidance is None else user_guidance
        features = self.item_features(titles, references, item_keys)
        cond = self.conditioning(user_emb, titles, references, features)
        return cond, self.fallback_conditioning(titles, references, features) if user_guidance != 1 else None

    def unconditional(self, batch_size: int = 1) -> Conditioning:
        """Classifier-free guidance's negative: empty title, blank reference, the cold-start user."""
        negative = self.negative
        if negative is None:
            negative = negative_conditioning(self.conditioner, self.users, self.device)
        return negative.to(self.device).repeat(batch_size)

    def seeds(self, user_ids: Sequence[str], item_keys: Sequence[str], seed: int | None = None) -> list[int]:
        base = self.settings.seed if seed is None else seed
        return [pair_seed(base, str(u), str(i)) for u, i in zip(user_ids, item_keys, strict=True)]

    def sample(
        self,
        cond: Conditioning,
        seeds: Sequence[int],
        references: Tensor | None = None,
        *,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        uncond: Conditioning | None = None,
        user_guidance: float | None = None,
        user_negative: Conditioning | None = None,
    ) -> Tensor:
        """Covers (B x 3 x H x W in [0, 1]) for a batch's conditioning, one seed per cover.

        The one sampling path of inference: every cover starts from its own seed's noise (and, reference-guided,
        its own VAE posterior sample), so a cover does not depend on the batch it is in. ``user_guidance`` (None: the
        export's) other than 1 needs ``user_negative``, the same pairs with the cold-start user
        (:meth:`pair_conditioning` gives both).
        """
        s = self.settings
        guidance_scale = s.guidance_scale if guidance_scale is None else guidance_scale
        user_guidance = s.user_guidance if user_guidance is None else user_guidance
        check_user_guidance(user_guidance)
        if user_guidance != 1 and user_negative is None:
            raise ValueError(f"user_guidance={user_guidance:g} needs user_negative, the pairs' conditioning with the "
                             "cold-start user (CoverGenerator.pair_conditioning gives both)")  # fmt: skip
        if guidance_scale > 1 and uncond is None:
            uncond = self.unconditional(1)
        return sample_covers(
            self.diffusion,
            cond,
            seeds,
            references,
            num_steps=s.num_steps if num_steps is None else num_steps,
            guidance_scale=guidance_scale,
            strength=s.strength if strength is None else strength,
            image_size=self.image_size,
            uncond=uncond,
            user_guidance=float(user_guidance),
            user_negative=user_negative if user_guidance != 1 else None,
        )

    def pick(
        self,
        cond: Conditioning,
        seeds: Sequence[int],
        references: Tensor | None,
        how: BestOf,
        user_ids: Sequence[str],
        titles: Sequence[str],
        **sampling: Any,
    ) -> PickedCovers:
        """Best of N: ``how.candidates`` covers per pair (candidate 0 from the pair's seed: the cover :meth:`sample`
        makes), scored by ``how.scorer`` for the pairs' users, the best kept (``icg.generation.picking``); N times
        the sampling work of :meth:`sample`.

        Args:
            cond, seeds, references: as :meth:`sample`'s (the pairs' own seeds).
            how: the scorer, N and whether to keep every candidate.
            user_ids: the B users the covers are scored for.
            titles: the B items' titles.
            sampling: :meth:`sample`'s keyword arguments (steps, guidance, strength, user guidance).
        """
        return best_of(
            lambda candidate_seeds: self.sample(cond, candidate_seeds, references, **sampling),
            lambda images: how.scorer(images, user_ids, titles),
            seeds,
            how.candidates,
            keep_all=how.keep_all,
        )

    # ----------------------------------------------------------------------------------------------- training
    def sample_with_grad(
        self,
        cond: Conditioning,
        window: GradientWindow,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        reference: Tensor | None = None,
    ) -> Tensor:
        """Stage 3's training covers in [0, 1], the graph kept in the gradient window only (no guidance).

        One generator (not per-pair seeds) draws the batch's noise, as training always has; ``reference`` (the batch's
        reference covers) is used where the settings' ``strength < 1``.
        """
        s = self.settings
        return sample(
            self.diffusion,
            cond,
            num_steps=s.num_steps,
            reference=reference if s.strength < 1 else None,
            strength=s.strength,
            grad_window=window.grad_window,
            k=window.k,
            random_step_range=tuple(window.random_step_range),
            x0_shortcut=window.x0_shortcut if window.grad_window != "none" else None,
            gradient_checkpointing=window.gradient_checkpointing,
            generator=generator,
            latents=latents,
            height=self.image_size,
            width=self.image_size,
        )

    def denoising_loss(self, images: Tensor, cond: Conditioning, generator: torch.Generator | None = None) -> Tensor:
        """The denoiser's noise-prediction loss on ``images`` under ``cond`` (stage 3's regularizer)."""
        return denoising_loss(self.diffusion, images, cond, generator)

    # ------------------------------------------------------------------------------------------------ calling
    @torch.no_grad()
    def __call__(  # noqa: PLR0913  # one keyword per per-call override of the settings, as diffusers pipelines take
        self,
        user_ids: Sequence[str],
        titles: Sequence[str],
        images: ImageInput,
        *,
        item_ids: Sequence[str] | None = None,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        user_guidance: float | None = None,
        best_of: BestOf | None = None,
        output_type: str = "pil",
    ) -> GeneratedCovers:
        """Covers for B (user, item) pairs.

        Args:
            user_ids: B user ids; an id unknown to the export gets the cold-start fallback (warned, and flagged in
                the result's ``fallback``).
            titles: B item titles.
            images: B reference covers: PIL images, file paths, or a B x 3 x H x W tensor in [0, 1].
            item_ids: B item ids for the per-pair seeds; None derives a key from each title and reference.
            seed: base seed (None: the export's).
            num_steps: DDIM steps (None: the export's).
            guidance_scale: classifier-free guidance (None: the export's).
            strength: 1 = from pure noise, < 1 = reference-guided (None: the export's).
            user_guidance: s >= 0, from the cold-start user's prediction towards the user's (None: the export's; 1:
                as trained; > 1 costs one more denoiser row per cover).
            best_of: draw ``best_of.candidates`` covers per pair and return the one ``best_of.scorer`` gives the
                highest click probability (``BestOf(ClickScorer.from_checkpoint(stage-1 checkpoint), N)``; N times the
                sampling work). None: one cover per pair, no scoring.
            output_type: ``"pil"`` (list of PIL images) or ``"pt"`` (tensor in [0, 1]).
        """
        user_ids, titles = [str(u) for u in user_ids], [str(t) for t in titles]
        references = reference_batch(images, self.image_size, self.device)
        if not len(user_ids) == len(titles) == references.shape[0]:
            raise ValueError(f"got {len(user_ids)} users, {len(titles)} titles and {references.shape[0]} images")
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        if item_ids is None:
            keys = [content_key(t, r) for t, r in zip(titles, references, strict=True)]
        else:
            keys = [str(i) for i in item_ids]
            if len(keys) != len(user_ids):
                raise ValueError(f"got {len(keys)} item ids for {len(user_ids)} pairs")
        user_emb, known = self.users.lookup(user_ids)
        unknown = sorted({u for u, k in zip(user_ids, known, strict=True) if not k})
        if unknown:
            log.warning(
                "%d user(s) unknown to this export get the cold-start fallback embedding: %s",
                len(unknown),
                ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
            )
        seeds = self.seeds(user_ids, keys, seed)
        cond, negative = self.pair_conditioning(user_emb, titles, references, user_guidance)
        sampling = {"num_steps": num_steps, "guidance_scale": guidance_scale, "strength": strength,
                    "user_guidance": user_guidance, "user_negative": negative}  # fmt: skip
        picked = None
        if best_of is None:
            images_out = self.sample(cond, seeds, references, **sampling)
        else:
            picked = self.pick(cond, seeds, references, best_of, user_ids, titles, **sampling)
            images_out = picked.images
        return GeneratedCovers(
            images=to_pil(images_out) if output_type == "pil" else images_out.cpu(),
            user_ids=user_ids,
            item_keys=keys,
            seeds=seeds,
            fallback=[not k for k in known],
            candidate=picked.index.tolist() if picked is not None else [],
            score=picked.scores.tolist() if picked is not None else [],
            candidate_scores=picked.all_scores if picked is not None else None,
            candidate_images=picked.all_images.cpu() if picked is not None and picked.all_images is not None else None,
        )

    @torch.no_grad()
    def pipeline_inputs(
        self,
        user_ids: Sequence[str],
        titles: Sequence[str],
        images: ImageInput,
        *,
        item_ids: Sequence[str] | None = None,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        user_guidance: float | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments that make a stock diffusers pipeline draw the same covers as ``self(...)``.

        ICG's conditioning goes in as ``prompt_embeds`` (+ ``pooled_prompt_embeds`` for SDXL and Flux) and its guidance
        negative as ``negative_prompt_embeds``; the per-pair seeds as a list of generators. Use
        ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (or their ``Img2Img`` variants when
        ``strength < 1``: the dict then carries ``image`` and ``strength``) loaded from the base model's folder with a
        ``DDIMScheduler`` from its config for identical images; any other scheduler, offloading or callback works as
        diffusers documents it. Flux: ``FluxPipeline`` / ``FluxImg2ImgPipeline`` with its own scheduler; ICG's
        guidance is the pipeline's ``true_cfg_scale`` and FLUX.1-dev's embedded guidance its ``guidance_scale``. An
        export with a UNet LoRA: ``pipe.load_lora_weights(export_folder)`` first.

        User guidance (``user_guidance`` s > 1) goes in as the pipeline's guidance with the pairs' cold-start
        conditioning as ``negative_prompt_embeds`` (the pipeline's guidance formula is user guidance's). A pipeline
        takes one negative and guides only with scales > 1, so s > 1 together with ``guidance_scale`` > 1, and
        0 <= s < 1, are refused (``ConfigError``): sample those with ``self(...)``.

        Raises when the conditioning masks padding tokens, which diffusers' pipelines cannot
        take (SD 1.5 / SDXL text encoders do not mask; the demo's stand-in encodes titles with ``padding="attended"``
        for that reason).
        """
        s = self.settings
        user_ids, titles = [str(u) for u in user_ids], [str(t) for t in titles]
        references = reference_batch(images, self.image_size, self.device)
        keys = (
            [str(i) for i in item_ids]
            if item_ids is not None
            else [content_key(t, r) for t, r in zip(titles, references, strict=True)]
        )
        user_emb, _ = self.users.lookup(user_ids)
        guidance_scale = s.guidance_scale if guidance_scale is None else guidance_scale
        user_guidance = s.user_guidance if user_guidance is None else user_guidance
        check_pipeline_guidance(guidance_scale, user_guidance)
        strength = s.strength if strength is None else strength
        cond, user_negative = self.pair_conditioning(user_emb, titles, references, user_guidance)
        if user_negative is not None:  # user guidance alone: the pipeline's one negative is the cold-start user
            guidance_scale, negative = user_guidance, user_negative
        else:
            negative = self.unconditional(len(user_ids)) if guidance_scale > 1 else None
        parts = [("", cond)] + ([("negative_", negative)] if negative is not None else [])
        kwargs: dict[str, Any] = {
            "num_inference_steps": s.num_steps if num_steps is None else num_steps,
            "generator": pair_generators(self.seeds(user_ids, keys, seed)),
        }
        kwargs |= self.diffusion.pipeline_guidance(guidance_scale)  # the family's (Flux: true_cfg_scale)
        for prefix, part in parts:
            mask = part.attention_mask
            if mask is not None and not bool(mask.bool().all()):
                raise ValueError(
                    "this ICG's conditioning masks padding tokens, which diffusers' pipelines cannot take; its title "
                    "prompt's encoder must attend to padding (as CLIP does) to run in a stock pipeline"
                )
            kwargs[f"{prefix}prompt_embeds"] = part.encoder_hidden_states
            if part.pooled is not None:
                kwargs[f"{prefix}pooled_prompt_embeds"] = part.pooled
        if strength < 1:
            kwargs |= {"image": references, "strength": strength}
        if self.diffusion.pipeline_takes_size(img2img=strength < 1):
            kwargs |= {"height": self.image_size, "width": self.image_size}
        return kwargs

    def config(self) -> dict[str, Any]:
        """What an export's ``icg_config.json`` records of this generator (besides weights)."""
        return {
            "conditioner": self.conditioner.spec,
            "diffusion": asdict(self.source) if self.source is not None else None,
            "sampler": asdict(self.settings),
            "users": {"count": len(self.users), "embed_dim": self.users.embed_dim, "fallback": "last row"},
        }

    def __repr__(self) -> str:
        return f"CoverGenerator({json.dumps(asdict(self.settings))}, users={len(self.users)}, device={self.device})"
