"""Generation: a trained ICG turned into covers for any (user, item) -- apart from the training code.

``CoverGenerator`` (load an ``icg export`` folder, then call it), ``export_checkpoint`` (``icg export``) and the
per-pair seeds every generated cover draws from.
"""

from icg.generation.generator import CoverGenerator, GeneratedCovers, SamplerSettings
from icg.generation.seeds import pair_seed
from icg.generation.users import UserTable

__all__ = ["CoverGenerator", "GeneratedCovers", "SamplerSettings", "UserTable", "pair_seed"]
