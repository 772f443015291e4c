"""Generation: a trained ICG turned into covers for any (user, item) -- apart from the training code.

``CoverGenerator`` (load an ``icg export`` folder, then call it), ``export_checkpoint`` (``icg export``), the
per-pair seeds every generated cover draws from, and best of N (``BestOf`` with a ``ClickScorer``).
"""

from icg.generation.generator import CoverGenerator, GeneratedCovers, SamplerSettings
from icg.generation.picking import BestOf, ClickScorer
from icg.generation.seeds import pair_seed
from icg.generation.users import UserTable

__all__ = ["BestOf", "ClickScorer", "CoverGenerator", "GeneratedCovers", "SamplerSettings", "UserTable", "pair_seed"]
