"""The DataModule's row sampler: a lazily computed, seeded shuffle, sharded across DDP ranks in O(1) memory.

ICG's stage-1 click model (Bian et al., EMNLP 2025) trains on every train positive of a PixelRec subset plus its
sampled negatives: 89M rows per epoch for Pixel1M, ~700M for Pixel8M. Materializing the epoch's permutation costs
4 bytes per row per process (2.8 GB for Pixel8M), and Lightning's ``DistributedSamplerWrapper`` around a custom
sampler holds the whole list again as Python ints on every rank. Here the permutation is a keyed bijection of
``[0, n)`` (a Feistel network with cycle walking, Black & Rogaway 2002, "Ciphers with arbitrary finite domains"):
any position's row is computed on demand from ``(seed, epoch)``, so each rank computes only its own shard, block by
block, and no process ever holds an index array (datasets of at most 65,536 rows use a plain permutation table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data.distributed import DistributedSampler

_ROUNDS = 6  # even (the part widths come back); Luby-Rackoff: 4 rounds of a good round function already suffice
_BLOCK = 1 << 16  # positions computed per numpy call; bounds the sampler's memory
_TABLE_MAX = 1 << 16  # shuffles up to this length use an explicit permutation table
# SplitMix64's finalizer constants (Steele, Lea & Flood 2014): a fast, well-mixing 64-bit round function
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


class FeistelPermutation:
    """A seeded pseudo-random bijection of ``[0, length)``, evaluated on any array of positions.

    Positions are ``b``-bit numbers (``2**b >= length``, ``b >= 2``) split into a high and a low part, mixed by a
    Feistel network keyed from ``key`` (each round maps ``(L, R)`` to ``(R, L ^ F(R))``; with parts of unequal width
    the widths swap every round, and an even number of rounds brings them back), then walked through the network
    again while they land outside ``[0, length)``: fewer than 2 passes on average, since ``2**b < 2 * length``.
    Memory is that of the positions given.

    Args:
        length: size of the permuted range.
        key: integers seeding the round keys (``(seed, epoch)`` for the DataModule).
    """

    def __init__(self, length: int, key: tuple[int, ...]) -> None:
        self.length = length
        bits = max(2, (length - 1).bit_length())
        self._widths = (bits - bits // 2, bits // 2)  # (high, low)
        self._keys = np.random.SeedSequence(key).generate_state(_ROUNDS, np.uint64)

    @staticmethod
    def _round_function(right: np.ndarray, key: np.uint64) -> np.ndarray:
        z = right + key  # uint64 arithmetic on arrays wraps modulo 2**64
        z *= _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
        return z

    def _network(self, x: np.ndarray) -> np.ndarray:
        high, low = self._widths
        left, right = x >> np.uint64(low), x & np.uint64((1 << low) - 1)
        for key in self._keys:  # (left: high bits, right: low bits) -> (right, left ^ F(right)), widths swapped
            left, right = right, left ^ (self._round_function(right, key) & np.uint64((1 << high) - 1))
            high, low = low, high
        return (left << np.uint64(low)) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (int64 array, each in ``[0, length)``) of the permuted order."""
        out = self._network(np.asarray(positions, np.uint64))
        outside = np.flatnonzero(out >= self.length)
        while len(outside):  # cycle walking: a bijection of the larger domain restricted to [0, length)
            out[outside] = self._network(out[outside])
            outside = outside[out[outside] >= self.length]
        return out.astype(np.int64)


def epoch_permutation(length: int, key: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """Positions -> rows of a seeded shuffle of ``[0, length)``: an explicit table up to 65,536 rows (512 KB, exactly
    uniform; a Feistel network over a few bits is measurably biased), a :class:`FeistelPermutation` beyond."""
    if length <= _TABLE_MAX:
        return np.random.default_rng(key).permutation(length).__getitem__
    return FeistelPermutation(length, key)


class EpochSampler(DistributedSampler):
    """This rank's rows of an epoch, shuffled by ``(seed, epoch)``, computed lazily; yields ``epoch * length + row``.

    Every rank applies the same permutation and takes positions ``rank, rank + world_size, ...`` of it, so the shards
    are disjoint and their union is every row once; with ``pad`` (training and validation) the positions run up to a
    multiple of ``world_size`` and the extra ones wrap around to the first rows, as in torch's
    ``DistributedSampler`` (without ``pad``, for prediction, shards differ in length by at most one, as in
    Lightning's ``UnrepeatedDistributedSampler``). With ``world_size`` 1 this is the single-process order. It *is*
    a ``DistributedSampler``, so Lightning does not wrap it (a wrapper would materialize the epoch's index list on
    every rank); Lightning calls :meth:`set_epoch` before every epoch. With ``shuffle``, the epoch rides in each
    index (``epoch * length + row``) so DataLoader workers draw that epoch's negatives without shared state;
    without it the sampler yields plain rows in order.

    Args:
        length: rows in the dataset.
        seed: base seed of the shuffle.
        shuffle: permute the rows every epoch (else positions map to themselves).
        rank: this process's rank.
        world_size: number of ranks.
        pad: pad every rank's shard to the same length (see above).
    """

    def __init__(
        self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        # a range stands in for the dataset: the base class only takes its length
        super().__init__(range(length), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.length, self.pad = length, pad
        if not pad:
            self.num_samples = len(range(rank, length, world_size))
            self.total_size = length

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.length == 0:
            return
        permutation = epoch_permutation(self.length, (self.seed, self.epoch)) if self.shuffle else None
        offset = self.epoch * self.length if self.shuffle else 0
        stop = self.rank + self.num_samples * self.num_replicas
        for start in range(self.rank, stop, _BLOCK * self.num_replicas):
            positions = np.arange(start, min(stop, start + _BLOCK * self.num_replicas), self.num_replicas)
            positions %= self.length  # padding wraps around to the first positions
            rows = permutation(positions) if permutation is not None else positions
            yield from (rows + offset).tolist()
