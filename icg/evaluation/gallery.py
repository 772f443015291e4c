"""The HTML picture gallery of ICG's evaluation (Bian et al., EMNLP 2025): users x items, every method side by side.

Rows are users, columns are items; each cell shows the item's reference cover, then each method's cover for that
(user, item), each captioned with its scores (the true click probability of that user where an oracle exists, else
the evaluator's click probability; the aesthetic and relevance rewards). Images are PNG files in a ``gallery/``
folder next to the HTML file and referenced by relative paths, so the folder can be copied or served as is.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from icg.lit.callbacks import save_png

CAPTION_METRICS = (("true_click_prob", "p(click)"), ("evaluator_click_prob", "eval p(click)"),
                   ("aesthetic", "aes"), ("relevance", "rel"))  # fmt: skip
STYLE = """
body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px; vertical-align: top; }
figure { display: inline-block; margin: 2px; text-align: center; }
figure img { width: 96px; height: 96px; image-rendering: pixelated; display: block; }
figcaption { font-size: 10px; max-width: 96px; }
"""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "method"


def write_gallery(path: str | Path, grid: dict[str, Any]) -> Path:
    """Write the gallery HTML and its PNGs; returns the HTML path.

    Args:
        path: the HTML file to write (images go to ``<its folder>/gallery/``).
        grid: ``users`` (U ids), ``items`` (I ids), ``titles`` (I), ``pairs`` (U*I (user, item) in row-major order),
            ``covers`` (method -> U*I x 3 x H x W in [0, 1]; ``reference`` first) and ``scores``
            (method -> metric -> U*I values).
    """
    path = Path(path)
    image_dir = path.parent / "gallery"
    image_dir.mkdir(parents=True, exist_ok=True)
    users, items, titles = grid["users"], grid["items"], grid["titles"]
    methods = list(grid["covers"])
    n = len(users) * len(items)
    for name, covers in grid["covers"].items():
        if len(covers) != n:
            raise ValueError(f"write_gallery: {len(covers)} covers of {name!r} for a {len(users)} x {len(items)} grid")
    header = "".join(
        f"<th>{html.escape(str(item))}<br><small>{html.escape(str(title))}</small></th>"
        for item, title in zip(items, titles, strict=True)
    )
    rows = []
    for r, user in enumerate(users):
        cells = []
        for c in range(len(items)):
            k = r * len(items) + c
            figures = []
            for name in methods:
                file = image_dir / f"u{r}_i{c}_{_slug(name)}.png"
                save_png(grid["covers"][name][k], file)
                scores = grid["scores"].get(name, {})
                caption = [html.escape(name)] + [
                    f"{label} {float(scores[key][k]):.3f}" for key, label in CAPTION_METRICS if key in scores
                ]
                figures.append(
                    f'<figure><img src="gallery/{file.name}" alt="{html.escape(name)} {k}">'
                    f"<figcaption>{'<br>'.join(caption)}</figcaption></figure>"
                )
            cells.append("<td>" + "".join(figures) + "</td>")
        rows.append(f"<tr><th>user {html.escape(str(user))}</th>{''.join(cells)}</tr>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>ICG cover gallery</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>ICG covers: users x items</h1>\n"
        f"<p>Each cell: {', '.join(html.escape(m) for m in methods)}.</p>\n"
        f"<table><tr><th></th>{header}</tr>\n" + "\n".join(rows) + "\n</table></body></html>\n"
    )
    path.write_text(page)
    return path
