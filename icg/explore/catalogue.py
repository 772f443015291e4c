"""What the explorer picks from and shows beside the covers: users, items (the dataset's and uploads), each user's
recent clicks and, on the synthetic platform, their hidden taste in words.

The dataset side reuses the study's ``StudyCatalogue`` (titles, reference covers, click histories; read one user at
a time here); a dataset is optional, and without one items come from uploads only.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from icg.data.oracle import user_tastes
from icg.explore.explorer import ExploreInputError, Item
from icg.explore.uploads import UPLOAD_PREFIX, Uploads
from icg.study.catalogue import Click, StudyCatalogue


class ExploreCatalogue:
    """Users, items, click histories and tastes for the explorer's page.

    Args:
        user_ids: the users the export knows (any other id may be typed: it gets the cold-start fallback).
        data_root: an icg dataset folder (None: items come from uploads only, no click histories).
        image_size: the generator's cover side (uploads are kept at that size).
        history: how many recent clicks a profile shows.
    """

    def __init__(self, user_ids: list[str], data_root: str | Path | None, image_size: int, history: int = 8) -> None:
        self.user_ids = list(user_ids)
        self.data_root = Path(data_root) if data_root is not None else None
        self.dataset = StudyCatalogue(data_root, (), history) if data_root is not None else None
        self.tastes: dict[str, dict[str, Any]] = user_tastes(data_root) if data_root is not None else {}
        self.uploads = Uploads(image_size)
        self._items = self.dataset.items() if self.dataset is not None else []
        self._lock = threading.Lock()

    @property
    def num_items(self) -> int:
        """Items of the dataset (uploads not counted)."""
        return len(self._items)

    @property
    def default_user(self) -> str:
        return self.user_ids[0] if self.user_ids else "user"

    @property
    def default_item(self) -> str | None:
        return self._items[0][0] if self._items else None

    def item(self, key: str) -> Item:
        """The dataset item or upload ``key``; ExploreInputError when there is none."""
        if key.startswith(UPLOAD_PREFIX):
            found = self.uploads.get(key)
            if found is None:
                raise ExploreInputError(f"item {key!r}: no such upload (forgotten after a restart?); upload it again")
            return found
        if self.dataset is None:
            raise ExploreInputError(f"item {key!r}: no dataset given (--data_root); upload a reference image instead")
        title, image = self.dataset.title(key), self.dataset.image(key)
        if title is None:
            raise ExploreInputError(f"item {key!r} is not in {self.data_root}; pick one from the list or upload one")
        if image is None:
            raise ExploreInputError(f"item {key!r} has no readable reference image in {self.data_root}; pick another")
        return Item(key, title, image)

    def search_items(self, text: str = "", limit: int = 50) -> list[tuple[str, str]]:
        """Up to ``limit`` dataset items whose id or title contains ``text`` (case-insensitive), in dataset order."""
        text = text.strip().lower()
        found = []
        for item_id, title in self._items:
            if not text or text in item_id.lower() or text in title.lower():
                found.append((item_id, title))
                if len(found) == limit:
                    break
        return found

    def search_users(self, text: str = "", limit: int = 50) -> list[str]:
        """Up to ``limit`` of the export's users whose id contains ``text`` (case-insensitive)."""
        text = text.strip().lower()
        return [u for u in self.user_ids if text in u.lower()][:limit]

    def recent_clicks(self, user_id: str, item_key: str) -> list[Click]:
        """The user's latest clicks before their interaction with the item (all, if none), most recent first."""
        if self.dataset is None:
            return []
        with self._lock:
            self.dataset.load_clicks([user_id])
            return self.dataset.recent_clicks(user_id, item_key)

    def taste(self, user_id: str) -> dict[str, Any] | None:
        """The user's hidden taste (synthetic platform), or None."""
        return self.tastes.get(user_id)
