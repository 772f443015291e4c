"""The HTML picture gallery of ICG's evaluation (Bian et al., EMNLP 2025): users x items, every method side by side.

One page that explains itself: a legend says what rows, columns and numbers are; each item's column group has the
item's title and its reference cover in the header, then one column per method (named in a second header row);
each row is a user, labelled with their taste where the platform knows it (the synthetic platform's hidden truth:
liked and disliked colours, light or dark covers). Under each cover: the user's true click probability where an
oracle exists (else the evaluator's), and the relevance reward. Images are PNG files in a ``gallery/`` folder next to
the HTML file and referenced by relative paths, so the folder can be copied or served as is.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from icg.lit.callbacks import save_png

CAPTION_METRICS = (("true_click_prob", "p"), ("evaluator_click_prob", "eval p"), ("relevance", "rel"))
METHOD_LABELS = {
    "title_only": "title only",
    "personalized_prompt": "title + history words",
    "icg_no_user": "ICG, no user",
    "icg_no_meta": "ICG, no meta tokens",
    "icg_other_mllm": "ICG, other MLLM",
    "icg": "ICG",
    "icg_from_noise": "ICG, from noise",
}
METHOD_HELP = {
    "title_only": "the base diffusion model prompted with the title (no user)",
    "personalized_prompt": "the title + the user's most frequent colour/style words of their train clicks (PMG-style)",
    "icg_no_user": "ICG without user refinement (the ablation)",
    "icg_no_meta": "ICG trained without the MLLM's meta tokens (title prompt + user only)",
    "icg_other_mllm": "ICG trained the same way, reading items through another MLLM (the demo: its trained stand-in)",
    "icg": "title + reference cover + this user's embedding",
    "icg_from_noise": "ICG sampling from pure noise instead of from the reference",
}
STYLE = """
body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 3px; vertical-align: top; text-align: center; }
th.item { background: #f3f3f3; font-weight: normal; font-size: 12px; max-width: 360px; }
th.method { font-size: 11px; background: #fafafa; }
th.user { text-align: left; font-size: 12px; font-weight: normal; min-width: 120px; }
td.first { border-left: 3px solid #888; }
img { width: 72px; height: 72px; image-rendering: pixelated; display: block; margin: auto; }
.caption { font-size: 10px; color: #333; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #555; margin-right: 2px; }
.legend { font-size: 13px; max-width: 1200px; }
"""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "method"


def _label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def _swatch(rgb: list[float]) -> str:
    colour = ",".join(str(round(255 * c)) for c in rgb)
    return f'<span class="swatch" style="background: rgb({colour})"></span>'


def _user_header(user: str, note: dict[str, Any] | None) -> str:
    if not note:
        return f"<b>user {html.escape(user)}</b>"
    likes = " ".join(_swatch(rgb) + html.escape(name) for name, rgb in note.get("likes", []))
    dislikes = " ".join(_swatch(rgb) + html.escape(name) for name, rgb in note.get("dislikes", []))
    lines = [f"<b>user {html.escape(user)}</b>", f"likes {likes}", f"dislikes {dislikes}"]
    if note.get("brightness"):
        lines.append(f"prefers {html.escape(note['brightness'])} covers")
    if note.get("backdrop"):
        name, rgb = note["backdrop"]
        lines.append(f"backdrop {_swatch(rgb)}{html.escape(name)}")
    return "<br>".join(lines)


def write_gallery(path: str | Path, grid: dict[str, Any]) -> Path:
    """Write the gallery HTML and its PNGs; returns the HTML path.

    Args:
        path: the HTML file to write (images go to ``<its folder>/gallery/``).
        grid: ``users`` (U ids), ``items`` (I ids), ``titles`` (I), ``pairs`` (U*I (user, item) in row-major order),
            ``covers`` (method -> U*I x 3 x H x W in [0, 1]; ``reference`` first) and ``scores``
            (method -> metric -> U*I values); optionally ``user_notes`` (user id -> ``likes`` / ``dislikes``: lists
            of (colour name, RGB), ``brightness``: "light" | "dark", ``backdrop``: (hue name, RGB)), ``mode`` (a
            sentence on how covers start) and ``user_swap`` (the user-swap section, ``icg.evaluation.swap_gallery``).
    """
    path = Path(path)
    image_dir = path.parent / "gallery"
    image_dir.mkdir(parents=True, exist_ok=True)
    users, items, titles = grid["users"], grid["items"], grid["titles"]
    methods = [m for m in grid["covers"] if m != "reference"]
    n = len(users) * len(items)
    for name, covers in grid["covers"].items():
        if len(covers) != n:
            raise ValueError(f"write_gallery: {len(covers)} covers of {name!r} for a {len(users)} x {len(items)} grid")
    notes = grid.get("user_notes") or {}

    def image(name: str, r: int, c: int, alt: str) -> str:
        k = r * len(items) + c
        file = image_dir / f"u{r}_i{c}_{_slug(name)}.png"
        save_png(grid["covers"][name][k], file)
        return f'<img src="gallery/{file.name}" alt="{html.escape(alt)}">'

    item_header = "".join(
        f'<th class="item" colspan="{len(methods)}"><b>{html.escape(str(item))}</b>: {html.escape(str(title))}<br>'
        f"{image('reference', 0, c, f'reference cover of {item}')}<span class='caption'>reference cover</span></th>"
        for c, (item, title) in enumerate(zip(items, titles, strict=True))
    )
    method_header = "".join(f'<th class="method">{html.escape(_label(m))}</th>' for _ in items for m in methods)
    rows = []
    for r, user in enumerate(users):
        cells = []
        for c in range(len(items)):
            k = r * len(items) + c
            for j, name in enumerate(methods):
                scores = grid["scores"].get(name, {})
                caption = "<br>".join(  # one figure per line: a narrow cell never splits a label from its value
                    f"{label}&nbsp;{float(scores[key][k]):.2f}" for key, label in CAPTION_METRICS if key in scores
                )
                cls = ' class="first"' if j == 0 else ""
                cells.append(f"<td{cls}>{image(name, r, c, f'{name} for user {user}, item {items[c]}')}"
                             f"<span class='caption'>{caption}</span></td>")  # fmt: skip
        rows.append(f'<tr><th class="user">{_user_header(str(user), notes.get(str(user)))}</th>{"".join(cells)}</tr>')
    legend = "".join(f"<li><b>{html.escape(_label(m))}</b>: {html.escape(METHOD_HELP.get(m, m))}</li>"
                     for m in methods)  # fmt: skip
    numbers = (
        "p = the user's true click probability (the synthetic platform's hidden click model); "
        if any("true_click_prob" in grid["scores"].get(m, {}) for m in methods)
        else ""
    ) + "eval p = the click probability of the evaluator click model (trained apart from the rewards)"
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>ICG cover gallery</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>ICG covers: users x items</h1>\n"
        "<div class='legend'><p>Rows are users (with their taste, where the platform knows it); columns are items "
        "(title and reference cover on top), one column per method:</p>"
        f"<ul>{legend}</ul><p>{html.escape(grid.get('mode', ''))} Under each cover: {numbers}; rel = the relevance "
        "reward (title vs cover).</p></div>\n"
        f'<table><tr><th rowspan="2"></th>{item_header}</tr>\n<tr>{method_header}</tr>\n'
        + "\n".join(rows)
        + "\n</table>\n"
        + _swap_section(grid, image_dir, notes)
        + "</body></html>\n"
    )
    path.write_text(page)
    return path


def _swap_section(grid: dict[str, Any], image_dir: Path, notes: dict[str, Any]) -> str:
    if not grid.get("user_swap"):
        return ""
    from icg.evaluation.swap_gallery import swap_section

    return swap_section(grid["user_swap"], image_dir, lambda user: _user_header(user, notes.get(user)), _label)
