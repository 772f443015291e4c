"""A study being run: each rater's screens in order, what a screen shows, and recording an answer.

The blind pairwise study of ICG's covers (Bian et al., EMNLP 2025, user appeal) as plain Python: the web app
(``app.py``) and the simulated raters (``simulate.py``) both go through :class:`Study`, so they share every rule
(a rater's queue, their left/right arrangement, one answer per screen). No web framework is imported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.errors import UserError
from icg.study.catalogue import StudyCatalogue
from icg.study.design import CHOICES, StudyDesign, StudyInputError
from icg.study.store import StudyStore

log = logging.getLogger(__name__)


class NotShownError(StudyInputError):
    """An answer for a comparison the server never showed that rater (the web app takes answers to its screens only)."""


@dataclass
class Study:
    """A study being run: its design, its database and the dataset its screens draw on.

    Args:
        design: comparisons, covers, per-rater order and sides.
        store: the answers database.
        catalogue: titles, reference covers and click histories.
        pairs_per_rater: screens per rater (None: every comparison).
    """

    design: StudyDesign
    store: StudyStore
    catalogue: StudyCatalogue
    pairs_per_rater: int | None = None

    @property
    def screens(self) -> int:
        """Screens per rater."""
        total = len(self.design.comparisons)
        return min(self.pairs_per_rater, total) if self.pairs_per_rater else total

    def queue(self, rater: str) -> list[int]:
        """The comparison ids ``rater`` is to answer, in order."""
        order = self.design.order(rater)
        return order[: self.pairs_per_rater] if self.pairs_per_rater else order

    def progress(self, rater: str) -> tuple[int | None, int, int]:
        """(next comparison id or None when done, answered so far, screens in all) for ``rater``."""
        queue = self.queue(rater)
        answered = self.store.answered(rater)
        upcoming = next((cid for cid in queue if cid not in answered), None)
        return upcoming, sum(cid in answered for cid in queue), len(queue)

    def show(self, rater: str) -> tuple[int | None, int, int]:
        """:meth:`progress`, recording the next screen as shown to ``rater`` (what the web app serves)."""
        upcoming, answered, total = self.progress(rater)
        if upcoming is not None:
            self.store.mark_served(rater, upcoming)
        return upcoming, answered, total

    def answer(
        self, rater: str, comparison_id: int, choice: str, seconds: float | None = None, shown_only: bool = False
    ) -> bool:
        """Record ``rater``'s choice for one of their comparisons; False if it was already answered.

        Args:
            shown_only: refuse (NotShownError) a comparison :meth:`show` never gave this rater (the web app's rule;
                simulated raters in-process judge every screen of their queue).
        """
        if choice not in CHOICES:
            raise StudyInputError(f"choice {choice!r}: expected one of {', '.join(CHOICES)}")
        if comparison_id not in self.queue(rater):
            raise StudyInputError(f"comparison {comparison_id} is not among the screens of rater {rater!r}")
        if shown_only and not self.store.was_served(rater, comparison_id):
            upcoming = self.progress(rater)[0]
            raise NotShownError(
                f"comparison {comparison_id} was never shown to rater {rater!r}: answer the screen the study shows "
                + (f"(comparison {upcoming}, at /rate or /api/next)" if upcoming else "(none left: all answered)")
            )
        if seconds is not None and not 0 <= seconds < 86400:
            seconds = None
        return self.store.record(rater, comparison_id, self.design.sides(rater, comparison_id), choice, seconds)

    def title(self, comparison_id: int) -> str:
        c = self.design.comparison(comparison_id)
        manifest_title = self.design.cover(comparison_id, c.method_a).title
        return manifest_title or self.catalogue.title(c.item_id) or f"item {c.item_id}"

    def reference(self, comparison_id: int) -> Path | None:
        c = self.design.comparison(comparison_id)
        entry = self.design.cover(comparison_id, c.method_a)
        return entry.reference or self.catalogue.image(c.item_id)

    def screen(self, rater: str, comparison_id: int) -> dict[str, Any]:
        """Everything a screen shows, as URLs and text (no method names)."""
        c = self.design.comparison(comparison_id)
        query = f"?rater={rater}"  # the cookie says who asks; this keeps each rater's images apart in caches
        clicks = self.catalogue.recent_clicks(c.user_id, c.item_id)
        return {
            "comparison_id": comparison_id,
            "user_id": c.user_id,
            "item_id": c.item_id,
            "title": self.title(comparison_id),
            "reference": f"/reference/{comparison_id}" if self.reference(comparison_id) else None,
            "history": [
                {"title": click.title, "url": f"/history/{comparison_id}/{k}" if click.image else None}
                for k, click in enumerate(clicks)
            ],
            "left": f"/cover/{comparison_id}/left{query}",
            "right": f"/cover/{comparison_id}/right{query}",
        }


def load_study(run: Path, data_root: Path, db: Path, seed: int, pairs_per_rater: int | None, history: int = 8):
    """The study over ``run``'s covers, its database (created or reopened) and its dataset lookups."""
    if pairs_per_rater is not None and pairs_per_rater <= 0:
        raise UserError(f"--pairs_per_rater must be positive, got {pairs_per_rater}")
    design = StudyDesign.from_manifest(run, seed)
    users = {c.user_id for c in design.comparisons}
    catalogue = StudyCatalogue(data_root, users, history)
    unknown = users - catalogue.known_users()
    if unknown:
        log.warning("%d of %d study users have no interactions in %s: their profiles are empty", len(unknown),
                    len(users), data_root)  # fmt: skip
    return Study(design, StudyStore.open_for(db, design), catalogue, pairs_per_rater)
