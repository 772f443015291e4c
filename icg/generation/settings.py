"""A generator's sampler settings: what an export records (``icg_config.json``'s ``sampler``), each call's defaults.

Its own module so that the export (which writes and reads them) and the generator (which samples with them) both
import it without importing each other the wrong way round (``icg.generation.generator`` imports the export).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from icg.diffusion.sampler import strength_in_range, user_guidance_in_range


@dataclass
class SamplerSettings:
    """A generator's sampling defaults; each can be overridden per call.

    Args:
        num_steps: T, DDIM steps of a pure-noise chain (a reference-guided chain runs ``int(T * strength)`` of them).
        guidance_scale: classifier-free guidance; > 1 uses the export's negative conditioning (empty title, blank
            reference, cold-start user).
        strength: 1 generates from pure noise; 0 < strength < 1 starts from the reference cover (SDEdit).
        image_size: cover side in pixels (None: the UNet's configured size).
        seed: base of the per-(user, item) seeds.
        user_guidance: moves each step's prediction from the cold-start user's (same title and reference) towards the
            user's: 1 is the cover as trained (no extra work), 0 the cold-start user's cover, > 1 more of the user
            (``icg.diffusion.sampler.guided_predictor``). An export written before it existed reads as 1.
    """

    num_steps: int = 20
    guidance_scale: float = 1.0
    strength: float = 1.0
    image_size: int | None = None
    seed: int = 0
    user_guidance: float = 1.0

    @classmethod
    def problem(cls, values: Any) -> str | None:
        """What is wrong with a dict of sampler settings (an export's ``sampler``), naming key and value; None if ok.

        Every key must be a setting, ``num_steps`` an integer >= 1, ``guidance_scale`` a finite number >= 0,
        ``strength`` in (0, 1], ``image_size`` null or a positive integer, ``seed`` an integer, ``user_guidance`` a
        finite number >= 0 (absent: 1).
        """
        if not isinstance(values, dict):
            return f"expected an object of {sorted(asdict(cls()))}, got {values!r:.80}"
        unknown = sorted(set(values) - set(asdict(cls())))
        if unknown:
            return f"{unknown[0]}: not a sampler setting (expected {sorted(asdict(cls()))})"

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        checks = {
            "num_steps": (lambda v: integer(v) and v >= 1, "an integer >= 1"),
            "guidance_scale": (
                lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                "a finite number >= 0",
            ),  # fmt: skip
            "strength": (strength_in_range, "a number in (0, 1] (1: from pure noise, < 1: from the reference)"),
            "image_size": (lambda v: v is None or (integer(v) and v > 0), "null or a positive integer"),
            "seed": (integer, "an integer"),
            "user_guidance": (user_guidance_in_range, "a finite number >= 0 (1: off, 0: the cold-start user's cover)"),
        }
        for key, (ok, expected) in checks.items():
            if key in values and not ok(values[key]):
                return f"{key}={values[key]!r}: expected {expected}"
        return None
