"""k-Same anonymisation of feature vectors (the CVAE study's ``src/anonymizer/ksame.py``, ``seeds.md`` §4.3).

The original's clustering, with its semantics kept: class-agnostic; the last N mod k samples are dropped; while
points remain, the unassigned point with the largest sum of distances to the other unassigned points starts a
cluster with its k - 1 nearest unassigned neighbours; every point is replaced by its cluster's centroid.

The original holds the N x N distance matrix and re-sums its rows every round (O(N^2) memory, O(N^3 / k)
time). Here each point's sum of distances to the unassigned points is kept in a vector (O(N d) memory, O(N^2 d)
time), the distances computed tile by tile in float64 from the Gram form of the centred features:

- the initial sums visit each pair once (symmetric block x block tiles);
- the distances to the points that left are subtracted from all sums in batches of ``_PENDING`` points (one
  efficient matrix product instead of one thin product per round); in between, the exact sums are kept only
  for the ``_TOP`` largest, which decide the next start as long as their best exceeds the (stale, hence upper
  bound) sum of every other point; otherwise the batch is applied at once and the argmax taken over all;
- assigned rows are compacted away as points leave, so a round costs one pass over the unassigned features.
"""

from __future__ import annotations

import numpy as np
import torch

_TOP = 1024  # unassigned points with the largest sums, whose exact sums are kept between batched updates
_PENDING = 256  # assigned points whose distances are subtracted from every sum in one matrix product


def _distances(
    a: torch.Tensor, sq_a: torch.Tensor, b: torch.Tensor, sq_b: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) from |a|^2 + |b|^2 - 2 a.b; float64 keeps them accurate to ~1e-12."""
    return torch.mm(a, b.T, out=out).mul_(-2).add_(sq_a[:, None]).add_(sq_b).clamp_(min=0).sqrt_()


def _k_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.argsort(values, stable=True)[:k]`` (ties by index) without sorting all of ``values``."""
    kth = torch.topk(values, k, largest=False).values.max()
    below = torch.nonzero(values < kth).squeeze(1)
    ties = torch.nonzero(values == kth).squeeze(1)[: k - len(below)]
    chosen = torch.cat([below, ties])
    return chosen[torch.argsort(values[chosen], stable=True)]


class _Sums:
    """Unassigned points (compacted rows of the centred features) and their sums of distances to each other."""

    def __init__(self, x: torch.Tensor, block: int) -> None:
        n, self.block = len(x), block
        self.x, self.ids = x, torch.arange(n)
        self.sq = torch.linalg.vector_norm(x, dim=1).square_()
        self.sums = torch.zeros(n, dtype=x.dtype)
        # One scratch buffer for every tile: repeated large temporaries fragment the heap and inflate the RSS.
        self._buffer = torch.empty(0, dtype=x.dtype)
        self._top_buffer = torch.empty(min(n, _TOP), x.shape[1], dtype=x.dtype)
        for s in range(0, n, block):
            rows, sq_rows = x[s : s + block], self.sq[s : s + block]
            for t in range(s, n, block):
                cols = x[t : t + block]
                dist = _distances(rows, sq_rows, cols, self.sq[t : t + block], self._scratch(len(rows), len(cols)))
                if t == s:
                    dist.fill_diagonal_(0)
                else:
                    self.sums[t : t + block] += dist.sum(0)
                self.sums[s : s + block] += dist.sum(1)
        self.free = torch.ones(n, dtype=torch.bool)
        self.n_free = n
        self.pending: list[torch.Tensor] = []
        self._track()

    def _scratch(self, rows: int, cols: int) -> torch.Tensor:
        """A (rows, cols) view of the scratch buffer, grown when too small."""
        if len(self._buffer) < rows * cols:
            self._buffer = torch.empty(rows * cols, dtype=self.x.dtype)
        return self._buffer[: rows * cols].view(rows, cols)

    def _track(self) -> None:
        """Keep the exact sums of the ``_TOP`` largest; ``bound`` is the largest sum among the others."""
        if self.n_free > _TOP:
            values, top = torch.topk(torch.where(self.free, self.sums, -torch.inf), _TOP + 1)
            self.bound, top = values[-1].item(), torch.sort(top[:-1]).values
        else:
            self.bound, top = -torch.inf, torch.nonzero(self.free).squeeze(1)
        self.top, self.top_sq = top, self.sq[top]
        self.top_x = torch.index_select(self.x, 0, top, out=self._top_buffer[: len(top)])
        self.top_sums, self.top_free = self.sums[top].clone(), torch.ones(len(top), dtype=torch.bool)
        self.top_pos = torch.full((len(self.x),), -1)
        self.top_pos[top] = torch.arange(len(top))

    def flush(self) -> None:
        """Subtract the distances to the pending points from every sum; compact the rows; track anew."""
        gone = torch.cat(self.pending) if self.pending else torch.zeros(0, dtype=torch.long)
        gone_x, gone_sq = self.x[gone], self.sq[gone]
        self.pending = []
        if 4 * self.n_free <= 3 * len(self.x):
            keep = torch.nonzero(self.free).squeeze(1)
            for s in range(0, len(keep), self.block):  # in place: keep[i] >= i
                chunk = keep[s : s + self.block]
                self.x[s : s + len(chunk)] = torch.index_select(
                    self.x, 0, chunk, out=self._scratch(len(chunk), self.x.shape[1])
                )
            self.x = self.x[: len(keep)]
            self.sq, self.sums, self.ids = self.sq[keep], self.sums[keep], self.ids[keep]
            self.free = torch.ones(len(keep), dtype=torch.bool)
        if len(gone):
            for s in range(0, len(self.x), self.block):
                rows = self.x[s : s + self.block]
                dist = _distances(
                    rows, self.sq[s : s + self.block], gone_x, gone_sq, self._scratch(len(rows), len(gone))
                )
                self.sums[s : s + self.block] -= dist.sum(1)
        self._track()

    def start(self) -> int:
        """Row of the unassigned point with the largest sum (the first such row on ties)."""
        if self.top_free.any():
            best = torch.argmax(torch.where(self.top_free, self.top_sums, -torch.inf)).item()
            if self.top_sums[best].item() > self.bound:
                return int(self.top[best])
        if self.pending:
            self.flush()
        return int(torch.argmax(torch.where(self.free, self.sums, -torch.inf)))

    def nearest(self, start: int, k: int) -> torch.Tensor:
        """Rows of the k unassigned points nearest to ``start`` (itself first), ties by index."""
        dist = _distances(self.x, self.sq, self.x[start][None], self.sq[start][None])[:, 0]
        dist[start] = 0
        return _k_smallest(dist.masked_fill_(~self.free, torch.inf), k)

    def remove(self, rows: torch.Tensor) -> None:
        self.free[rows] = False
        self.n_free -= len(rows)
        in_top = self.top_pos[rows]
        self.top_free[in_top[in_top >= 0]] = False
        if not self.n_free:
            return
        self.pending.append(rows)
        self.top_sums -= _distances(self.top_x, self.top_sq, self.x[rows], self.sq[rows]).sum(1)
        if sum(len(p) for p in self.pending) >= _PENDING:
            self.flush()


def ksame_clusters(features: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Cluster index (N - N mod k,) of every kept sample; clusters are numbered in the order they form.

    Args:
        features: (N, D) feature vectors.
        k: cluster size (2 <= k <= N).
        block: distances are computed in tiles of at most block x block (memory O(N D + block^2)).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"k-Same needs (N, D) features; got shape {x.shape}")
    if k < 2 or k > len(x):
        raise ValueError(f"k must lie in [2, N={len(x)}]; got k={k}")
    n = len(x) - len(x) % k
    if not np.isfinite(x).all():
        raise ValueError("k-Same features contain NaN or infinite values")
    data = torch.from_numpy(np.array(x[:n], dtype=np.float64))
    data -= data.mean(0)  # distances are translation invariant; centring keeps the Gram form accurate
    state = _Sums(data, block)
    cluster = np.full(n, -1, dtype=np.int64)
    for c in range(n // k):
        rows = state.nearest(state.start(), k)
        cluster[state.ids[rows].numpy()] = c
        state.remove(rows)
    return cluster


def ksame(features: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-Same anonymised features and their labels (each sample keeps its own label, as the original).

    Returns (N - N mod k, D) centroids in the input dtype and the kept labels.
    """
    x = np.asarray(features)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} feature vectors but {len(labels)} labels")
    cluster = ksame_clusters(x, k)
    kept = x[: len(cluster)].astype(np.float64)
    centroids = np.zeros((cluster.max() + 1, x.shape[1]))
    np.add.at(centroids, cluster, kept)
    centroids /= k
    return centroids[cluster].astype(x.dtype), np.asarray(labels)[: len(cluster)]
