"""The users a trained ICG can personalize for: string ids -> stage-1 user embeddings, plus the cold-start fallback.

ICG (Bian et al., EMNLP 2025) refines an item's features with the user's embedding from the stage-1 click model.
Generation needs only that table, not the click model: an export carries it (``users.safetensors`` +
``users.json``), a user missing from it gets the fallback row (the stage-1 model's cold-start embedding), and new
users can be added later without retraining (``extend``, e.g. from a fold-in of their click history).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from icg import ckpt
from icg.errors import ExportError

USERS_WEIGHTS = "users.safetensors"
USERS_IDS = "users.json"


class UserTable:
    """``user_ids[i]`` -> ``embeddings[i]``; the last row of ``embeddings`` is the cold-start fallback.

    Args:
        user_ids: N distinct string ids.
        embeddings: (N + 1) x D float tensor, fallback last.
    """

    def __init__(self, user_ids: Sequence[str], embeddings: Tensor) -> None:
        self.user_ids = [str(u) for u in user_ids]
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.user_ids) + 1:
            raise ValueError(
                f"embeddings must be (N + 1) x D for N={len(self.user_ids)} users plus the fallback row, got "
                f"{tuple(embeddings.shape)}"
            )
        self.index = {u: i for i, u in enumerate(self.user_ids)}
        if len(self.index) != len(self.user_ids):
            raise ValueError("user ids must be distinct")
        self.embeddings = embeddings.detach().float()

    @classmethod
    def from_preference_model(cls, model: torch.nn.Module, user_ids: Sequence[str]) -> UserTable:
        """The ID embeddings of a stage-1 ``PreferenceModel`` (as stage 3 reads them), fallback last."""
        with torch.no_grad():
            rows = torch.arange(len(user_ids), device=model.user_embedding_table.weight.device)
            table = model.user_embedding(torch.cat([rows, rows.new_tensor([-1])]))
        return cls(list(user_ids), table.cpu())

    @classmethod
    def of_ids(cls, user_ids: Sequence[str]) -> UserTable:
        """A table of ids alone (zero-width embeddings): another model's user vocabulary, e.g. the stage-1 ids a reward
        bundle's preference reward indexes, to map users onto with :meth:`index_map`."""
        return cls(user_ids, torch.zeros(len(user_ids) + 1, 0))

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def __len__(self) -> int:
        return len(self.user_ids)

    def __contains__(self, user_id: object) -> bool:
        return str(user_id) in self.index

    def rows(self, user_ids: Sequence[str]) -> tuple[Tensor, list[bool]]:
        """Row index per user (the fallback row for unknown ids) and whether each id is known."""
        fallback = len(self.user_ids)
        rows = [self.index.get(str(u), fallback) for u in user_ids]
        return torch.tensor(rows, dtype=torch.long, device=self.device), [r != fallback for r in rows]

    def index_map(self, user_ids: Sequence[str]) -> Tensor:
        """Row per user of another vocabulary (e.g. a DataModule's ``user_ids``), ``-1`` where the id is unknown.

        ``-1`` selects the last row, the cold-start fallback, in ``embeddings[rows]`` and in the stage-1 model's user
        tower alike, so a mapped index works with both; on CPU, for mapping a vocabulary once.
        """
        return torch.tensor([self.index.get(str(u), -1) for u in user_ids], dtype=torch.long)

    def lookup(self, user_ids: Sequence[str]) -> tuple[Tensor, list[bool]]:
        """B x D embeddings of ``user_ids`` (unknown ids: the fallback) and whether each id is known."""
        rows, known = self.rows(user_ids)
        return self.embeddings[rows], known

    def fallback(self, batch_size: int = 1) -> Tensor:
        """``batch_size`` x D copies of the cold-start fallback embedding."""
        return self.embeddings[-1:].expand(batch_size, -1)

    def extend(self, user_ids: Sequence[str], embeddings: Tensor) -> UserTable:
        """A new table with more users (e.g. folded in from their clicks); an existing id is replaced."""
        new_ids = [str(u) for u in user_ids]
        if embeddings.shape != (len(new_ids), self.embed_dim):
            raise ValueError(f"embeddings must be {len(new_ids)} x {self.embed_dim}, got {tuple(embeddings.shape)}")
        rows = dict(zip(self.user_ids, self.embeddings[:-1], strict=True))
        rows.update(zip(new_ids, embeddings.detach().float().to(self.device), strict=True))
        ids = list(rows)
        return UserTable(ids, torch.cat([torch.stack([rows[u] for u in ids]), self.embeddings[-1:]]))

    def to(self, device: torch.device | str) -> UserTable:
        self.embeddings = self.embeddings.to(device)
        return self

    def save(self, folder: str | Path) -> None:
        """``users.safetensors`` (the (N + 1) x D table) and ``users.json`` (the N ids, in row order)."""
        folder = Path(folder)
        save_file({"embeddings": self.embeddings.cpu().contiguous()}, str(folder / USERS_WEIGHTS))
        (folder / USERS_IDS).write_text(json.dumps(self.user_ids) + "\n")

    @classmethod
    def load(cls, folder: str | Path, count: int | None = None) -> UserTable:
        """The table of an export folder, checked: a tampered or damaged table is refused in one line.

        Args:
            folder: the export folder (``users.safetensors`` + ``users.json``).
            count: the user count its ``icg_config.json`` records (``users.count``), checked against the table.

        Raises:
            ExportError: ``users.json`` is not a list of distinct string ids, ``users.safetensors`` holds another
                tensor than ``embeddings``, or one that is not a finite float (N + 1) x D table, or ``count``
                disagrees; the message names the file, the tensor or id and the bad value.
        """
        folder = Path(folder)
        where, ids_file = f"export {folder}", folder / USERS_IDS
        tensors = ckpt.read_safetensors(folder / USERS_WEIGHTS, where)
        weights = folder / USERS_WEIGHTS
        if set(tensors) != {"embeddings"}:
            extra, missing = sorted(set(tensors) - {"embeddings"}), "embeddings" not in tensors
            what = "lacks the tensor 'embeddings'" if missing else f"holds tensor(s) {extra} besides 'embeddings'"
            raise ExportError(f"{where}: {weights} {what} (a user table holds only 'embeddings')")
        try:
            ids = json.loads(ids_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ExportError(f"{where}: {ids_file} is not valid JSON ({err})") from err
        if not isinstance(ids, list):
            raise ExportError(f"{where}: {ids_file} must be a JSON list of user ids, got {type(ids).__name__}")
        seen: dict[str, int] = {}
        for row, user in enumerate(ids):
            if not isinstance(user, str):
                raise ExportError(f"{where}: {ids_file} entry {row} is {user!r}, not a string user id")
            if user in seen:
                raise ExportError(f"{where}: {ids_file} names user {user!r} twice (entries {seen[user]} "
                                  f"and {row}); user ids must be distinct")  # fmt: skip
            seen[user] = row
        table = tensors["embeddings"]
        if not table.is_floating_point():
            raise ExportError(f"{where}: {weights}: 'embeddings' is {table.dtype}, not a float tensor")
        if table.ndim != 2 or table.shape[0] != len(ids) + 1:
            raise ExportError(f"{where}: {weights}: 'embeddings' has shape {tuple(table.shape)}, expected "
                              f"({len(ids) + 1}, D): {len(ids)} users in {USERS_IDS} + the fallback row")  # fmt: skip
        if not bool(torch.isfinite(table).all()):
            bad = int((~torch.isfinite(table)).any(dim=1).nonzero()[0])
            row = f"user {ids[bad]!r}" if bad < len(ids) else "the fallback"
            raise ExportError(f"{where}: {weights}: 'embeddings' holds NaN or infinite values (row {bad}, {row})")
        if count is not None and count != len(ids):
            raise ExportError(f"{where}: {folder / 'icg_config.json'}: users.count={count!r}, but {ids_file} names "
                              f"{len(ids)} users")  # fmt: skip
        return cls(ids, table)
