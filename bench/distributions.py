"""Index distributions, drawn with numpy (fast even for a 1,000,000-row Zipf).

Names are the keys of ``bench.config.DISTRIBUTIONS``:

- ``uniform``: every row equally likely.
- ``halves``: the collision study of RTB House's pytorch-fast-embedding: half the batch
  on one row, a quarter on a second, and so on (row k has probability 0.5^(k+1)); the
  rows are scattered.
- ``same``: every index is one row (the worst case for an atomic-add backward).
- ``hot20``: 80% uniform, 20% on one hot row.
- ``zipf<alpha>``: Zipf over the vocabulary, P(rank r) ~ r^-alpha, ranks scattered
  over the rows by a fixed permutation (FBGEMM's TBE benchmark uses alpha 1.15).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _zipf_cdf(vocab: int, alpha: float) -> np.ndarray:
    w = np.arange(1, vocab + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _scatter(rng: np.random.Generator, vocab: int, ranks: np.ndarray) -> np.ndarray:
    """Map ranks 0, 1, ... to distinct random rows, so hot rows are not neighbours."""
    top = int(ranks.max()) + 1
    if top * 4 >= vocab:
        rows = rng.permutation(vocab)
    else:
        rows = rng.choice(vocab, size=top, replace=False)
    return rows[ranks]


def sample(dist: str, n: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` int64 indices in ``[0, vocab)`` drawn from ``dist``."""
    if vocab < 1 or n < 0:
        raise ValueError(f"need vocab >= 1 and n >= 0, got vocab={vocab}, n={n}")
    if dist == "uniform":
        return rng.integers(0, vocab, size=n, dtype=np.int64)
    if dist == "same":
        return np.full(n, rng.integers(0, vocab), dtype=np.int64)
    if dist == "hot20":
        out = rng.integers(0, vocab, size=n, dtype=np.int64)
        out[rng.random(n) < 0.2] = rng.integers(0, vocab)
        return out
    if dist == "halves":
        ranks = np.minimum(rng.geometric(0.5, size=n) - 1, vocab - 1)
        return _scatter(rng, vocab, ranks).astype(np.int64)
    if dist.startswith("zipf"):
        alpha = float(dist[4:])
        ranks = np.searchsorted(_zipf_cdf(vocab, alpha), rng.random(n), side="right")
        return _scatter(rng, vocab, np.minimum(ranks, vocab - 1)).astype(np.int64)
    raise ValueError(f"unknown index distribution {dist!r}")


def hottest_share(indices: np.ndarray) -> float:
    """The share of the batch that falls on the most frequent row (1.0 for ``same``)."""
    if indices.size == 0:
        return 0.0
    return float(np.bincount(indices.ravel()).max()) / indices.size
