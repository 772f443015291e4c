"""User segments: k-means over an export's stage-1 user embeddings, written as a new export of K centroid users.

ICG (Bian et al., EMNLP 2025) personalizes a cover through the user's stage-1 embedding. At platform scale (Pixel1M:
1M users x 100k items) one cover per (user, item) is unaffordable, so a platform generates per *segment*: users are
clustered by what the generator conditions on (their embeddings; scikit-learn's ``KMeans``), and each segment's
centroid is generated for like a user. ``icg users segment`` writes that as an export (``icg.generation.export``'s
``write_derived``: the input is never written to) whose users are ``segment/0`` ... ``segment/K-1`` (the cold-start
fallback row kept as it was, not clustered), plus ``segments.parquet`` (``user_id, segment, distance``: each user's
segment and its distance to the centroid) and a ``segments`` record in ``icg_config.json``. ``icg generate
--segments`` reads it (``icg.generation.pools``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from icg.errors import UserError
from icg.generation.users import UserTable

log = logging.getLogger(__name__)

SEGMENTS_FILE = "segments.parquet"
SEGMENT_PREFIX = "segment/"


class SegmentError(UserError, ValueError):
    """User segments cannot be made or read as asked; the message names the option or file and the bad value."""


def segment_id(index: int) -> str:
    """The user id of segment ``index`` in a segment export (``segment/3``)."""
    return f"{SEGMENT_PREFIX}{index}"


@dataclass
class Segments:
    """Each user's segment, as a segment export holds it.

    Args:
        user_ids: the users clustered (the source export's, in its row order).
        labels: the segment index of each user.
        distances: each user's Euclidean distance to its segment's centroid.
        centroids: K x D, the segments' embeddings.
        inertia: k-means' sum of squared distances.
    """

    user_ids: list[str]
    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    inertia: float

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def table(self, fallback: torch.Tensor) -> UserTable:
        """The segment export's user table: ``segment/0..K-1`` = the centroids, then the source's fallback row."""
        rows = torch.from_numpy(np.ascontiguousarray(self.centroids, dtype=np.float32))
        return UserTable([segment_id(i) for i in range(self.k)], torch.cat([rows, fallback.reshape(1, -1).float()]))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "user_id": pd.Series(self.user_ids, dtype=str),
            "segment": pd.Series([segment_id(int(i)) for i in self.labels], dtype=str),
            "distance": self.distances.astype(np.float64),
        })  # fmt: skip


def cluster_users(users: UserTable, k: int, seed: int = 0) -> Segments:
    """k-means (scikit-learn, k-means++ init, 10 restarts) over the users' embeddings, the fallback row left out.

    Raises:
        SegmentError: ``k`` < 1 or more than the users there are.
    """
    from sklearn.cluster import KMeans

    n = len(users)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SegmentError(f"--k must be an integer >= 1 (the number of segments), got {k!r}")
    if k > n:
        raise SegmentError(f"--k {k}: more segments than the {n} user(s) of the export; give --k <= {n}")
    points = users.embeddings[:-1].detach().cpu().double().numpy()
    model = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(points)
    labels = model.labels_.astype(np.int64)
    centroids = model.cluster_centers_
    distances = np.linalg.norm(points - centroids[labels], axis=1)
    return Segments(list(users.user_ids), labels, distances, centroids, float(model.inertia_))


def segment_export(export: str | Path, k: int, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """``icg users segment``: cluster an export's users into ``k`` segments and write the segment export ``out``.

    Args:
        export: the ``icg export`` folder whose users are clustered (only read).
        k: the number of segments (1 <= k <= users).
        out: the new export folder (must not exist, or be empty).
        seed: k-means' random state.

    Returns:
        a report: the folder written, k, users clustered, inertia, the smallest and largest segment.
    """
    from icg.generation.export import check_new_export, read_config, write_derived

    config = read_config(export, "--export")
    check_new_export(export, out)  # before any work: the input export is never written to
    users = UserTable.load(export, count=config["users"]["count"])
    if len(users) == 0:
        raise SegmentError(f"--export: {export} has no users to segment")
    segments = cluster_users(users, k, seed)
    record = {"k": segments.k, "seed": seed, "users": len(users), "inertia": segments.inertia,
              "source": str(Path(export).resolve())}  # fmt: skip
    buffer = io.BytesIO()
    segments.frame().to_parquet(buffer, index=False)

    def note(config: dict[str, Any]) -> None:
        config["segments"] = record

    write_derived(export, segments.table(users.embeddings[-1]), out, "icg users segment", note,
                  {SEGMENTS_FILE: buffer.getvalue()})  # fmt: skip
    sizes = np.bincount(segments.labels, minlength=segments.k)
    log.info("segmented %d users into %d segments (inertia %.4g)", len(users), segments.k, segments.inertia)
    return {"export": str(out), **record, "smallest": int(sizes.min()), "largest": int(sizes.max())}


def is_segment_export(export: str | Path) -> bool:
    """Whether an export folder is one ``icg users segment`` wrote (it holds ``segments.parquet``)."""
    return (Path(export) / SEGMENTS_FILE).is_file()


def read_segments(
    export: str | Path, config: dict[str, Any], config_key: str = "--segments"
) -> tuple[dict[str, str], list[str]]:
    """user id -> segment id of a segment export (``segments.parquet``) and its segment ids (``segment/0`` ...),
    checked against its record.

    Raises:
        SegmentError: the export is not a segment export, or its ``segments.parquet`` is damaged or names a segment
            its user table lacks.
    """
    path = Path(export) / SEGMENTS_FILE
    if not path.is_file() or "segments" not in config:
        raise SegmentError(f"{config_key}: {export} is not a segment export (no {SEGMENTS_FILE}); make one with "
                           "icg users segment --export E --k K --out E2 and pass --export E2")  # fmt: skip
    try:
        frame = pd.read_parquet(path, columns=["user_id", "segment"])
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a damaged file; all mean "unreadable"
        raise SegmentError(f"{config_key}: {path} cannot be read ({err})") from err
    k = int(config["segments"].get("k", -1))
    if config["users"].get("count") != k:
        raise SegmentError(f"{config_key}: {export} records {k} segments but {config['users'].get('count')} users; "
                           "not a segment export as icg users segment writes it")  # fmt: skip
    known = {segment_id(i) for i in range(k)}
    bad = sorted(set(frame["segment"].astype(str)) - known)
    if bad:
        raise SegmentError(f"{config_key}: {path} names segment(s) {bad[:3]} outside the export's {k} segments")
    return dict(zip(frame["user_id"].astype(str), frame["segment"].astype(str), strict=True)), [
        segment_id(i) for i in range(k)
    ]
