"""Deterministic per-user time-ordered splits, click histories and negative sampling for implicit feedback.

The split follows PixelRec's benchmark protocol (each user's last interactions are held out; Cheng et al., 2023)
as used for the stage-1 preference model of ICG (Bian et al., EMNLP 2025): per user, interactions in time order
(ties broken by item id, then by file row), the last ``holdout`` go to test, the ``holdout`` before them to val,
the rest to train. A user with fewer than ``2 * holdout + 1`` interactions stays entirely in train (nothing would
be left to learn them from otherwise). Everything is vectorised numpy over int32 codes so a Pixel1M-sized log
(~20M interactions) splits in seconds; :func:`time_order` sorts it with a radix-style pass of packed 64-bit keys
(numpy's vectorised value sort) instead of ``np.lexsort``, which is about 5x slower at that size.

Negatives for implicit data are drawn per row from a generator seeded by ``(seed, stream, epoch, row)``: the same
row gets the same negatives in every process and DataLoader worker, without storing them, and never a user's own
positive (any click of that user in the whole dataset, held-out ones included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
PARTS = {"train": TRAIN, "val": VAL, "test": TEST}
_MAX_DRAWS = 64  # rejection rounds before declaring a user unsamplable (only hit when a user clicked ~every item)


# rows per step when building packed keys: ~1 MB temporaries stay in the CPU's cache (ordering 158M rows took
# 16.5-17.8 s with chunks of 2**16-2**18 rows against 19.3-23.7 s with 2**22, benchmarks/datamodule_scale.py)
CHUNK = 1 << 17


def _stable_pass(
    key: Callable[[np.ndarray], np.ndarray], order: np.ndarray | None, n: int, keys_out: np.ndarray | None = None
) -> np.ndarray:
    """One least-significant-digit pass: ``order`` re-sorted stably by ``key(order)``, a uint32 key per row.

    The key goes into the high 32 bits and the current position into the low 32 bits of one uint64, so a plain
    (vectorised, unstable) value sort of distinct numbers is a stable sort by key; the low bits give the permutation.
    Keys are computed chunk by chunk, so the pass holds the packed array and the orders and nothing row-sized else.
    ``keys_out`` (length n), when given, receives the keys in their sorted order (the high halves, for free).
    """
    packed = np.empty(n, np.uint64)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        rows = np.arange(start, stop) if order is None else order[start:stop]
        chunk = key(rows).astype(np.uint64)
        chunk <<= np.uint64(32)
        chunk |= np.arange(start, stop, dtype=np.uint64)
        packed[start:stop] = chunk
    packed.sort()
    step = np.empty(n, np.int32 if n < 2**31 else np.int64)
    for start in range(0, n, CHUNK):
        if keys_out is not None:
            keys_out[start : start + CHUNK] = packed[start : start + CHUNK] >> np.uint64(32)
        np.bitwise_and(packed[start : start + CHUNK], np.uint64(0xFFFFFFFF), out=packed[start : start + CHUNK])
        step[start : start + CHUNK] = packed[start : start + CHUNK]
    del packed
    return step if order is None else order[step]


def time_order(user: np.ndarray, timestamp: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Rows sorted by (user, timestamp, item, row): the order of :func:`split_parts` and of duplicate detection.

    Equal to ``np.lexsort((item, timestamp, user))``; see :func:`time_order_columns`.

    Args:
        user: non-negative int codes (< 2**32) per row.
        timestamp: int64 per row, any range.
        item: non-negative int codes (< 2**32) per row.

    Returns:
        row indices, int32 below 2**31 rows (half the memory of int64 at Pixel8M's 158M rows), else int64.
    """
    return time_order_columns(user, timestamp, item)[0]


def time_order_columns(
    user: np.ndarray, timestamp: np.ndarray, item: np.ndarray, parts: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`time_order`, with the user and timestamp columns in that order (which its callers gather anyway).

    Stable passes over 32-bit keys, each one sort of packed uint64s: the low (and, for spans of 2**32 s or more, the
    high) half of the timestamp's offset from its minimum, then the user; the user pass hands back the sorted users.
    That gives (user, timestamp, row); the item decides only between rows of one user with one timestamp, so only
    those runs (rare: a user rarely clicks twice in one second) are re-sorted by (item, row) instead of a whole pass.

    The rows are first split into ``parts`` ranges of users of about equal size (default: one per core, up to 8, for
    logs of millions of rows), each ordered in its own thread (numpy releases the GIL while it gathers and sorts);
    the ranges follow each other in the result, so the order is the same for any ``parts``.
    """
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int32), user[:0], timestamp[:0]
    if n >= 2**32:  # positions no longer fit the low half of the packed key
        order = np.lexsort((item, timestamp, user)).astype(np.int64)
        return order, user[order], timestamp[order]
    if parts is None:
        parts = min(cores(), 8) if n >= PARALLEL_ROWS else 1
    order = np.empty(n, np.int32 if n < 2**31 else np.int64)
    users = np.empty(n, user.dtype)
    times = np.empty(n, timestamp.dtype)
    low, high = int(timestamp.min()), int(timestamp.max())
    bounds, below = user_bounds(user, parts) if parts > 1 else ([], [])
    cuts = [None, *bounds, None]  # range k holds the users in [cuts[k], cuts[k + 1])
    starts = [0, *below, n]  # and the sorted positions [starts[k], starts[k + 1])

    def order_part(k: int) -> None:
        at = slice(starts[k], starts[k + 1])
        rows = None if len(bounds) == 0 else rows_of_users(user, cuts[k], cuts[k + 1])
        order[at] = _time_order_rows(user, timestamp, rows, (low, high), users[at], times[at])
        _order_ties(order[at], users[at], times[at], item)

    if len(bounds) == 0:
        order_part(0)
    else:
        with ThreadPoolExecutor(len(bounds) + 1) as pool:
            list(pool.map(order_part, range(len(bounds) + 1)))  # list(): a thread's exception is raised here
    return order, users, times


PARALLEL_ROWS = 1 << 22  # below this a single thread orders the log (thread start-up and the split cost more)


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def user_bounds(user: np.ndarray, parts: int) -> tuple[list[int], list[int]]:
    """User codes that cut the log into ``parts`` consecutive user ranges of about n/parts rows each (from every 16th
    row; fewer ranges when one user holds more than a range's share), and the number of rows below each cut."""
    sample = user[:: 16 if len(user) >= 1 << 20 else 1]
    cumulative = np.cumsum(np.bincount(sample))
    bounds = np.unique(np.searchsorted(cumulative, np.arange(1, parts) * (len(sample) / parts)) + 1)
    cuts, below = [], []
    for bound in bounds[bounds < len(cumulative)].tolist():
        rows = int(np.count_nonzero(user < bound))  # exact; a cut from the sample that leaves a range empty goes
        if (below[-1] if below else 0) < rows < len(user):
            cuts.append(bound)
            below.append(rows)
    return cuts, below


def rows_of_users(user: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    """The rows (ascending) whose user code is in [lo, hi) (None: unbounded), int32 below 2**31 rows."""
    inside = user >= lo if lo is not None else user < hi
    if lo is not None and hi is not None:
        inside &= user < hi
    return np.flatnonzero(inside).astype(np.int32 if len(user) < 2**31 else np.int64, copy=False)


def _time_order_rows(
    user: np.ndarray,
    timestamp: np.ndarray,
    rows: np.ndarray | None,
    span: tuple[int, int],
    users: np.ndarray,
    times: np.ndarray,
) -> np.ndarray:
    """``rows`` (None: all) sorted by (user, timestamp, row); ``users`` and ``times`` receive their columns.

    Args:
        span: the smallest and largest timestamp of the whole log.
    """
    n = len(user) if rows is None else len(rows)
    low, high = span
    # the offset from the minimum, exact in uint64 (the subtraction wraps mod 2**64; the true offset is below 2**64)
    base = np.asarray(low, np.int64).view(np.uint64)
    offset = lambda at: timestamp[at].view(np.uint64) - base  # noqa: E731
    narrow = high - low < 2**32  # seconds within 136 years: one pass, whose keys are the offsets themselves
    offsets = np.empty(n, np.uint32) if narrow else None
    order = _stable_pass(lambda at: offset(at).astype(np.uint32), rows, n, keys_out=offsets)  # the low 32 bits
    if not narrow:
        order = _stable_pass(lambda at: (offset(at) >> np.uint64(32)).astype(np.uint32), order, n)
    step = _stable_pass(lambda at: user[order[at]], None, n, keys_out=users)  # positions in `order`
    if narrow:  # a 4-byte gather of the sorted offsets instead of an 8-byte one of the timestamps
        np.add(offsets[step], np.int64(low), out=times, casting="unsafe")
        del offsets
        return order[step]
    order = order[step]
    np.take(timestamp, order, out=times)
    return order


def _order_ties(order: np.ndarray, users: np.ndarray, times: np.ndarray, item: np.ndarray) -> None:
    """Re-sort, in place, the runs of ``order`` that share a user and a timestamp by (item, row)."""
    tie = np.zeros(len(order), bool)  # tie[i]: position i has the user and timestamp of position i - 1
    np.logical_and(users[1:] == users[:-1], times[1:] == times[:-1], out=tie[1:])
    if tie.any():
        member = tie.copy()
        member[:-1] |= tie[1:]  # every position of a tied run
        positions = np.flatnonzero(member)
        run = np.cumsum(~tie[positions])  # a run starts where a position is not tied to the one before
        rows = order[positions]  # within a run in row order already; lexsort is stable
        order[positions] = rows[np.lexsort((item[rows], run))]


def per_user_offsets(user: np.ndarray, num_users: int) -> np.ndarray:
    """Start offset of each user's block in a user-sorted array, plus the total at the end (length num_users+1)."""
    counts = np.bincount(user, minlength=num_users)
    offsets = np.zeros(num_users + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def split_parts(
    user: np.ndarray, num_users: int, holdout: int, offsets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The part (TRAIN/VAL/TEST) of each row of a (user, time)-sorted log, and each user's end of train.

    Args:
        user: int user index per row, sorted by (user, time).
        num_users: number of users.
        holdout: interactions per user held out for test, and again for val.
        offsets: :func:`per_user_offsets` of ``user`` when the caller has it already.

    Returns:
        ``(part int8 per row, train_end int64 per user)`` where ``train_end[u]`` is the sorted position just after
        user ``u``'s last train row.
    """
    offsets = per_user_offsets(user, num_users) if offsets is None else offsets
    counts = np.diff(offsets)
    eligible = counts >= 2 * holdout + 1 if holdout > 0 else np.zeros(num_users, bool)
    train_end = offsets[1:] - np.where(eligible, 2 * holdout, 0)
    part = np.zeros(len(user), np.int8)
    ends = offsets[1:][eligible]  # held-out rows are the last 2 * holdout of each eligible user: index them directly
    for back in range(holdout):
        part[ends - 1 - back] = TEST
        part[ends - 1 - holdout - back] = VAL
    return part, train_end


class InteractionLog:
    """Interactions sorted by (user, time) with their split and what histories need.

    Args:
        user: int32 user index per row, already sorted by (user, timestamp, item, file row).
        item: int32 item index per row (same order).
        click: int8 0/1 per row.
        timestamp: int64 per row.
        num_users: size of the user vocabulary.
        holdout: see :func:`split_parts`.
    """

    def __init__(
        self,
        user: np.ndarray,
        item: np.ndarray,
        click: np.ndarray,
        timestamp: np.ndarray,
        num_users: int,
        holdout: int,
    ) -> None:
        self.user, self.item, self.click, self.timestamp = user, item, click, timestamp
        self.num_users = num_users
        self.holdout = holdout
        self.user_start = per_user_offsets(user, num_users)
        self.part, self.train_end = split_parts(user, num_users, holdout, self.user_start)
        index = np.int32 if len(user) < 2**31 else np.int64
        # clicks before sorted position p = click_cum[p]; the clicked items themselves, in the same order
        self.click_cum = np.zeros(len(user) + 1, index)
        np.cumsum(click, out=self.click_cum[1:])
        clicked = click.astype(bool)
        self.every_click = bool(clicked.all())  # implicit data: then masks by click are skipped
        self.click_items = item if self.every_click else item[clicked]

    def __len__(self) -> int:
        return len(self.user)

    def positions(self, part: int, clicks_only: bool = False) -> np.ndarray:
        """Sorted positions of the rows in ``part`` (optionally only clicks)."""
        mask = self.part == part
        if clicks_only and not self.every_click:
            mask &= self.click.astype(bool)
        return np.flatnonzero(mask)

    def history(self, position: int, target: int, length: int) -> np.ndarray:
        """The user's latest train clicks before ``position`` (newest first), without ``target``; -1 padded.

        A train row sees the clicks before it in time; a held-out row sees all of its user's train clicks and
        nothing held out, so no history ever contains the future.
        """
        out = np.full(length, -1, np.int64)
        if length == 0:
            return out
        user = self.user[position]
        first = int(self.click_cum[self.user_start[user]])
        stop = int(self.click_cum[min(position, self.train_end[user])])
        start = max(first, stop - 2 * length)  # a little slack for repeats of the target
        window = self.click_items[start:stop][::-1]
        window = window[window != target]
        if len(window) < length and start > first:  # many repeats of the target: look further back
            window = self.click_items[first:stop][::-1]
            window = window[window != target]
        window = window[:length]
        out[: len(window)] = window
        return out

    def histories(self, positions: np.ndarray, targets: np.ndarray, length: int) -> np.ndarray:
        """:meth:`history` for many rows (tests, analysis); ``len(positions) x length``."""
        return np.stack([self.history(int(p), int(t), length) for p, t in zip(positions, targets, strict=True)])

    def counts(self) -> dict[str, int]:
        """Interactions and clicks per part, and users with held-out rows."""
        rows = np.bincount(self.part, minlength=len(PARTS))
        clicks = rows if self.every_click else np.bincount(self.part[self.click.astype(bool)], minlength=len(PARTS))
        out = {}
        for name, part in PARTS.items():
            out[f"{name}_interactions"] = int(rows[part])
            out[f"{name}_clicks"] = int(clicks[part])
        tested = self.user[self.part == TEST]  # sorted by user: count the distinct ones by their changes
        out["evaluated_users"] = int((np.diff(tested) != 0).sum()) + 1 if len(tested) else 0
        return out


def sorted_pairs(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    """``user * num_items + item`` as int64, sorted.

    A log in user order (the DataModule's) is cut where the user changes into one part per core, each built and
    sorted in its own thread; the parts then follow each other. Any other order is caught at the cuts and sorted
    whole.
    """
    n = len(user)
    keys = np.empty(n, np.int64)
    parts = min(cores(), 8) if n >= PARALLEL_ROWS else 1
    cuts = [0]
    for k in range(1, parts):
        at = max(k * n // parts, cuts[-1] + 1)
        if at < n:  # move to where a new user starts (a user's pairs stay in one part)
            differs = user[at:] != user[at - 1]
            at = at + int(differs.argmax()) if differs.any() else n
        if at < n:
            cuts.append(at)
    cuts.append(n)

    def build(k: int) -> None:
        part = slice(cuts[k], cuts[k + 1])
        np.multiply(user[part], num_items, out=keys[part], dtype=np.int64)
        keys[part] += item[part]
        keys[part].sort()

    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        list(pool.map(build, range(len(cuts) - 1)))
    if any(keys[at - 1] > keys[at] for at in cuts[1:-1]):
        keys.sort()  # the log was not in user order
    return keys


class NegativeSampler:
    """Draws items a user never clicked, uniformly or by popularity, from a per-row seeded generator.

    Args:
        user: user index of every positive (click) in the dataset.
        item: item index of every positive.
        num_items: size of the item vocabulary.
        distribution: ``uniform`` or ``popularity`` (proportional to 1 + the item's count in ``popularity_items``).
        popularity_items: items whose counts define popularity (the train positives); required for popularity.
    """

    def __init__(
        self,
        user: np.ndarray,
        item: np.ndarray,
        num_items: int,
        distribution: str = "uniform",
        popularity_items: np.ndarray | None = None,
    ) -> None:
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling must be 'uniform' or 'popularity', got {distribution!r}")
        self.num_items = num_items
        keys = sorted_pairs(user, item, num_items)  # sorted (user, item) positive pairs (158M rows: 1.3 GB)
        if len(keys):
            first = np.empty(len(keys), bool)
            first[0] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            if not first.all():
                keys = keys[first]
            del first
        self.keys = keys
        self.max_positives = 0
        if len(keys):  # positives per user: where each user's block of keys ends
            ends = np.searchsorted(keys, (np.arange(int(keys[-1] // num_items) + 1, dtype=np.int64) + 1) * num_items)
            self.max_positives = int(np.diff(ends, prepend=0).max())
        self.cdf = None
        if distribution == "popularity":
            counts = np.bincount(popularity_items if popularity_items is not None else item, minlength=num_items)
            self.cdf = np.cumsum(counts + 1.0)  # +1: an item nobody clicked in train can still be a negative
            self.cdf /= self.cdf[-1]

    def is_positive(self, user: np.ndarray | int, item: np.ndarray | int) -> np.ndarray:
        """Whether each (user, item) pair is a positive of the dataset."""
        keys = np.asarray(user, np.int64) * self.num_items + np.asarray(item, np.int64)
        at = np.searchsorted(self.keys, keys)
        return (at < len(self.keys)) & (self.keys[np.minimum(at, len(self.keys) - 1)] == keys)

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(0, self.num_items, count)
        return np.minimum(np.searchsorted(self.cdf, rng.random(count), side="right"), self.num_items - 1)

    def sample(self, user: int, count: int, rng: np.random.Generator, distinct: bool = False) -> np.ndarray:
        """``count`` negatives of ``user`` (int64); ``distinct`` makes them pairwise different (eval candidates)."""
        found = np.zeros(0, np.int64)
        for _ in range(_MAX_DRAWS):
            draw = self._draw(rng, 2 * count + 4)
            draw = draw[~self.is_positive(user, draw)]
            found = np.concatenate([found, draw])
            if distinct:
                _, first = np.unique(found, return_index=True)
                found = found[np.sort(first)]
            if len(found) >= count:
                return found[:count]
        raise ValueError(
            f"cannot sample {count} {'distinct ' if distinct else ''}negatives for user index {user}: "
            f"they clicked {int(self.is_positive(user, np.arange(self.num_items)).sum())} of {self.num_items} items; "
            "lower negatives_per_positive / eval_candidates"
        )


def row_rng(seed: int, stream: int, epoch: int, row: int) -> np.random.Generator:
    """The generator of one row's negatives: identical in every process for the same (seed, stream, epoch, row)."""
    return np.random.default_rng((seed, stream, epoch, row))
