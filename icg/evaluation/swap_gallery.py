"""The gallery's user-swap section (ICG, Bian et al., EMNLP 2025): one item's covers for several users, side by side.

Rows are items (title and reference cover first); columns are users, each headed by the user's taste where the
platform knows it. Every cover in a row starts from the same seed (``icg.evaluation.user_swap.common_seed``), so what
differs between the columns is the user alone. Under each cover: the click probability of that cover for its column's
user, and the mean click probability of the same user for the *other* columns' covers (the user-swap test in one
cell: a personalizing model shows the first above the second). ``icg.evaluation.gallery.write_gallery`` appends it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icg.lit.callbacks import save_png

SWAP_STYLE = "table.swap td img { width: 96px; height: 96px; }"  # bigger: users' covers of an item differ in detail


def swap_section(
    section: dict[str, Any], image_dir: Path, user_header: Callable[[str], str], label: Callable[[str], str]
) -> str:
    """The section's HTML; its PNGs are written to ``image_dir`` (``swap_*.png``).

    Args:
        section: ``icg.evaluation.user_swap``'s gallery data: ``users`` (U ids), ``items`` (I ids), ``titles`` (I),
            ``references`` (I x 3 x H x W), ``covers`` (method -> I*U covers, item-major), ``own`` and ``others``
            (method -> I*U click probabilities), ``score_label`` and ``clicked`` (I*U: a held-out clicked pair).
        image_dir: the gallery's image folder (the HTML refers to it as ``gallery/``).
        user_header: user id -> the column header's HTML (the user's taste).
        label: method name -> its label.
    """
    users, items, methods = section["users"], section["items"], list(section["covers"])
    n = len(users) * len(items)
    for name, covers in section["covers"].items():
        if len(covers) != n:
            raise ValueError(
                f"swap_section: {len(covers)} covers of {name!r} for {len(items)} items x {len(users)} users"
            )
    score = html.escape(section["score_label"])

    def image(tensor: Any, file_name: str, alt: str) -> str:
        save_png(tensor, image_dir / file_name)
        return f'<img src="gallery/{file_name}" alt="{html.escape(alt)}">'

    def cell(name: str, r: int, c: int) -> str:
        k = r * len(users) + c
        own, others = section["own"][name][k], section["others"][name][k]
        lines = [f"{score}&nbsp;{own:.2f}"]
        if not math.isnan(others):
            lines.append(f"others'&nbsp;{others:.2f}")
        if section["clicked"][k] and name == methods[0]:
            lines.append("<b>clicked</b>")
        cls = ' class="first"' if name == methods[0] else ""
        alt = f"{name} cover of {items[r]} for user {users[c]}"
        return (f"<td{cls}>{image(section['covers'][name][k], f'swap_i{r}_u{c}_{_slug(name)}.png', alt)}"
                f"<span class='caption'>{'<br>'.join(lines)}</span></td>")  # fmt: skip

    user_row = "".join(f'<th class="user" colspan="{len(methods)}">{user_header(str(u))}</th>' for u in users)
    method_row = "".join(f'<th class="method">{html.escape(label(m))}</th>' for _ in users for m in methods)
    rows = []
    for r, (item, title) in enumerate(zip(items, section["titles"], strict=True)):
        reference = image(section["references"][r], f"swap_i{r}_reference.png", f"reference cover of {item}")
        head = (f'<th class="item"><b>{html.escape(str(item))}</b>: {html.escape(str(title))}<br>{reference}'
                "<span class='caption'>reference cover</span></th>")  # fmt: skip
        rows.append(f"<tr>{head}{''.join(cell(m, r, c) for c in range(len(users)) for m in methods)}</tr>")
    return (
        f"<style>{SWAP_STYLE}</style>\n"
        "<h2>The same item for different users, at one seed</h2>\n<div class='legend'><p>Each row is one item; each "
        "column a user, with their taste. Every cover in a row starts from the same seed, so the covers differ only by "
        f"the user they were made for. Under each cover: {score} = the column user's click probability of this cover; "
        f"others' = the same user's mean {score} of the other columns' covers of the item (made for other users). A "
        "model that personalizes puts the first above the second; a model that ignores the user makes identical covers "
        "(both numbers equal). <b>clicked</b>: the user clicked this item (a held-out pair).</p></div>\n"
        f'<table class="swap"><tr><th rowspan="2">item</th>{user_row}</tr>\n<tr>{method_row}</tr>\n'
        + "\n".join(rows)
        + "\n</table>\n"
    )


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name) or "method"
