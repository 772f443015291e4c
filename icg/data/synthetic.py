"""The synthetic platform of the embedded default (``icg data synth``): items, covers, users, clicks, hidden truth.

ICG (Bian et al., EMNLP 2025) learns covers from user behaviour only. Real data never tells how much a user would
click a *new* cover; this platform does, because its click model is known. It writes a dataset in the format of
``icg.data.schema`` (docs/data.md) plus the hidden truth under ``<root>/truth/``:

* **Items** ``i00000``...: a cover with a main object of a palette colour (red, orange, yellow, green, teal, blue,
  purple, pink), a shape (circle, square, triangle, diamond, star, heart), a background tone (light, dark) and a
  style (flat, striped, gradient, outlined): the attributes the **title names**, in words, from varied templates
  ("Red circle on a dark backdrop, striped"), so a text model can relate title to cover. What the title does not
  name: the backdrop's **hue** (a tint of the light or dark grey: rose, amber, lime, mint, azure or violet), the
  object's size, position and rotation, and a little pixel noise. Covers are PNGs, ``images/<item_id>.png``.
* **Users** ``u0000``...: a hidden taste over the click model's features. On what titles name: one or two liked
  palette colours, one disliked colour, a liking for light or dark covers. On what they do not: a liked backdrop
  hue (the strongest single term), and small random leanings on contrast, colourfulness and edges. Everyone also
  shares a population taste (colourful, contrasted covers do a little better). So a cover can be faithful to its
  title and personal at once (the backdrop), while the object's colour trades fidelity against appeal;
  ``variance_split`` measures the split (docs/data.md).
* **Click model** (``icg.data.oracle``): ``P(click | u, image) = sigmoid(bias + population . z + strength *
  taste_u . z)``, ``z`` the standardized differentiable pixel statistics of the image (soft palette-colour
  occupancy, brightness, colourfulness, contrast, edge energy, the backdrop frame's opponent colours). ``bias`` is
  set so that the mean click probability over all (user, item) pairs is ``TARGET_CTR``. A faithful personal cover
  (everything the title names kept, on the user's liked backdrop hue) raises the probability
  (``personalised_attributes``, ``faithful_variants``).
* **Clicks**: each user wants ``clicks_per_user`` clicks (default ``CLICKS_PER_USER``: 40-80, drawn uniformly); the
  platform shows them items one at a time in a uniformly random order (without repeats), at increasing integer
  timestamps (exponential gaps), and the user clicks with exactly the oracle's probability on the rendered cover,
  until the quota is reached or the catalogue is exhausted (300 items at a mean click probability of 0.2 give a
  user about 60 clicks: on the default platform about half of the users see every item and end with 40-76 clicks).
  Exposure is uniform, so the oracle's probability is the best score any click model can reach on this data.
  Only clicks are written (``implicit: true``); the full impression log (shown and not clicked) is in the truth.
* **Truth** ``truth/``: ``oracle.safetensors`` (the click model's tensors), ``tables.safetensors`` (the U x I
  matrix of true click probabilities on the rendered covers, the impression log) and ``truth.json`` (ids, palette,
  constants, each item's attributes, each user's likes in words). No pickle.

Generation is deterministic given ``seed`` (items, users and clicks draw from separate streams, so changing the
number of users leaves the items unchanged). The default size (200 users, 300 items, 64 px) takes about 2.6 s of CPU
time on 2 cores; docs/data.md records the oracle's AUC on it (the ceiling for stage 1).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file

from icg.data.oracle import (
    ORACLE_TENSORS,
    TRUTH_DIR,
    TRUTH_JSON,
    Oracle,
    cover_features,
    feature_names,
    variance_split,
)
from icg.data.schema import IMAGES_DIR, META_FILE, DatasetMeta, read_dataset, read_meta, write_dataset
from icg.errors import ConfigError, MissingFileError, OutputFolderError

logger = logging.getLogger(__name__)

PALETTE: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (0.86, 0.13, 0.13)),
    ("orange", (0.96, 0.55, 0.08)),
    ("yellow", (0.96, 0.86, 0.16)),
    ("green", (0.18, 0.68, 0.22)),
    ("teal", (0.06, 0.62, 0.62)),
    ("blue", (0.14, 0.28, 0.86)),
    ("purple", (0.54, 0.18, 0.74)),
    ("pink", (0.96, 0.46, 0.72)),
)
# Neutral anchors soak up background and stripe pixels so that they do not count as palette colours.
NEUTRALS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SHAPES = ("circle", "square", "triangle", "diamond", "star", "heart")
BACKGROUNDS = ("light", "dark")
STYLES = ("flat", "striped", "gradient", "outlined")
# The backdrop's hue: a tint of the light or dark grey that no title names, at an angle in the opponent-colour plane
# (red-green, yellow-blue). Items draw one of the six hues; "grey" (no tint) exists for re-renderings.
BACKDROP_HUES: tuple[tuple[str, float], ...] = (
    ("rose", 0.0),
    ("amber", 60.0),
    ("lime", 120.0),
    ("mint", 180.0),
    ("azure", 240.0),
    ("violet", 300.0),
)
NEUTRAL_BACKDROP = "grey"
HUE_AMPLITUDE = 0.16  # opponent-colour amplitude of a backdrop tint: visible, yet the grey stays light or dark
LIGHT_LEVELS, DARK_LEVELS = (0.70, 0.86), (0.12, 0.28)  # grey levels that leave room for the tint

TAU = 0.02  # occupancy temperature: palette colours sit >= 0.1 apart in squared RGB distance
ANALYSIS_SIZE = 64
TARGET_CTR = 0.2
STRENGTH = 1.0
CLICKS_PER_USER = (40, 80)  # per-user click quota; a user shown all items first has fewer (docs/data.md)
START_TIME = 1_600_000_000  # 2020-09-13, an arbitrary fixed epoch so timestamps look like real ones
MEAN_GAP_S = 900.0
TABLES = "tables.safetensors"
SUPERSAMPLE = 2
NOISE_STD = 0.012
STRIPE_TONE = 0.96

_TITLE_TEMPLATES = (
    "{Colour} {shape} on a {tone} {backdrop}, {style}",
    "A {style_adj} {colour} {shape} against a {tone} {backdrop}",
    "{Tone} {backdrop}: {colour} {shape}, {style}",
    "The {colour} {shape} ({style}, {tone} {backdrop})",
    "{Style_adj} {colour} {shape} over a {tone} {backdrop}",
    "One {colour} {shape}, {style}, {tone} {backdrop}",
)
_TONE_WORDS = {"light": ("light", "pale", "bright"), "dark": ("dark", "deep", "night")}
_BACKDROP_WORDS = ("backdrop", "background")
# (after a comma, before the noun) per style
_STYLE_WORDS = {
    "flat": (("flat", "plain"), ("flat", "plain", "solid")),
    "striped": (("striped", "with stripes"), ("striped",)),
    "gradient": (("gradient", "fading"), ("gradient", "fading")),
    "outlined": (("outlined", "outline only"), ("outlined", "hollow")),
}


def prompt_vocabulary() -> tuple[str, ...]:
    """The words a title of this platform names for colour and style (palette colours, then the style words, each once):
    the keywords a handcrafted personalized prompt may take from a user's clicked titles
    (``icg.evaluation.keywords``). Tone words (light, pale, dark...) are left out: a tone word the title lacks
    contradicts the tone it names, and three synonyms per tone split the counts."""
    words = [name for name, _ in PALETTE]
    for after_comma, adjectives in _STYLE_WORDS.values():
        for phrase in (*after_comma, *adjectives):
            words += [w for w in phrase.split() if w not in ("with", "only")]
    return tuple(dict.fromkeys(words))


@dataclass(frozen=True)
class CoverAttributes:
    """Everything that defines a rendered cover; ``render_cover`` is a pure function of it.

    Args:
        colour: palette colour name of the main object (see ``PALETTE``).
        shape: one of ``SHAPES``.
        background: ``light`` or ``dark``.
        style: one of ``STYLES``.
        backdrop_hue: the backdrop's tint, a name of ``BACKDROP_HUES`` or ``grey`` (none); titles do not name it.
        background_level: grey level of the background in [0, 1].
        tint: small RGB offsets added to the background grey.
        scale: object radius as a fraction of the half image size.
        center: object centre in [-1, 1]^2 (x right, y up).
        rotation: object rotation in radians.
        pattern_angle: direction of stripes / gradient in radians.
        stripe_frequency: stripes per object radius.
        noise_seed: seed of the pixel noise.
    """

    colour: str
    shape: str
    background: str
    style: str
    backdrop_hue: str = NEUTRAL_BACKDROP
    background_level: float = 0.85
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 0.65
    center: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    pattern_angle: float = 0.0
    stripe_frequency: float = 4.0
    noise_seed: int = 0


def palette_rgb(colour: str) -> np.ndarray:
    """RGB in [0, 1] of a palette colour name."""
    for name, rgb in PALETTE:
        if name == colour:
            return np.asarray(rgb, dtype=np.float64)
    raise ValueError(f"unknown palette colour {colour!r}; expected one of {[n for n, _ in PALETTE]}")


def backdrop_tint(hue: str) -> np.ndarray:
    """RGB offset (zero mean) of a backdrop hue: opponent colours a = R - G, b = (R + G) / 2 - B, ``HUE_AMPLITUDE``."""
    if hue == NEUTRAL_BACKDROP:
        return np.zeros(3)
    for name, degrees in BACKDROP_HUES:
        if name == hue:
            a = HUE_AMPLITUDE * math.cos(math.radians(degrees))
            b = HUE_AMPLITUDE * math.sin(math.radians(degrees))
            return np.array([a / 2 + b / 3, -a / 2 + b / 3, -2 * b / 3])
    raise ValueError(f"unknown backdrop hue {hue!r}; expected {NEUTRAL_BACKDROP!r} or one of {hue_names()}")


def hue_names() -> list[str]:
    return [name for name, _ in BACKDROP_HUES]


def anchor_colours() -> torch.Tensor:
    """A x 3: the palette colours followed by the neutral greys (the oracle's occupancy anchors)."""
    rows = [rgb for _, rgb in PALETTE] + [(g, g, g) for g in NEUTRALS]
    return torch.tensor(rows, dtype=torch.float32)


def sample_cover_attributes(rng: np.random.Generator) -> CoverAttributes:
    """Draw one item's cover attributes (colour, shape, tone, style, backdrop hue uniformly; geometry at random)."""
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    level = rng.uniform(*LIGHT_LEVELS) if background == "light" else rng.uniform(*DARK_LEVELS)
    return CoverAttributes(
        colour=PALETTE[rng.integers(len(PALETTE))][0],
        shape=SHAPES[rng.integers(len(SHAPES))],
        background=background,
        style=STYLES[rng.integers(len(STYLES))],
        backdrop_hue=BACKDROP_HUES[rng.integers(len(BACKDROP_HUES))][0],
        background_level=float(level),
        tint=tuple(float(t) for t in rng.uniform(-0.03, 0.03, size=3)),
        scale=float(rng.uniform(0.5, 0.78)),
        center=tuple(float(c) for c in rng.uniform(-0.14, 0.14, size=2)),
        rotation=float(rng.uniform(-0.35, 0.35)),
        pattern_angle=float(rng.uniform(0.0, 2 * math.pi)),
        stripe_frequency=float(rng.uniform(3.0, 5.5)),
        noise_seed=int(rng.integers(2**31 - 1)),
    )


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-size shape in object coordinates (u right, v up)."""
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "triangle":
        return (v >= -0.55) & (v <= 1.0 - math.sqrt(3.0) * np.abs(u))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "star":
        radius = np.sqrt(u**2 + v**2)
        theta = np.arctan2(v, u) - math.pi / 2
        return radius <= 0.42 + 0.58 * ((1.0 + np.cos(5.0 * theta)) / 2.0) ** 1.5
    if shape == "heart":
        x, y = u * 1.15, v * 1.15 + 0.1
        return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def render_cover(attributes: CoverAttributes, image_size: int = 64) -> np.ndarray:
    """Render a cover as an ``image_size`` x ``image_size`` x 3 uint8 array (deterministic).

    Args:
        attributes: what to draw.
        image_size: side in pixels (>= 8).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    a = attributes
    colour = palette_rgb(a.colour)
    if a.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {a.background!r}; expected one of {list(BACKGROUNDS)}")
    side = image_size * SUPERSAMPLE  # render larger and average down: antialiased edges
    t = (np.arange(side) + 0.5) / side * 2.0 - 1.0
    x, y = np.meshgrid(t, -t)  # y up
    tint = np.asarray(a.tint) + backdrop_tint(a.backdrop_hue)
    background = np.clip(a.background_level + tint + 0.04 * y[..., None], 0.0, 1.0)
    dx, dy = x - a.center[0], y - a.center[1]
    cos_r, sin_r = math.cos(a.rotation), math.sin(a.rotation)
    u = (dx * cos_r + dy * sin_r) / a.scale
    v = (-dx * sin_r + dy * cos_r) / a.scale
    mask = _shape_mask(a.shape, u, v)
    along = u * math.cos(a.pattern_angle) + v * math.sin(a.pattern_angle)  # coordinate along the pattern
    if a.style == "flat":
        fill = np.broadcast_to(colour, background.shape)
    elif a.style == "striped":
        stripe = (np.floor(along * a.stripe_frequency) % 2 == 0)[..., None]
        fill = np.where(stripe, colour, STRIPE_TONE)
    elif a.style == "gradient":
        # from 30 % colour at one edge to full colour over the last quarter of the object
        alpha = np.clip(0.3 + 0.7 * (along + 1.0) / 1.5, 0.0, 1.0)[..., None]
        fill = alpha * colour + (1.0 - alpha) * background
    elif a.style == "outlined":
        mask = mask & ~_shape_mask(a.shape, u / 0.68, v / 0.68)
        fill = np.broadcast_to(colour, background.shape)
    else:
        raise ValueError(f"unknown style {a.style!r}; expected one of {list(STYLES)}")
    canvas = np.where(mask[..., None], fill, background)
    canvas = canvas.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    noise = np.random.default_rng(a.noise_seed).normal(0.0, NOISE_STD, size=canvas.shape)
    return np.clip(np.rint((canvas + noise) * 255.0), 0, 255).astype(np.uint8)


def make_title(attributes: CoverAttributes, rng: np.random.Generator) -> str:
    """A title naming the cover's colour, shape, tone and style, from a randomly chosen template."""
    after_comma, adjectives = _STYLE_WORDS[attributes.style]
    words = {
        "colour": attributes.colour,
        "shape": attributes.shape,
        "tone": str(rng.choice(_TONE_WORDS[attributes.background])),
        "backdrop": str(rng.choice(_BACKDROP_WORDS)),
        "style": str(rng.choice(after_comma)),
        "style_adj": str(rng.choice(adjectives)),
    }
    words.update({key.capitalize(): value.capitalize() for key, value in list(words.items())})
    template = _TITLE_TEMPLATES[rng.integers(len(_TITLE_TEMPLATES))]
    return template.format(**words)


def title_vocabulary() -> tuple[str, ...]:
    """Every word a title of this platform can hold, lower-cased, each once: the templates' own words, then the
    colours, shapes, tone, backdrop and style words (what the demo's stand-in MLLM tokenizes word by word)."""
    templates = re.sub(r"\{\w+\}", " ", " ".join(_TITLE_TEMPLATES))
    style_words = [w for pair in _STYLE_WORDS.values() for phrase in (*pair[0], *pair[1]) for w in phrase.split()]
    tone_words = [w for words in _TONE_WORDS.values() for w in words]
    names = [*(n for n, _ in PALETTE), *SHAPES, *tone_words, *_BACKDROP_WORDS, *style_words]
    return tuple(dict.fromkeys(re.findall(r"[a-z]+", f"{templates} {' '.join(names)}".lower())))


def drawn_covers(
    count: int, rng: np.random.Generator, image_size: int, render_size: int = 64
) -> tuple[list[str], torch.Tensor]:
    """``count`` freshly drawn items of this platform's world, never its own: titles and covers as the DataModule
    serves covers (rendered at ``render_size``, PIL bicubic to ``image_size``, float in [0, 1], count x 3 x S x S).

    Args:
        count: items to draw.
        rng: draws the attributes and the titles' wording.
        image_size: side of the returned covers.
        render_size: side the covers are rendered at (the platform's ``image_size``).
    """
    attributes = [sample_cover_attributes(rng) for _ in range(count)]
    titles = [make_title(a, rng) for a in attributes]
    covers = [
        np.asarray(
            ImageOps.fit(
                Image.fromarray(render_cover(a, render_size)), (image_size, image_size), Image.Resampling.BICUBIC
            )
        )
        for a in attributes
    ]
    return titles, torch.from_numpy(np.stack(covers)).permute(0, 3, 1, 2).float() / 255.0


@dataclass(frozen=True)
class UserProfile:
    """A user's hidden taste in words (what ``truth.json`` records next to the taste vector)."""

    user_id: str
    likes: tuple[str, ...]
    dislikes: tuple[str, ...]
    brightness: str  # "light" or "dark"
    backdrop: str  # the liked backdrop hue (a name of BACKDROP_HUES); titles never name it


# Taste weights on the standardized features (uniform ranges): what titles do not name (the backdrop's hue) carries
# the strongest single term, what they name (the object's colour, light or dark) enough that appeal and fidelity
# still trade off there. docs/data.md has the measured variance split.
HUE_TASTE = (0.9, 1.3)
FIRST_LIKE, SECOND_LIKE, DISLIKE = (0.5, 0.8), (0.3, 0.6), (0.4, 0.7)
TONE_TASTE = (0.2, 0.5)


def sample_tastes(rng: np.random.Generator, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, list[UserProfile]]:
    """Draw the population taste (F) and each user's taste (U x F) over the standardized features.

    The feature order is ``feature_names``: palette occupancies, brightness, colourfulness, contrast, edge energy,
    backdrop red-green, backdrop yellow-blue. A user's liked hue is one of ``BACKDROP_HUES``; the taste points at its
    angle in the (standardized) opponent-colour plane: a backdrop of that hue scores highest, the opposite hue lowest.
    """
    k = len(PALETTE)
    brightness, colourfulness, contrast, edge, red_green, yellow_blue = range(k, k + 6)
    population = np.zeros(k + 6)
    population[:k] = rng.normal(0.0, 0.15, size=k)
    population[colourfulness], population[contrast], population[edge] = 0.25, 0.2, 0.1
    tastes = np.zeros((len(user_ids), k + 6))
    profiles = []
    for row, user_id in enumerate(user_ids):
        colours = rng.permutation(k)
        n_likes = int(rng.integers(1, 3))
        likes, dislike = colours[:n_likes], colours[n_likes]
        tastes[row, likes[0]] = rng.uniform(*FIRST_LIKE)
        if n_likes == 2:
            tastes[row, likes[1]] = rng.uniform(*SECOND_LIKE)
        tastes[row, dislike] = -rng.uniform(*DISLIKE)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        tastes[row, brightness] = sign * rng.uniform(*TONE_TASTE)
        tastes[row, colourfulness] = rng.normal(0.0, 0.15)
        tastes[row, contrast] = rng.normal(0.0, 0.2)
        tastes[row, edge] = rng.normal(0.0, 0.25)
        hue_name, degrees = BACKDROP_HUES[rng.integers(len(BACKDROP_HUES))]
        weight = rng.uniform(*HUE_TASTE)
        tastes[row, red_green] = weight * math.cos(math.radians(degrees))
        tastes[row, yellow_blue] = weight * math.sin(math.radians(degrees))
        profiles.append(
            UserProfile(
                user_id=user_id,
                likes=tuple(PALETTE[c][0] for c in likes),
                dislikes=(PALETTE[dislike][0],),
                brightness="light" if sign > 0 else "dark",
                backdrop=hue_name,
            )
        )
    return population, tastes, profiles


def _calibrate_bias(base_logits: torch.Tensor, target: float) -> float:
    """The bias b with mean(sigmoid(b + base_logits)) == target (bisection; the mean is monotone in b)."""
    low, high = -30.0, 30.0
    base = base_logits.double()
    for _ in range(60):
        mid = (low + high) / 2
        if torch.sigmoid(base + mid).mean().item() < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless it is an earlier synthetic platform and overwrite is set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputFolderError(f"{out}: folder is not empty; pass overwrite=True (--overwrite) to replace it")
    if not (out / META_FILE).is_file() or read_meta(out).source != "synthetic":
        raise OutputFolderError(
            f"{out}: not a synthetic platform (no meta.json with source 'synthetic'); not replacing it"
        )
    for name in (IMAGES_DIR, TRUTH_DIR):
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def generate_platform(  # noqa: PLR0915  # the platform's steps in order; to be split (issue 22)
    out: str | Path,
    users: int = 200,
    items: int = 300,
    seed: int = 0,
    image_size: int = 64,
    overwrite: bool = False,
    clicks_per_user: tuple[int, int] = CLICKS_PER_USER,
) -> Path:
    """Write a synthetic platform dataset (tables, covers, meta.json) and its hidden truth under ``out``.

    Args:
        out: dataset folder to create (must be empty or missing unless ``overwrite``).
        users: number of users (ids ``u0000``...).
        items: number of items (ids ``i00000``...).
        seed: seed of every random draw; the same seed gives identical files.
        image_size: side of the square PNG covers in pixels.
        overwrite: replace an earlier synthetic platform in ``out``.
        clicks_per_user: ``(min, max)`` of each user's click quota, drawn uniformly (inclusive). A user stops at
            the quota or when the whole catalogue has been shown, so a low-CTR user can end below ``min``.

    Returns:
        The dataset folder.
    """
    if users < 1:
        raise ConfigError(f"users must be >= 1, got {users}")
    if items < 2:
        raise ConfigError(f"items must be >= 2, got {items}")
    if image_size < 16:
        raise ConfigError(f"image_size must be >= 16, got {image_size}")
    if len(clicks_per_user) != 2 or not 1 <= int(clicks_per_user[0]) <= int(clicks_per_user[1]):
        raise ConfigError(f"clicks_per_user must be (min, max) with 1 <= min <= max, got {tuple(clicks_per_user)}")
    low, high = int(clicks_per_user[0]), int(clicks_per_user[1])
    out = Path(out)
    _prepare_output(out, overwrite)
    item_rng, user_rng, click_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))

    item_ids = [f"i{k:0{max(5, len(str(items - 1)))}d}" for k in range(items)]
    user_ids = [f"u{k:0{max(4, len(str(users - 1)))}d}" for k in range(users)]
    attributes = [sample_cover_attributes(item_rng) for _ in item_ids]
    titles = [make_title(a, item_rng) for a in attributes]
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    covers = np.stack([render_cover(a, image_size) for a in attributes])
    for item_id, cover in zip(item_ids, covers, strict=True):
        Image.fromarray(cover).save(out / IMAGES_DIR / f"{item_id}.png")

    # The click model's statistics come from the exact uint8 pixels saved, so the oracle run on the PNGs reproduces
    # the probabilities the clicks were drawn from.
    anchors = anchor_colours()
    images = torch.from_numpy(covers).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        phi = cover_features(images, anchors, len(PALETTE), TAU, ANALYSIS_SIZE)
    feature_mean, feature_std = phi.mean(0), phi.std(0).clamp_min(1e-3)
    population, tastes, profiles = sample_tastes(user_rng, user_ids)
    population_t = torch.from_numpy(population).float()
    tastes_t = torch.from_numpy(tastes).float()
    z = (phi - feature_mean) / feature_std
    bias = _calibrate_bias((z @ population_t)[None, :] + STRENGTH * tastes_t @ z.T, TARGET_CTR)
    oracle = Oracle(
        anchors=anchors,
        num_palette=len(PALETTE),
        tau=TAU,
        analysis_size=ANALYSIS_SIZE,
        feature_mean=feature_mean,
        feature_std=feature_std,
        population_taste=population_t,
        user_taste=tastes_t,
        bias=bias,
        strength=STRENGTH,
        user_ids=user_ids,
        palette_names=[name for name, _ in PALETTE],
    )
    with torch.no_grad():
        click_prob = oracle.probability_matrix(images)  # U x I

    log_user, log_item, log_click, log_time = [], [], [], []
    prob = click_prob.double().numpy()
    for u in range(users):
        quota = int(click_rng.integers(low, high + 1))
        order = click_rng.permutation(items)
        clicked = click_rng.random(items) < prob[u, order]
        reached = np.flatnonzero(np.cumsum(clicked) >= quota)
        shown = int(reached[0]) + 1 if reached.size else items
        start = START_TIME + int(click_rng.integers(0, 30 * 86_400))
        times = start + np.cumsum(np.floor(click_rng.exponential(MEAN_GAP_S, size=shown)).astype(np.int64) + 1)
        log_user.append(np.full(shown, u))
        log_item.append(order[:shown])
        log_click.append(clicked[:shown])
        log_time.append(times)
    log_user, log_item = np.concatenate(log_user), np.concatenate(log_item)
    log_click, log_time = np.concatenate(log_click), np.concatenate(log_time)

    positive = log_click.astype(bool)
    interactions = pd.DataFrame(
        {
            "user_id": np.asarray(user_ids)[log_user[positive]],
            "item_id": np.asarray(item_ids)[log_item[positive]],
            "click": np.ones(int(positive.sum()), dtype=np.int8),
            "timestamp": log_time[positive],
        }
    )
    items_frame = pd.DataFrame(
        {"item_id": item_ids, "title": titles, "image": [f"{IMAGES_DIR}/{i}.png" for i in item_ids]}
    )
    user_clicks = np.bincount(log_user[positive], minlength=users)
    short = user_clicks[user_clicks < low]  # users shown the whole catalogue who clicked fewer than the minimum quota
    if short.size:
        logger.warning(
            "synthetic platform: %d of %d users were shown all %d items and ended below the minimum click quota %d "
            "(%d-%d clicks)",
            *(short.size, users, items, low, short.min(), short.max()),
        )
    meta = DatasetMeta(
        source="synthetic",
        implicit=True,
        extra={
            "generator": "icg.data.synthetic",
            "seed": seed,
            "users": users,
            "items": items,
            "image_size": image_size,
            "impressions": int(log_user.size),
            "clicks": int(positive.sum()),
            "clicks_per_user": [low, high],
            "truth": f"{TRUTH_DIR}/",
        },
    )
    write_dataset(out, items_frame, interactions, meta)

    truth = out / TRUTH_DIR
    truth.mkdir(exist_ok=True)
    save_file(
        {
            "anchors": anchors,
            "feature_mean": feature_mean.contiguous(),
            "feature_std": feature_std.contiguous(),
            "population_taste": population_t,
            "user_taste": tastes_t,
        },
        str(truth / ORACLE_TENSORS),
    )
    save_file(
        {
            "click_prob": click_prob.float().contiguous(),
            "impression_user": torch.from_numpy(log_user.astype(np.int64)),
            "impression_item": torch.from_numpy(log_item.astype(np.int64)),
            "impression_click": torch.from_numpy(log_click.astype(np.int8)),
            "impression_timestamp": torch.from_numpy(log_time.astype(np.int64)),
        },
        str(truth / TABLES),
    )
    info = {
        "generator": "icg.data.synthetic",
        "seed": seed,
        "image_size": image_size,
        "user_ids": user_ids,
        "item_ids": item_ids,
        "palette": [{"name": name, "rgb": list(rgb)} for name, rgb in PALETTE],
        "backdrop_hues": [
            {"name": name, "degrees": degrees, "rgb": np.clip(0.8 + backdrop_tint(name), 0, 1).round(3).tolist()}
            for name, degrees in BACKDROP_HUES
        ],
        "neutrals": list(NEUTRALS),
        "feature_names": feature_names([name for name, _ in PALETTE]),
        "click_model": {
            "formula": "sigmoid(bias + population_taste . z + strength * user_taste[u] . z), "
            "z = (phi(image) - feature_mean) / feature_std",
            "tau": TAU,
            "analysis_size": ANALYSIS_SIZE,
            "bias": bias,
            "strength": STRENGTH,
            "target_ctr": TARGET_CTR,
        },
        "items": [{"item_id": i, **asdict(a)} for i, a in zip(item_ids, attributes, strict=True)],
        "users": [asdict(p) for p in profiles],
    }
    (truth / TRUTH_JSON).write_text(json.dumps(info, indent=1) + "\n")
    logger.info(
        "synthetic platform: %d users, %d items, %d impressions, %d clicks (%d-%d per user) -> %s",
        *(users, items, log_user.size, positive.sum(), user_clicks.min(), user_clicks.max(), out),
    )
    return out


def read_truth(root: str | Path) -> dict:
    """The hidden truth's JSON part (ids, palette, click-model constants, item attributes, user likes)."""
    path = Path(root) / TRUTH_DIR / TRUTH_JSON
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; only a synthetic platform (icg data synth) has a hidden truth")
    return json.loads(path.read_text())


def item_attributes(truth: dict, item_id: str) -> CoverAttributes:
    """Rebuild an item's ``CoverAttributes`` from ``read_truth``'s dict (e.g. to re-render it recoloured)."""
    for row in truth["items"]:
        if row["item_id"] == item_id:
            fields = {k: v for k, v in row.items() if k != "item_id"}
            fields["tint"], fields["center"] = tuple(fields["tint"]), tuple(fields["center"])
            return CoverAttributes(**fields)
    raise KeyError(f"item id {item_id!r} is not an item of this synthetic platform")


def personalised_attributes(attributes: CoverAttributes, profile: dict) -> CoverAttributes:
    """The item's cover, faithful to its title, on the user's liked backdrop hue (all the title names is kept).

    Args:
        attributes: the item's cover.
        profile: one entry of ``read_truth(root)["users"]``.
    """
    return replace(attributes, backdrop_hue=profile["backdrop"])


def backdrop_captions(root: str | Path) -> dict[str, str]:
    """Item id -> the words a general-purpose captioner would add to the item's title: its backdrop's tint.

    Titles never name the tint; a stand-in base model trained on titles alone therefore cannot draw a chosen one,
    where SD 1.5, trained on captions that describe whole images, can ("on a pale pink background"). The demo's base
    model reads these words (``captions_from``); the platform's titles, and so every ICG stage, never do.
    """
    truth = read_truth(root)
    return {row["item_id"]: f"{row['backdrop_hue']} tint" for row in truth["items"]}


FAITHFUL_SCALES = (0.55, 0.65, 0.75)  # object sizes a faithful re-rendering may take (titles do not name size)


def faithful_variants(attributes: CoverAttributes) -> list[CoverAttributes]:
    """Every re-rendering of a cover that keeps what its title names (colour, shape, tone, style).

    What may change is what the title does not name: the backdrop hue (each of ``BACKDROP_HUES`` and grey) and the
    object's size (``FAITHFUL_SCALES``); position, rotation, pattern and noise stay the item's. The evaluation's
    faithful headroom (docs/evaluation.md) is the best true click probability over these.
    """
    hues = [*hue_names(), NEUTRAL_BACKDROP]
    return [replace(attributes, backdrop_hue=hue, scale=scale) for hue in hues for scale in FAITHFUL_SCALES]


def platform_variance_split(root: str | Path) -> dict:
    """``icg.data.oracle.variance_split`` of a synthetic platform's click logit over its own reference covers."""
    items, _, _ = read_dataset(root)
    items = items.sort_values("item_id")
    pixels = np.stack([np.asarray(Image.open(Path(root) / path).convert("RGB")) for path in items.image])
    return variance_split(Oracle.from_dataset(root), torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
