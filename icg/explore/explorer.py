"""The explorer's core: one user, one item and one set of sampler settings -> three covers side by side, and scores.

ICG (Bian et al., EMNLP 2025) is compared with two baselines that differ from it only in their conditioning; the
explorer draws all three for any user and item of a trained export (``icg export``):

* ``title_only``: the base diffusion model prompted with the title through its own text encoder (the evaluation's
  ``TitleOnlyMethod``);
* ``icg_no_user``: the export's generator with the stage-1 cold-start embedding in place of the user's (the
  evaluation's ``AlignmentMethod(user="fallback")``);
* ``icg``: the export's generator with the user's embedding.

All three draw from the same seed through ``sample_covers`` with the same steps, guidance scale and strength, so
they differ only in conditioning. The user-guidance scale acts on ICG's column only (it moves ICG from the
cold-start user's prediction towards the user's; the other two have no user to move towards). With
``noise="pair"`` the seed is the generator's own per-(user, item) seed, so the ICG cover is exactly what
``CoverGenerator.__call__`` returns for that pair; ``noise="item"`` keeps the noise fixed across users, so switching
users changes only what the user changes. Results are cached in memory by
(user, item, settings). No web code here: ``icg.explore.app`` serves it.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from icg.diffusion.components import DiffusionComponents
from icg.diffusion.conditioning import Conditioning
from icg.errors import UserError
from icg.explore.scoring import CoverScorer, ScoreRow
from icg.generation.generator import CoverGenerator, reference_batch, sample_covers, to_pil
from icg.generation.seeds import pair_seed

log = logging.getLogger(__name__)

METHODS = ("title_only", "icg_no_user", "icg")
METHOD_LABELS = {"title_only": "Title only", "icg_no_user": "ICG without user", "icg": "ICG"}
NOISE_MODES = ("pair", "item")
MAX_STEPS = 500
MAX_GUIDANCE = 30.0
MAX_USER_GUIDANCE = 10.0
MAX_SEED = 2**31 - 1


class ExploreInputError(UserError, ValueError):
    """A setting, user, item or upload the explorer cannot use; the message names it and says what to do."""


@dataclass(frozen=True)
class Settings:
    """How the three covers are drawn (one value each for all three).

    Args:
        guidance_scale: classifier-free guidance, 1 to 30 (1: none).
        strength: 1 starts from pure noise; 0 < strength < 1 from the reference cover noised to that level (SDEdit).
        seed: base seed, 0 to 2**31 - 1.
        num_steps: DDIM steps of a pure-noise chain (a reference-guided chain runs ``int(steps * strength)``).
        noise: ``pair``: the seed of each (user, item), as ``CoverGenerator`` draws it; ``item``: one seed per item,
            the same for every user.
        user_guidance: ICG's user guidance, 0 to 10 (1: the cover as trained, 0: the cold-start user's, > 1: more
            of the user); ICG's column only.
    """

    guidance_scale: float
    strength: float
    seed: int
    num_steps: int
    noise: str = "pair"
    user_guidance: float = 1.0

    def checked(self) -> Settings:
        """Self, or ExploreInputError naming the first value out of range."""
        if not (math.isfinite(self.guidance_scale) and 1.0 <= self.guidance_scale <= MAX_GUIDANCE):
            raise ExploreInputError(f"guidance_scale={self.guidance_scale:g}: expected 1 to {MAX_GUIDANCE:g} (1: none)")
        if not (math.isfinite(self.strength) and 0.0 < self.strength <= 1.0):
            raise ExploreInputError(f"strength={self.strength:g}: expected 0 < strength <= 1 (1: from pure noise)")
        if not 1 <= self.num_steps <= MAX_STEPS:
            raise ExploreInputError(f"num_steps={self.num_steps}: expected 1 to {MAX_STEPS}")
        if int(self.num_steps * self.strength) < 1:
            raise ExploreInputError(
                f"strength={self.strength:g} with num_steps={self.num_steps} runs no denoising step; raise either"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise ExploreInputError(f"seed={self.seed}: expected 0 to {MAX_SEED}")
        if self.noise not in NOISE_MODES:
            raise ExploreInputError(f"noise={self.noise!r}: expected one of {', '.join(NOISE_MODES)}")
        if not (math.isfinite(self.user_guidance) and 0.0 <= self.user_guidance <= MAX_USER_GUIDANCE):
            raise ExploreInputError(f"user_guidance={self.user_guidance:g}: expected 0 to {MAX_USER_GUIDANCE:g} "
                                    "(1: the cover as trained, 0: the cold-start user's)")  # fmt: skip
        return self

    @classmethod
    def parse(cls, values: Mapping[str, str], defaults: Settings) -> Settings:
        """Settings from a query string or form (missing or empty values: ``defaults``), checked."""
        parsed = asdict(defaults)
        numbers = (("guidance_scale", float), ("strength", float), ("seed", int), ("num_steps", int),
                   ("user_guidance", float))  # fmt: skip
        for name, kind in numbers:
            text = str(values.get(name) or "").strip()
            if text:
                try:
                    parsed[name] = kind(text)
                except ValueError:
                    what = "an integer" if kind is int else "a number"
                    raise ExploreInputError(f"{name}={text!r}: expected {what}") from None
        parsed["noise"] = str(values.get("noise") or defaults.noise).strip()
        return cls(**parsed).checked()

    def query(self) -> dict[str, str]:
        """The settings as query-string values (what ``parse`` reads back)."""
        return {
            "guidance_scale": f"{self.guidance_scale:g}",
            "strength": f"{self.strength:g}",
            "seed": str(self.seed),
            "num_steps": str(self.num_steps),
            "noise": self.noise,
            "user_guidance": f"{self.user_guidance:g}",
        }


@dataclass(frozen=True)
class Item:
    """An item to draw covers for: a dataset item, or a title and image someone uploaded.

    Args:
        key: the dataset's item id, or ``upload:<hash>`` for an upload (it also keys the seed).
        title: the item's title.
        image: the reference cover (a file, or an image already in memory).
    """

    key: str
    title: str
    image: Path | Image.Image = field(compare=False)


@dataclass
class ExploredCovers:
    """The three covers of one (user, item, settings), as PNG bytes, with their scores.

    Args:
        user_id: the user asked for.
        item: the item.
        settings: how the covers were drawn.
        known_user: False when the export does not know the user: ICG then uses the cold-start fallback, as
            ICG without user does.
        seed: the seed all three covers started from.
        png: method -> PNG bytes (``title_only`` is absent when there is no title-only baseline).
        scores: rows of scores for the reference and each cover (empty without a reward bundle or oracle).
        seconds: time taken to draw and score them.
    """

    user_id: str
    item: Item
    settings: Settings
    known_user: bool
    seed: int
    png: dict[str, bytes]
    scores: list[ScoreRow]
    seconds: float


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class CoverExplorer:
    """Draws (and caches) the title-only, ICG-without-user and ICG covers of a user and an item.

    Args:
        generator: the trained ICG (``CoverGenerator.from_pretrained``).
        base: the stock base model the title-only covers come from (usually the generator's own components); None:
            no title-only baseline (``unavailable`` says why).
        title_encoder: the base model's text encoder, ``titles -> Conditioning`` (a ``PromptEncoder``).
        scorer: reward scores and the true click probability (None: no scores).
        unavailable: why the title-only baseline is missing, shown on the page.
        cache_size: how many (user, item, settings) results stay in memory.
    """

    def __init__(
        self,
        generator: CoverGenerator,
        base: DiffusionComponents | None = None,
        title_encoder: Callable[[list[str]], Conditioning] | None = None,
        scorer: CoverScorer | None = None,
        unavailable: str | None = None,
        cache_size: int = 64,
    ) -> None:
        if (base is None) != (title_encoder is None):
            raise ValueError("give both base and title_encoder (the title-only baseline), or neither")
        self.generator = generator
        self.base, self.title_encoder = base, title_encoder
        self.scorer = scorer or CoverScorer()
        self.unavailable = unavailable
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, Settings], ExploredCovers] = OrderedDict()
        self._lock = threading.Lock()  # one drawing at a time; concurrent requests for the same covers wait and hit

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods drawn, left to right."""
        return METHODS if self.base is not None else METHODS[1:]

    @property
    def defaults(self) -> Settings:
        """The export's own sampler settings (its ``icg_config.json``)."""
        s = self.generator.settings
        return Settings(float(s.guidance_scale), float(s.strength), int(s.seed), int(s.num_steps),
                        user_guidance=float(s.user_guidance))  # fmt: skip

    def knows(self, user_id: str) -> bool:
        return user_id in self.generator.users

    def covers(self, user_id: str, item: Item, settings: Settings) -> ExploredCovers:
        """The covers of ``user_id`` for ``item`` drawn with ``settings`` (from the cache when drawn before)."""
        key = (user_id, item.key, settings)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
            start = time.perf_counter()
            drawn, known, seed, reference = self._draw(user_id, item, settings.checked())
            columns = {"reference": reference, **drawn}
            scores = self.scorer.score(columns, user_id, item.title) if self.scorer.active else []
            result = ExploredCovers(
                user_id, item, settings, known, seed,
                {method: png_bytes(to_pil(image[None])[0]) for method, image in drawn.items()},
                scores, time.perf_counter() - start,
            )  # fmt: skip
            log.info("drew the covers of user %s, item %s (%s) in %.2f s", user_id, item.key,
                     ", ".join(f"{k}={v}" for k, v in settings.query().items()), result.seconds)  # fmt: skip
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return result

    @torch.no_grad()
    def _draw(self, user_id: str, item: Item, s: Settings) -> tuple[dict[str, Tensor], bool, int, Tensor]:
        gen = self.generator
        reference = reference_batch([item.image], gen.image_size, gen.device)
        seed = pair_seed(s.seed, user_id if s.noise == "pair" else "", item.key)
        steps = {"num_steps": s.num_steps, "guidance_scale": s.guidance_scale, "strength": s.strength}
        user_emb, known = gen.users.lookup([user_id])

        def icg(embedding: Tensor, user_guidance: float = 1.0) -> Tensor:  # one cover per call: CoverGenerator's
            cond, negative = gen.pair_conditioning(embedding, [item.title], reference, user_guidance)
            return gen.sample(cond, [seed], reference, user_guidance=user_guidance, user_negative=negative, **steps)[0]

        drawn = {}
        if self.base is not None:
            uncond = self.title_encoder([""]) if s.guidance_scale > 1 else None
            drawn["title_only"] = sample_covers(
                self.base, self.title_encoder([item.title]), [seed], reference, image_size=gen.image_size,
                uncond=uncond, **steps,
            )[0]  # fmt: skip
        drawn["icg_no_user"] = icg(gen.users.fallback(1))
        drawn["icg"] = icg(user_emb, s.user_guidance) if known[0] else drawn["icg_no_user"]
        return {k: v.float().clamp(0, 1).cpu() for k, v in drawn.items()}, known[0], seed, reference[0].cpu()
