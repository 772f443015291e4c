"""The design of a blind pairwise study over covers: which comparisons exist, their order per rater, which side.

ICG (Bian et al., EMNLP 2025) judges user appeal by people comparing covers. A *comparison* is one (user, item) and
two methods that both have a cover for it; every pair of methods of every (user, item) in the manifest is one
comparison. Each rater works through all comparisons (or the first ``pairs_per_rater``) in an order of their own,
and sees each comparison's two covers in a left/right arrangement of their own. Both are functions of the study's
``seed``, the rater id and the comparison alone, so a restarted server shows a rater exactly what it would have.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from icg.cover_manifest import CoverEntry, manifest_fingerprint, read_manifest, resolve_manifest
from icg.errors import UserError

RATER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
CHOICES = ("left", "right", "none")


class StudyInputError(UserError, ValueError):
    """The covers cannot make a pairwise study (fewer than two methods for any (user, item)), or a bad rater id."""


@dataclass(frozen=True)
class Comparison:
    """One screen of the study: a (user, item) and two methods, ``method_a < method_b`` (names sorted).

    Args:
        id: 1-based position in the study's sorted list (stable for a given manifest).
        user_id: the user the covers were made for.
        item_id: the item.
        method_a: the first method, alphabetically.
        method_b: the second method.
    """

    id: int
    user_id: str
    item_id: str
    method_a: str
    method_b: str


@dataclass
class StudyDesign:
    """The comparisons of a manifest and the covers they show.

    Args:
        manifest: the manifest file read.
        entries: its rows, keyed by (user, item, method).
        comparisons: every comparison, ``comparisons[k].id == k + 1``.
        fingerprint: ``manifest_fingerprint`` of the covers (rows and file bytes).
        seed: seed of the raters' orders and left/right arrangements.
    """

    manifest: Path
    entries: dict[tuple[str, str, str], CoverEntry]
    comparisons: list[Comparison]
    fingerprint: str
    seed: int = 0

    @classmethod
    def from_manifest(cls, path: str | Path, seed: int = 0) -> StudyDesign:
        """Read a manifest (or a folder holding one) and lay out its comparisons.

        Raises:
            StudyInputError: fewer than two methods in the manifest, or no (user, item) with covers of two methods.
        """
        manifest = resolve_manifest(path)
        entries = read_manifest(manifest)
        methods = sorted({e.method for e in entries})
        if len(methods) < 2:
            raise StudyInputError(
                f"{manifest}: covers of {len(methods)} method ({', '.join(map(repr, methods))}); a pairwise study "
                "needs covers of at least two methods for the same (user, item)"
            )
        by_pair: dict[tuple[str, str], list[str]] = {}
        for entry in entries:
            by_pair.setdefault((entry.user_id, entry.item_id), []).append(entry.method)
        comparisons = []
        for (user, item), names in sorted(by_pair.items()):
            for a, b in combinations(sorted(names), 2):
                comparisons.append(Comparison(len(comparisons) + 1, user, item, a, b))
        if not comparisons:
            raise StudyInputError(
                f"{manifest}: no (user, item) has covers of two methods ({len(methods)} methods, each on other pairs); "
                "a pairwise study compares covers of the same (user, item)"
            )
        return cls(
            manifest=manifest,
            entries={e.key: e for e in entries},
            comparisons=comparisons,
            fingerprint=manifest_fingerprint(entries),
            seed=seed,
        )

    @property
    def methods(self) -> list[str]:
        return sorted({m for c in self.comparisons for m in (c.method_a, c.method_b)})

    def comparison(self, comparison_id: int) -> Comparison:
        if not 1 <= comparison_id <= len(self.comparisons):
            raise KeyError(f"no comparison {comparison_id} (the study has {len(self.comparisons)})")
        return self.comparisons[comparison_id - 1]

    def order(self, rater: str) -> list[int]:
        """The comparison ids in the order ``rater`` sees them (a permutation seeded by study seed and rater)."""
        ids = [c.id for c in self.comparisons]
        random.Random(f"{self.seed}:{rater}").shuffle(ids)
        return ids

    def sides(self, rater: str, comparison_id: int) -> tuple[str, str]:
        """(left method, right method) of ``comparison_id`` as ``rater`` sees it."""
        c = self.comparison(comparison_id)
        flip = hashlib.sha256(f"{self.seed}:{rater}:{comparison_id}".encode()).digest()[0] & 1
        return (c.method_b, c.method_a) if flip else (c.method_a, c.method_b)

    def cover(self, comparison_id: int, method: str) -> CoverEntry:
        c = self.comparison(comparison_id)
        return self.entries[(c.user_id, c.item_id, method)]


def check_rater(rater: str) -> str:
    """``rater`` if it is a usable rater id (1-64 characters: letters, digits, ``_ . @ -``), else StudyInputError."""
    rater = (rater or "").strip()
    if not RATER_PATTERN.match(rater):
        raise StudyInputError(
            f"rater id {rater!r}: use 1-64 letters, digits or _ . @ - (starting with a letter or digit)"
        )
    return rater
