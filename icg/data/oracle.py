"""The synthetic platform's true click model: any image tensor x any user -> P(click), differentiable.

The synthetic platform (``icg.data.synthetic``, ``icg data synth``) stands in for a content platform in the
embedded default of ICG (Bian et al., EMNLP 2025). Its users click covers according to a hidden, known model
defined on *differentiable pixel statistics*, so the same model scores any cover (a rendered reference cover, a
generated one, a noise image) at any resolution:

    phi(image) = [occupancy of each palette colour (K values), brightness, colourfulness, contrast, edge energy,
                  backdrop red-green, backdrop yellow-blue]
    z          = (phi - feature_mean) / feature_std          (statistics of the platform's own covers)
    logit(u)   = bias + population_taste . z + strength * user_taste[u] . z
    P(click | u, image) = sigmoid(logit(u))

Palette occupancy is soft: every pixel gets a softmax over negative squared RGB distances to the palette colours
and a few neutral greys (temperature ``tau``), and the palette part is averaged over the image, so a pixel moving
towards a colour the user likes raises the score smoothly. The two backdrop features are the mean opponent colours
(red minus green, yellow minus blue) of the image's outer frame, where the backdrop shows: they carry the backdrop's
hue, which no title names. Images are first resized (bilinear, antialiased) to the
platform's ``analysis_size`` so the statistics do not depend on the input resolution.

The oracle serves evaluation (the best achievable AUC, how much the true user would click generated covers) and
the demo's stand-in rewards only; the real pipeline never reads it. docs/data.md, "The synthetic platform",
describes the generator and this model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

logger = logging.getLogger(__name__)

TRUTH_DIR = "truth"
TRUTH_JSON = "truth.json"
ORACLE_TENSORS = "oracle.safetensors"
SCALAR_FEATURES = ("brightness", "colourfulness", "contrast", "edge_energy", "backdrop_rg", "backdrop_yb")
BACKDROP_FRAME = 0.78  # the backdrop features read the frame max(|x|, |y|) > this (image coordinates in [-1, 1])
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
EPS = 1e-6


def user_tastes(root: str | Path) -> dict[str, dict[str, Any]]:
    """Each user's hidden taste in words, from ``<root>/truth/truth.json`` (empty when the dataset has no truth).

    Returns:
        user id -> ``{"likes": [(colour name, [r, g, b]), ...], "dislikes": [...], "brightness": "light" | ...,
        "backdrop": (hue name, [r, g, b])}``, RGB in [0, 1] (grey where the palette does not name the colour; the
        backdrop's swatch is the hue on a light grey).
    """
    path = Path(root) / TRUTH_DIR / TRUTH_JSON
    if not path.is_file():
        return {}
    truth = json.loads(path.read_text())
    rgb = {c["name"]: c["rgb"] for c in truth.get("palette", [])}
    hues = {h["name"]: h["rgb"] for h in truth.get("backdrop_hues", [])}
    return {
        u["user_id"]: {
            "likes": [(c, rgb.get(c, [0.5] * 3)) for c in u.get("likes", [])],
            "dislikes": [(c, rgb.get(c, [0.5] * 3)) for c in u.get("dislikes", [])],
            "brightness": u.get("brightness"),
        }
        | ({"backdrop": (u["backdrop"], hues.get(u["backdrop"], [0.5] * 3))} if "backdrop" in u else {})
        for u in truth.get("users", [])
    }


def feature_names(palette_names: Sequence[str]) -> list[str]:
    """Names of the entries of ``phi``, in order: ``occupancy/<colour>`` per palette colour, then the scalars."""
    return [f"occupancy/{name}" for name in palette_names] + list(SCALAR_FEATURES)


def cover_features(images: Tensor, anchors: Tensor, num_palette: int, tau: float, analysis_size: int) -> Tensor:
    """The pixel statistics ``phi`` the click model is defined on; differentiable w.r.t. ``images``.

    Args:
        images: B x 3 x H x W, values in [0, 1] (any H, W).
        anchors: A x 3 RGB colours in [0, 1]: the first ``num_palette`` are the palette, the rest neutral greys that
            absorb background pixels so they do not count as a palette colour.
        num_palette: how many leading anchors are palette colours.
        tau: softmax temperature on squared RGB distances (smaller = crisper occupancy).
        analysis_size: images are resized to this square size first, so every statistic is resolution-free.

    Returns:
        B x (num_palette + 6): palette occupancies (fractions in [0, 1] summing to at most 1), brightness (mean luma,
        [0, 1]), colourfulness (mean max-min channel spread, [0, 1]), contrast (luma std, [0, 0.5]), edge energy
        (mean luma gradient magnitude between neighbouring pixels at ``analysis_size``, [0, ~1.4]) and the backdrop's
        hue: mean R - G and mean (R + G) / 2 - B over the outer frame (``BACKDROP_FRAME``), each in [-1, 1].
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W, got shape {tuple(images.shape)}")
    x = images.to(anchors.dtype)
    if tuple(x.shape[-2:]) != (analysis_size, analysis_size):
        x = F.interpolate(x, size=(analysis_size, analysis_size), mode="bilinear", antialias=True, align_corners=False)
    pixels = x.permute(0, 2, 3, 1)  # B x S x S x 3
    # |p - a|^2 expanded: one matmul instead of a B x S x S x A x 3 difference tensor
    dist2 = (pixels**2).sum(-1, keepdim=True) - 2.0 * pixels @ anchors.T + (anchors**2).sum(-1)  # B x S x S x A
    occupancy = torch.softmax(-dist2 / tau, dim=-1)[..., :num_palette].mean(dim=(1, 2))
    weights = anchors.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    luma = (x * weights).sum(1)  # B x S x S
    brightness = luma.mean(dim=(1, 2))
    colourfulness = (x.amax(1) - x.amin(1)).mean(dim=(1, 2))
    # sqrt(var + eps) rather than .std(): finite gradient on flat images
    contrast = ((luma - brightness.view(-1, 1, 1)) ** 2).mean(dim=(1, 2)).add(EPS).sqrt()
    dx = luma[:, :-1, 1:] - luma[:, :-1, :-1]
    dy = luma[:, 1:, :-1] - luma[:, :-1, :-1]
    edge = (dx**2 + dy**2 + EPS).sqrt().mean(dim=(1, 2))
    frame = backdrop_frame(analysis_size, x.device, x.dtype)
    frame_mean = (x * frame).sum(dim=(2, 3)) / frame.sum()  # B x 3
    red_green = frame_mean[:, 0] - frame_mean[:, 1]
    yellow_blue = (frame_mean[:, 0] + frame_mean[:, 1]) / 2 - frame_mean[:, 2]
    scalars = [brightness, colourfulness, contrast, edge, red_green, yellow_blue]
    return torch.cat([occupancy, torch.stack(scalars, dim=1)], dim=1)


def backdrop_frame(size: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """1 x 1 x size x size mask of the outer frame ``max(|x|, |y|) > BACKDROP_FRAME`` (pixel centres in [-1, 1])."""
    t = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size * 2.0 - 1.0
    return (torch.maximum(t.abs()[:, None], t.abs()[None, :]) > BACKDROP_FRAME).to(dtype)[None, None]


class Oracle(nn.Module):
    """The true click model of a synthetic platform: ``forward(images, user_idx) -> P(click)``.

    All tensors are frozen buffers (nothing to train; ``parameters()`` is empty), and ``forward`` is not wrapped in
    ``no_grad`` so gradients reach the pixels.

    Args:
        anchors: A x 3 palette colours followed by neutral greys, RGB in [0, 1].
        num_palette: number of palette colours at the head of ``anchors``.
        tau: occupancy softmax temperature.
        analysis_size: square size images are resized to before computing ``phi``.
        feature_mean: F, mean of ``phi`` over the platform's reference covers.
        feature_std: F, standard deviation of ``phi`` over those covers.
        population_taste: F, the taste every user shares.
        user_taste: U x F, each user's hidden taste (row order = ``user_ids``).
        bias: scalar logit offset.
        strength: scalar multiplier of the personal term.
        user_ids: the users' string ids, sorted (the DataModule's ``user_ids`` order).
        palette_names: names of the palette colours (for ``feature_names``).
    """

    def __init__(  # noqa: PLR0913  # the platform's truth, rebuilt by keyword from meta.json
        self,
        anchors: Tensor,
        num_palette: int,
        tau: float,
        analysis_size: int,
        feature_mean: Tensor,
        feature_std: Tensor,
        population_taste: Tensor,
        user_taste: Tensor,
        bias: float,
        strength: float,
        user_ids: Sequence[str],
        palette_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        num_features = num_palette + len(SCALAR_FEATURES)
        for name, tensor, shape in (
            ("anchors", anchors, (anchors.shape[0], 3)),
            ("feature_mean", feature_mean, (num_features,)),
            ("feature_std", feature_std, (num_features,)),
            ("population_taste", population_taste, (num_features,)),
            ("user_taste", user_taste, (len(user_ids), num_features)),
        ):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"Oracle: {name} has shape {tuple(tensor.shape)}, expected {shape}")
        if list(user_ids) != sorted(user_ids):
            raise ValueError("Oracle: user_ids must be sorted (the DataModule's order)")
        self.num_palette = int(num_palette)
        self.tau = float(tau)
        self.analysis_size = int(analysis_size)
        self.user_ids = list(user_ids)
        self.palette_names = list(palette_names) if palette_names is not None else [str(k) for k in range(num_palette)]
        self._index = {user_id: k for k, user_id in enumerate(self.user_ids)}
        self.register_buffer("anchors", anchors.float().clone())
        self.register_buffer("feature_mean", feature_mean.float().clone())
        self.register_buffer("feature_std", feature_std.float().clamp_min(1e-3).clone())
        self.register_buffer("population_taste", population_taste.float().clone())
        self.register_buffer("user_taste", user_taste.float().clone())
        self.register_buffer("bias", torch.tensor(float(bias)))
        self.register_buffer("strength", torch.tensor(float(strength)))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_dataset(cls, root: str | Path) -> Oracle:
        """Load the hidden truth that ``generate_platform`` saved under ``<root>/truth/``.

        Args:
            root: a dataset folder written by ``icg data synth``.
        """
        truth = Path(root) / TRUTH_DIR
        json_path, tensor_path = truth / TRUTH_JSON, truth / ORACLE_TENSORS
        for path in (json_path, tensor_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: missing; only a synthetic platform (icg data synth) has a hidden truth to load"
                )
        info = json.loads(json_path.read_text())
        tensors = load_file(str(tensor_path))
        model = info["click_model"]
        return cls(
            anchors=tensors["anchors"],
            num_palette=len(info["palette"]),
            tau=model["tau"],
            analysis_size=model["analysis_size"],
            feature_mean=tensors["feature_mean"],
            feature_std=tensors["feature_std"],
            population_taste=tensors["population_taste"],
            user_taste=tensors["user_taste"],
            bias=model["bias"],
            strength=model["strength"],
            user_ids=info["user_ids"],
            palette_names=[colour["name"] for colour in info["palette"]],
        )

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.palette_names)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def user_index(self, user_ids: Sequence[str], unknown: str = "error") -> Tensor:
        """Map string user ids to row indices of ``user_taste`` (the DataModule's ``user_idx``).

        Args:
            user_ids: string ids.
            unknown: ``error`` raises on an id the platform does not have; ``fallback`` maps it to ``-1``
                (scored with the population taste only).
        """
        if unknown not in ("error", "fallback"):
            raise ValueError(f"unknown must be 'error' or 'fallback', got {unknown!r}")
        indices = []
        for user_id in user_ids:
            index = self._index.get(str(user_id), -1)
            if index < 0 and unknown == "error":
                raise KeyError(f"user id {user_id!r} is not a user of this synthetic platform")
            indices.append(index)
        return torch.tensor(indices, dtype=torch.long, device=self.user_taste.device)

    def features(self, images: Tensor) -> Tensor:
        """``phi(images)``: B x F raw pixel statistics (see ``cover_features``); differentiable."""
        return cover_features(images, self.anchors, self.num_palette, self.tau, self.analysis_size)

    def standardized_features(self, images: Tensor) -> Tensor:
        """``z = (phi - feature_mean) / feature_std``, the inputs of the click model."""
        return (self.features(images) - self.feature_mean) / self.feature_std

    def logits(self, images: Tensor, user_idx: Tensor) -> Tensor:
        """True click logits, B; ``user_idx == -1`` means an unknown user (population taste only)."""
        user_idx = torch.as_tensor(user_idx, dtype=torch.long, device=self.user_taste.device).reshape(-1)
        if user_idx.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {user_idx.shape[0]} user indices")
        if user_idx.numel() and (int(user_idx.min()) < -1 or int(user_idx.max()) >= self.num_users):
            raise IndexError(
                f"user_idx out of range [-1, {self.num_users - 1}]: min {int(user_idx.min())}, "
                f"max {int(user_idx.max())}"
            )
        z = self.standardized_features(images)
        known = (user_idx >= 0).to(z.dtype).unsqueeze(1)
        taste = self.user_taste[user_idx.clamp_min(0)] * known
        return self.bias + z @ self.population_taste + self.strength * (z * taste).sum(1)

    def logit_matrix(self, images: Tensor, users: Tensor | None = None) -> Tensor:
        """True click logits of every user (or of ``users``, row indices) for every image, U x B (features computed
        once)."""
        z = self.standardized_features(images)
        taste = self.user_taste if users is None else self.user_taste[torch.as_tensor(users, dtype=torch.long)]
        return self.bias + (z @ self.population_taste)[None, :] + self.strength * taste @ z.T

    def probability_matrix(self, images: Tensor) -> Tensor:
        """True click probabilities of every user for every image, U x B (features computed once)."""
        return torch.sigmoid(self.logit_matrix(images))

    def forward(self, images: Tensor, user_idx: Tensor) -> Tensor:
        """True click probabilities in (0, 1), B, differentiable w.r.t. ``images`` (B x 3 x H x W in [0, 1])."""
        return torch.sigmoid(self.logits(images, user_idx))


TASTE_GROUPS = (
    ("object colour (named)", lambda name: name.startswith("occupancy/")),
    ("light or dark (named)", lambda name: name == "brightness"),
    ("backdrop hue (not named)", lambda name: name.startswith("backdrop_")),
    (
        "finish: colourfulness, contrast, edges (not named)",
        lambda name: name in ("colourfulness", "contrast", "edge_energy"),
    ),
)


@torch.no_grad()
def variance_split(oracle: Oracle, images: Tensor) -> dict[str, Any]:
    """Where the click logit's variance over (user, cover) sits, on ``images`` (e.g. the platform's own covers).

    Two-way decomposition of the U x B logit table: the cover term (column means), the user term (row means) and the
    user x cover term (what is left: taste that depends on both). The user x cover term is then split by feature group
    (``TASTE_GROUPS``): each group's double-centred share ``strength * taste[g] . z[g]``; shares of correlated groups
    need not sum to exactly 1.

    Returns:
        ``{"user_x_cover": share, "cover": share, "user": share, "taste": {group: share of user_x_cover}}``.
    """
    z = oracle.standardized_features(images)  # B x F
    taste = oracle.user_taste * oracle.strength  # U x F
    logits = oracle.bias + (z @ oracle.population_taste)[None, :] + taste @ z.T  # U x B

    def centred(table: Tensor) -> Tensor:
        return table - table.mean(0, keepdim=True) - table.mean(1, keepdim=True) + table.mean()

    total = logits.var(unbiased=False)
    interaction = centred(logits)
    split = {
        "user_x_cover": float(interaction.var(unbiased=False) / total),
        "cover": float(logits.mean(0).var(unbiased=False) / total),
        "user": float(logits.mean(1).var(unbiased=False) / total),
    }
    names = oracle.feature_names
    shares = {}
    for group, member in TASTE_GROUPS:
        mask = torch.tensor([member(n) for n in names], dtype=z.dtype, device=z.device)
        shares[group] = float(centred((taste * mask) @ z.T).var(unbiased=False) / interaction.var(unbiased=False))
    return split | {"taste": shares}
