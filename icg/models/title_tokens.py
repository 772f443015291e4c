"""The hashed title tokens under their historical import path; they live in ``icg.diffusion.title_tokens``.

The title encoder is the demo base model's text encoder, read by the diffusion layer's title prompt
(``icg.diffusion.prompt_encoder``), so it belongs to that layer (diffusion must not import ``icg.models``). This path
stays importable because checkpoints and stand-in exports written before the move name
``icg.models.title_tokens.TitleTokenEncoder`` as their ``class_path``.
"""

from icg.diffusion.title_tokens import (
    TITLE_ENCODER_DIR,
    WORD,
    TitleTokenEncoder,
    export_title_encoder,
    hash_bucket,
    hashed_ids,
    load_title_encoder,
    title_words,
)

__all__ = [
    "TITLE_ENCODER_DIR",
    "WORD",
    "TitleTokenEncoder",
    "export_title_encoder",
    "hash_bucket",
    "hashed_ids",
    "load_title_encoder",
    "title_words",
]
