"""Stand-in rewards for the synthetic platform, where no public reward weights exist.

ICG (Bian et al., EMNLP 2025) aligns its adapter with a public aesthetic reward (the LAION predictor on CLIP
ViT-L/14) and a public relevance reward (ImageReward / CLIP image-title similarity). The embedded default runs on a
synthetic platform with tiny models and no downloads, so those weights cannot be used there. These two modules are
clearly marked **stand-ins for the synthetic platform**; real runs use ``AestheticReward``, ``ImageRewardRelevance``
and ``ClipRelevance`` instead (``lightning_configs/real/stage2_rewards.yaml``).

* ``ColorfulnessAesthetic``: a weight-free "aesthetic" made of the Hasler-Suesstrunk colourfulness metric
  (Hasler & Suesstrunk, "Measuring colourfulness in natural images", SPIE 2003) plus RMS contrast, all torch ops.
* ``TitleCoverRelevance``: a small dual encoder that stage 2 fits contrastively (CLIP-style symmetric InfoNCE) on
  the platform's own (title, cover) pairs: titles through a tokenizer-free hashed bag of lowercase word n-grams
  (``nn.EmbeddingBag`` over fixed buckets, nothing to download), covers through a tiny conv net, score =
  cosine similarity x a learnable temperature. Trainable in stage 2 (it defines ``fit_loss``), frozen afterwards.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg.ckpt import init_spec
from icg.diffusion.title_tokens import hash_bucket
from icg.errors import ConfigError
from icg.models.image_ops import check_images, resize_center_crop
from icg.models.rewards.base import Reward, RewardContext, require_titles

# BT.601 luma: perceived brightness, the usual basis of RMS contrast.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
EPS = 1e-6
WORD_PATTERN = re.compile(r"[a-z0-9]+")
# CLIP caps its learnable logit scale at 100 so the softmax cannot collapse; same here.
MAX_LOGIT_SCALE = math.log(100.0)


class ColorfulnessAesthetic(Reward):
    """Stand-in for the synthetic platform: a weight-free, differentiable "aesthetic" (colourfulness + contrast).

    ``colourfulness = sigma_rgyb + 0.3 * mu_rgyb`` with ``rg = R - G`` and ``yb = (R + G) / 2 - B`` (Hasler &
    Suesstrunk 2003, on pixels in [0, 1] rather than [0, 255]) and ``contrast`` = standard deviation of BT.601 luma.
    Score = ``colourfulness_weight * colourfulness + contrast_weight * contrast``; with the default weights it lies
    in [0, ~1.6] (a flat grey image scores ~0, saturated high-contrast images ~1). Square roots carry an epsilon so
    flat images still get a finite gradient.

    Args:
        name: the reward's name in the bundle and in metric keys.
        colourfulness_weight: weight of the colourfulness term.
        contrast_weight: weight of the RMS-contrast term.
        analysis_size: images are resized to this square size first, so the score does not depend on resolution.
    """

    def __init__(
        self,
        name: str = "aesthetic",
        colourfulness_weight: float = 1.0,
        contrast_weight: float = 1.0,
        analysis_size: int = 64,
    ) -> None:
        super().__init__()
        self.name = name
        self.colourfulness_weight = float(colourfulness_weight)
        self.contrast_weight = float(contrast_weight)
        self.analysis_size = int(analysis_size)
        self.register_buffer("luma_weights", torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1), persistent=False)
        self.spec = init_spec(self, locals())
        self.freeze()

    def forward(self, images: Tensor, context: RewardContext | None = None) -> Tensor:
        """Score images B x 3 x H x W in [0, 1] -> B (the context is not used)."""
        check_images(images, f"{type(self).__name__} '{self.name}'")
        x = resize_center_crop(images.float(), self.analysis_size, "bilinear")
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rg = (r - g).flatten(1)
        yb = (0.5 * (r + g) - b).flatten(1)
        sigma = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + EPS).sqrt()
        mu = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + EPS).sqrt()
        colourfulness = sigma + 0.3 * mu
        luma = (x * self.luma_weights).sum(1).flatten(1)
        contrast = (luma.var(dim=1, unbiased=False) + EPS).sqrt()
        return self.colourfulness_weight * colourfulness + self.contrast_weight * contrast


def title_ngrams(title: str, ngrams: int) -> list[str]:
    """Lowercase alphanumeric words of ``title`` and their word n-grams up to ``ngrams`` (joined by spaces)."""
    words = WORD_PATTERN.findall(title.lower())
    grams = list(words)
    for n in range(2, ngrams + 1):
        grams += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return grams


class TitleCoverRelevance(Reward):
    """Stand-in for the synthetic platform: a (title, cover) dual encoder fitted in stage 2 on the platform's pairs.

    Text tower: hashed bag of lowercase word n-grams -> ``nn.EmbeddingBag`` (mean) -> linear. Image tower: resize to
    ``image_size`` -> three stride-2 conv layers -> global average pool, concatenated with per-channel mean/std ->
    linear. Score = ``exp(logit_scale) * cos(text, image)``, in [-exp(logit_scale), exp(logit_scale)]
    (``logit_scale`` is learned, starts at ``log(init_temperature)``, capped at ``log(100)``).

    The module is built frozen like every reward; stage 2 unfreezes it because it defines ``fit_loss`` (the
    symmetric InfoNCE loss over a batch of pairs), and the bundle loaded by stage 3 is frozen again.

    Args:
        name: the reward's name in the bundle and in metric keys.
        num_buckets: size of the hashed n-gram vocabulary (bucket 0 = empty title).
        ngrams: longest word n-gram hashed (1 = bag of words, 2 = words + word pairs).
        embed_dim: width of the shared embedding space.
        channels: conv widths of the image tower (one stride-2 layer each).
        image_size: covers are resized to this square size before the conv net.
        init_temperature: initial value of ``exp(logit_scale)``.
    """

    def __init__(
        self,
        name: str = "relevance",
        num_buckets: int = 4096,
        ngrams: int = 2,
        embed_dim: int = 64,
        channels: list[int] | None = None,
        image_size: int = 64,
        init_temperature: float = 10.0,
    ) -> None:
        super().__init__()
        if num_buckets < 2:
            raise ConfigError(f"TitleCoverRelevance.num_buckets must be >= 2, got {num_buckets}")
        if ngrams < 1:
            raise ConfigError(f"TitleCoverRelevance.ngrams must be >= 1, got {ngrams}")
        channels = list(channels) if channels is not None else [16, 32, 64]
        self.name = name
        self.num_buckets = int(num_buckets)
        self.ngrams = int(ngrams)
        self.image_size = int(image_size)
        self.text_embedding = nn.EmbeddingBag(self.num_buckets, embed_dim, mode="mean")
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        layers: list[nn.Module] = []
        width = 3
        for out in channels:
            layers += [nn.Conv2d(width, out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            width = out
        self.image_convs = nn.Sequential(*layers)
        # + 6: per-channel mean and std, so colour words are learnable even by a very small conv net
        self.image_proj = nn.Linear(width + 6, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.spec = init_spec(self, locals())
        self.freeze()

    def fit_loss(self, images: Tensor, context: RewardContext) -> Tensor:
        """Symmetric InfoNCE over the batch's (title, cover) pairs; identical titles count as positives."""
        titles = self._titles(images, context)
        text = self.encode_titles(titles)
        image = self.encode_images(images)
        logits = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * text @ image.T
        # two items may share a title: spread the target over every cover of that title
        ids = {title: i for i, title in enumerate(dict.fromkeys(titles))}
        title_ids = torch.tensor([ids[t] for t in titles], device=images.device)
        same = (title_ids[:, None] == title_ids[None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

    def encode_titles(self, titles: list[str]) -> Tensor:
        """Unit-norm title embeddings, len(titles) x embed_dim."""
        device = self.logit_scale.device
        buckets: list[int] = []
        offsets: list[int] = []
        for title in titles:
            offsets.append(len(buckets))
            grams = title_ngrams(title, self.ngrams)
            buckets += [hash_bucket(g, self.num_buckets) for g in grams] if grams else [0]
        bag = self.text_embedding(
            torch.tensor(buckets, dtype=torch.long, device=device),
            torch.tensor(offsets, dtype=torch.long, device=device),
        )
        return F.normalize(self.text_proj(bag), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Unit-norm cover embeddings, B x embed_dim; differentiable w.r.t. the pixels."""
        check_images(images, f"{type(self).__name__} '{self.name}'")
        x = resize_center_crop(images.to(self.logit_scale.dtype), self.image_size, "bilinear")
        stats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)], dim=1)
        # [0, 1] -> [-1, 1] so the first conv sees zero-centred inputs
        features = self.image_convs(x * 2 - 1).mean(dim=(2, 3))
        return F.normalize(self.image_proj(torch.cat([features, stats], dim=1)), dim=-1)

    def forward(self, images: Tensor, context: RewardContext) -> Tensor:
        """Score images B x 3 x H x W in [0, 1] against ``context.titles`` -> B."""
        titles = self._titles(images, context)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * (self.encode_titles(titles) * self.encode_images(images)).sum(-1)

    def _titles(self, images: Tensor, context: RewardContext | None) -> list[str]:
        return require_titles(context or RewardContext(), images.shape[0], f"{type(self).__name__} '{self.name}'")
