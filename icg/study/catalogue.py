"""What a study screen shows besides the two covers: the item's title and reference cover, the user's recent clicks.

Read from an icg dataset folder (docs/data.md) for the users and items of a study (ICG, Bian et al., EMNLP 2025,
judges user appeal against the user's taste, which a rater learns from the covers that user clicked). The cover
explorer (``icg explore``) reads the same, one user's clicks at a time (``load_clicks``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from icg.data.schema import INTERACTIONS_TABLE, ITEM_COLUMNS, ITEMS_TABLE, read_table, table_path


@dataclass(frozen=True)
class Click:
    """One of a user's clicks as the profile shows it."""

    item_id: str
    title: str
    image: Path | None


class StudyCatalogue:
    """Titles, reference covers and click histories of a dataset, restricted to the study's users.

    Args:
        data_root: the dataset folder.
        users: the users whose clicks are read now (the study's); ``load_clicks`` reads more later.
        history: how many recent clicks a profile shows.
    """

    def __init__(self, data_root: str | Path, users: Iterable[str] = (), history: int = 8) -> None:
        self.root = Path(data_root).resolve()
        self.history = history
        items = read_table(table_path(self.root, ITEMS_TABLE), ITEM_COLUMNS)
        self._items = {
            str(row.item_id): (str(row.title), self._inside(str(row.image))) for row in items.itertuples(index=False)
        }
        self._clicks: dict[str, pd.DataFrame] = {}
        self._read_users: set[str] = set()
        self.load_clicks(users)

    def load_clicks(self, users: Iterable[str]) -> None:
        """Read the click histories of those ``users`` that were not read yet."""
        missing = {str(u) for u in users} - self._read_users
        if missing:
            self._clicks.update(self._read_clicks(missing))
            self._read_users |= missing

    def _inside(self, name: str) -> Path | None:
        """The image file under the dataset folder, or None (missing, or a path leading out of the folder)."""
        if not name:
            return None
        path = (self.root / name).resolve()
        return path if path.is_relative_to(self.root) and path.is_file() else None

    def _read_clicks(self, users: set[str]) -> dict[str, pd.DataFrame]:
        path = table_path(self.root, INTERACTIONS_TABLE)
        columns = ("user_id", "item_id", "click", "timestamp")
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path, columns=list(columns), filters=[("user_id", "in", sorted(users))])
            frame["user_id"], frame["item_id"] = frame["user_id"].astype(str), frame["item_id"].astype(str)
        else:
            frame = read_table(path, columns)
            frame = frame[frame["user_id"].isin(users)]
        frame = frame.assign(
            click=pd.to_numeric(frame["click"], errors="coerce"),
            timestamp=pd.to_numeric(frame["timestamp"], errors="coerce"),
        ).dropna(subset=["click", "timestamp"])
        frame = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
        return {str(user): rows for user, rows in frame.groupby("user_id", sort=False)}

    def items(self) -> list[tuple[str, str]]:
        """Every item of the dataset as (item id, title), in the dataset's order."""
        return [(item_id, title) for item_id, (title, _) in self._items.items()]

    def title(self, item_id: str) -> str | None:
        found = self._items.get(item_id)
        return found[0] if found else None

    def image(self, item_id: str) -> Path | None:
        found = self._items.get(item_id)
        return found[1] if found else None

    def recent_clicks(self, user_id: str, item_id: str) -> list[Click]:
        """The user's latest clicks before their interaction with ``item_id`` (all clicks if there is none),
        most recent first, at most ``history``; the item itself is never among them."""
        rows = self._clicks.get(user_id)
        if rows is None:
            return []
        own = rows.loc[rows["item_id"] == item_id, "timestamp"]
        before = rows[rows["timestamp"] < own.min()] if len(own) else rows
        clicked = before[(before["click"] == 1) & (before["item_id"] != item_id)]
        latest = clicked["item_id"].to_numpy()[::-1][: self.history]
        return [Click(str(i), self.title(str(i)) or "", self.image(str(i))) for i in latest]

    def known_users(self) -> set[str]:
        return set(self._clicks)
