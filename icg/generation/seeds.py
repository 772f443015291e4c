"""One seed per (user, item): a cover does not depend on the batch, rank or process that generated it.

Every cover ICG generates -- in stage 3's validation and predict, in the evaluation's methods, in ``icg generate``
and from :class:`icg.generation.CoverGenerator` -- draws its randomness (the reference's VAE posterior sample when
reference-guided, the initial noise) from its own CPU ``torch.Generator`` seeded by :func:`pair_seed`. diffusers'
pipelines treat a list of generators the same way, so the same seeds give the same image there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def pair_seed(base: int, user_id: str, item_key: str) -> int:
    """A stable 63-bit seed per (user, item), independent of batching, rank and Python's hash randomization."""
    digest = hashlib.sha256(f"{base}:{user_id}:{item_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def candidate_seeds(seeds: Sequence[int], candidate: int) -> list[int]:
    """The seeds of candidate ``candidate`` of each pair (best-of-N, ``icg.generation.picking``): candidate 0 is the
    pair's own seed (so it is the cover made without picking), candidate c > 0 a stable hash of (seed, c)."""
    if candidate == 0:
        return [int(seed) for seed in seeds]
    hashed = (hashlib.sha256(f"{int(seed)}:candidate:{candidate}".encode()).digest() for seed in seeds)
    return [int.from_bytes(digest[:8], "little") % (2**63 - 1) for digest in hashed]


def pair_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One seeded CPU generator per cover (CPU, so a seed gives the same noise on every device)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def content_key(title: str, reference: torch.Tensor) -> str:
    """An item key from its content, for callers that have no item id: the title and the reference's pixels."""
    pixels = (reference.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8).numpy().tobytes()
    return hashlib.sha256(title.encode() + b"\0" + pixels).hexdigest()[:32]
