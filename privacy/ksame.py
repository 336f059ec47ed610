"""k-Same anonymisation of feature vectors (the CVAE study's ``src/anonymizer/ksame.py``, ``seeds.md`` §4.3).

The original's clustering, with its semantics kept: class-agnostic; the last N mod k samples are dropped; while
points remain, the unassigned point with the largest sum of distances to the other unassigned points starts a
cluster with its k - 1 nearest unassigned neighbours; every point is replaced by its cluster's centroid.

Exact rule (what is guaranteed). Distances are float64 Euclidean distances from the differences of the float64
copy of the features, r_ij = sqrt(sum_d (x_id - x_jd)^2) (``torch.cdist`` without its Gram-form shortcut: the
same summation order for every pair, so identical rows are at distance exactly 0 from each other and at equal
distances from every row; float32 inputs differ exactly in float64 unless two values lie > 28 binades apart).
On integer or coarsely quantised features (small enough that the squares add up exactly) every true tie of
distances, or of sums of distances with the same multiset of terms, is an exact tie here.

- Start: the unassigned i with the largest S_i = fsum_j r_ij over the unassigned j (``math.fsum``: the correctly
  rounded sum, independent of the order, so duplicated rows, or mirror images on a grid, have equal S), ties
  by the lowest index (as ``np.argmax``). The original sums a row of its matrix in index order, which can break
  such ties by rounding.
- Cluster: the start and the k - 1 unassigned j with the smallest r_sj, ties by the lowest index (as a stable
  argsort); the start is always in its own cluster (it is the lowest index among its identical copies anyway).

The original holds the N x N distance matrix and re-sums its rows every round (O(N^2) memory, O(N^3 / k)
time). Here each point's sum of distances to the unassigned points is kept in a vector (O(N d) memory, O(N^2 d)
time), the distances computed tile by tile in float64 from the Gram form |a|^2 + |b|^2 - 2 a.b of the centred
features (centred tile by tile; the stored copy stays uncentred so that differences stay exact):

- the initial sums visit each pair once (symmetric block x block tiles);
- the distances to the points that left are subtracted from all sums in batches of ``_PENDING`` points (one
  efficient matrix product instead of one thin product per round); in between, the sums are kept current only
  for the ``_TOP`` largest, which decide the next start as long as their best exceeds the (stale, hence upper
  bound) sum of every other point by the error margin; otherwise the batch is applied at once;
- assigned rows are compacted away as points leave, so a round costs one pass over the unassigned features.

Gram-form sums are not exact (a Gram distance between identical rows is ~2^-25 |a|, not 0), so they only
shortlist the start. With u = 2^-53 and g(n) = n u / (1 - n u), a dot product in any summation order is off by
at most g(d) |a| |b| (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1), so a Gram
squared distance of centred rows a, b is off from the true squared distance rho^2 of the input rows by at most
delta = g(d + 6) (2 max|a|)^2 (centring and the three additions included), and a Gram distance from rho by at
most |D - rho^2| / rho <= delta / rho, and never by more than slack = sqrt(delta). With nu = 1000 slack, a
pair whose Gram distance at the start is >= 2 nu has rho >= nu, so each evaluation of it errs by <= slack / 1000;
the others ("near", at most n_near per point, counted at the start) by <= slack. r_ij = rho (1 +- g(d + 3)).
A running sum adds each term once and subtracts it at most once, with at most 2N roundings each, so it differs
from S_i by at most e = 2 (n_near slack + N slack / 1000) + (3 g(2N) + 2 g(d + 3)) (N max|a| + sum |a|).
Every unassigned point whose running sum lies within 2 e of the largest (a margin of 4 e, for safety) is a
candidate; if there are several, their S_i are computed exactly (one O(M d) pass over the M stored rows per
distinct candidate) and compared. The neighbours are always ranked on the exact r_sj, see ``_Sums.nearest``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_TOP = 1024  # unassigned points with the largest sums, whose current sums are kept between batched updates
_PENDING = 256  # assigned points whose distances are subtracted from every sum in one matrix product


def _distances(
    a: torch.Tensor, sq_a: torch.Tensor, b: torch.Tensor, sq_b: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) from |a|^2 + |b|^2 - 2 a.b (Gram form, float64; see the bound above)."""
    return torch.mm(a, b.T, out=out).mul_(-2).add_(sq_a[:, None]).add_(sq_b).clamp_(min=0).sqrt_()


def _gamma(n: int) -> float:
    """Higham's g(n) = n u / (1 - n u) for float64 (u = 2^-53)."""
    u = 2.0**-53
    return n * u / (1 - n * u)


def _k_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.argsort(values, stable=True)[:k]`` (ties by index) without sorting all of ``values``."""
    kth = torch.topk(values, k, largest=False).values.max()
    below = torch.nonzero(values < kth).squeeze(1)
    ties = torch.nonzero(values == kth).squeeze(1)[: k - len(below)]
    chosen = torch.cat([below, ties])
    return chosen[torch.argsort(values[chosen], stable=True)]


class _Sums:
    """Unassigned points (compacted rows of the uncentred features) and their sums of distances to each other."""

    def __init__(self, x: torch.Tensor, block: int) -> None:
        (n, d), self.block = x.shape, block
        self.x, self.ids, self.mean = x, torch.arange(n), x.mean(0)
        # Scratch buffers reused by every tile: repeated large temporaries fragment the heap and inflate the RSS.
        # The rows buffer holds a centred row tile while sums are updated and the centred top rows in between.
        self._buffer = torch.empty(0, dtype=x.dtype)
        self._rows_buffer = torch.empty(max(min(n, block), min(n, _TOP)) * d, dtype=x.dtype)
        cols_buffer = torch.empty(min(n, block) * d, dtype=x.dtype)  # initial sums only
        self.sq = torch.cat([self._centred(x[s : s + block]).square_().sum(1) for s in range(0, n, block)])
        norms = self.sq.sqrt()
        self.max_norm, self.mean_norm = norms.max().item(), torch.linalg.vector_norm(self.mean).item()
        slack = math.sqrt(_gamma(d + 6)) * 2 * self.max_norm  # sqrt(delta): any Gram distance's error
        near = torch.zeros(n, dtype=x.dtype)  # pairs closer than 2 nu = 2000 slack (Gram distance), counted
        self.sums = torch.zeros(n, dtype=x.dtype)
        for s in range(0, n, block):
            rows, sq_rows = self._centred(x[s : s + block]), self.sq[s : s + block]
            for t in range(s, n, block):
                cols = rows if t == s else self._centred(x[t : t + block], cols_buffer)
                dist = _distances(rows, sq_rows, cols, self.sq[t : t + block], self._scratch(len(rows), len(cols)))
                if t == s:
                    dist.fill_diagonal_(0)
                if t != s:
                    self.sums[t : t + block] += dist.sum(0)
                self.sums[s : s + block] += dist.sum(1)
                dist.lt_(2000 * slack)  # 1.0 for a near pair (in place: a bool tile's sum would cast a copy)
                if t != s:
                    near[t : t + block] += dist.sum(0)
                near[s : s + block] += dist.sum(1)
        # e (module docstring): near pairs err by <= slack, the others by <= delta / nu = slack / 1000.
        rounding = (3 * _gamma(2 * n) + 2 * _gamma(d + 3)) * (n * self.max_norm + norms.sum().item())
        error = 2 * (near.max().item() * slack + n * slack / 1000) + rounding
        self.margin = 2 * 2 * error  # candidates lie within 2 e of the largest running sum; doubled for safety
        self.free = torch.ones(n, dtype=torch.bool)
        self.n_free = n
        self.pending: list[torch.Tensor] = []
        self._track()

    def _centred(self, rows: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """``rows - mean`` in a view of ``buffer`` (the rows buffer by default; at most ``block`` rows)."""
        buffer = self._rows_buffer if buffer is None else buffer
        return torch.sub(rows, self.mean, out=buffer[: rows.numel()].view(rows.shape))

    def _scratch(self, rows: int, cols: int) -> torch.Tensor:
        """A (rows, cols) view of the scratch buffer, grown when too small."""
        if len(self._buffer) < rows * cols:
            self._buffer = torch.empty(rows * cols, dtype=self.x.dtype)
        return self._buffer[: rows * cols].view(rows, cols)

    def _track(self) -> None:
        """Keep the current sums of the ``_TOP`` largest; ``bound`` is the largest sum among the others."""
        if self.n_free > _TOP:
            values, top = torch.topk(torch.where(self.free, self.sums, -torch.inf), _TOP + 1)
            self.bound, top = values[-1].item(), torch.sort(top[:-1]).values
        else:
            self.bound, top = -torch.inf, torch.nonzero(self.free).squeeze(1)
        self.top, self.top_sq = top, self.sq[top]
        out = self._rows_buffer[: len(top) * self.x.shape[1]].view(len(top), -1)
        self.top_x = torch.index_select(self.x, 0, top, out=out).sub_(self.mean)
        self.top_sums, self.top_free = self.sums[top].clone(), torch.ones(len(top), dtype=torch.bool)
        self.top_pos = torch.full((len(self.x),), -1)
        self.top_pos[top] = torch.arange(len(top))

    def flush(self) -> None:
        """Subtract the distances to the pending points from every sum; compact the rows; track anew."""
        gone = torch.cat(self.pending) if self.pending else torch.zeros(0, dtype=torch.long)
        gone_x, gone_sq = self.x[gone].sub_(self.mean), self.sq[gone]
        self.pending = []
        if 4 * self.n_free <= 3 * len(self.x):
            keep = torch.nonzero(self.free).squeeze(1)
            for s in range(0, len(keep), self.block):  # in place: keep[i] >= i
                chunk = keep[s : s + self.block]
                rows = self._rows_buffer[: len(chunk) * self.x.shape[1]].view(len(chunk), -1)
                self.x[s : s + len(chunk)] = torch.index_select(self.x, 0, chunk, out=rows)
            self.x = self.x[: len(keep)]
            self.sq, self.sums, self.ids = self.sq[keep], self.sums[keep], self.ids[keep]
            self.free = torch.ones(len(keep), dtype=torch.bool)
        if len(gone):
            for s in range(0, len(self.x), self.block):
                rows = self._centred(self.x[s : s + self.block])
                dist = _distances(
                    rows, self.sq[s : s + self.block], gone_x, gone_sq, self._scratch(len(rows), len(gone))
                )
                self.sums[s : s + self.block] -= dist.sum(1)
        self._track()

    def exact(self, rows: list[int] | None, centres: list[int]) -> torch.Tensor:
        """(len(rows), len(centres)) float64 distances of ``rows`` (None: every stored row) to ``centres``.

        ``torch.cdist`` without its Gram-form shortcut: sqrt(sum_d (x_id - x_cd)^2) from the differences, in the
        same order for every pair (identical rows get identical distances; a pair either way round the same).
        """
        x = self.x if rows is None else self.x[rows]
        return torch.cdist(x, self.x[centres], compute_mode="donot_use_mm_for_euclid_dist")

    def choose(self, sums: torch.Tensor, rows: torch.Tensor) -> int:
        """The row with the largest exact sum (the first on ties) among ``rows`` within the margin of the best.

        Identical rows have identical exact sums, so S is computed once per distinct candidate row.
        """
        candidates = torch.sort(rows[sums >= sums.max() - self.margin]).values
        if len(candidates) == 1:
            return int(candidates[0])
        _, group = torch.unique(self.x[candidates], dim=0, return_inverse=True)
        first: dict[int, int] = {}  # rows ascend, so each group of identical rows is represented by its first
        for row, g in zip(candidates.tolist(), group.tolist(), strict=True):
            first.setdefault(g, row)
        distinct = sorted(first.values())
        if len(distinct) == 1:
            return distinct[0]
        dist = self.exact(None, distinct)[self.free]
        exact = [math.fsum(dist[:, i].tolist()) for i in range(len(distinct))]  # correctly rounded, order-free
        return distinct[exact.index(max(exact))]  # the first maximum: the lowest row

    def start(self) -> int:
        """Row of the unassigned point with the largest exact sum S (the first such row on ties)."""
        if self.top_free.any():
            sums = self.top_sums[self.top_free]
            if sums.max().item() - self.margin > self.bound:
                return self.choose(sums, self.top[self.top_free])
        if self.pending:
            self.flush()
        return self.choose(self.sums[self.free], torch.nonzero(self.free).squeeze(1))

    def nearest(self, start: int, k: int) -> torch.Tensor:
        """Rows of the start and its k - 1 unassigned points nearest on exact distances (start first), ties by index.

        A Gram pass (one matrix-vector product) shortlists every row whose squared distance could be among the k
        smallest: it is off by at most delta = g(d + 6) (|a_j| + |a_s| + 2 |mean|)^2 (the product is taken with
        the uncentred rows, minus mean . a_s); a row more than 2 delta plus a relative 8 g(d + 3) above the k-th
        smallest Gram value is farther, also after rounding, than k rows. The shortlist is ranked exactly.
        """
        d = self.x.shape[1]
        centred = self.x[start] - self.mean
        gram = torch.mv(self.x, centred).sub_(torch.dot(self.mean, centred)).mul_(-2).add_(self.sq).add_(self.sq[start])
        gram[start] = -torch.inf
        gram.masked_fill_(~self.free, torch.inf)
        kth = torch.topk(gram, k, largest=False).values.max().item()
        delta = _gamma(d + 8) * (self.max_norm + self.sq[start].sqrt().item() + 2 * self.mean_norm) ** 2
        shortlist = torch.nonzero(gram <= kth + 8 * _gamma(d + 3) * abs(kth) + 4 * delta).squeeze(1)
        dist = self.exact(shortlist.tolist(), [start])[:, 0]
        dist[shortlist == start] = -1
        return shortlist[_k_smallest(dist, k)]

    def remove(self, rows: torch.Tensor) -> None:
        self.free[rows] = False
        self.n_free -= len(rows)
        in_top = self.top_pos[rows]
        self.top_free[in_top[in_top >= 0]] = False
        if not self.n_free:
            return
        self.pending.append(rows)
        gone = self.x[rows].sub_(self.mean)
        self.top_sums -= _distances(self.top_x, self.top_sq, gone, self.sq[rows]).sum(1)
        if sum(len(p) for p in self.pending) >= _PENDING:
            self.flush()


def ksame_clusters(features: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Cluster index (N - N mod k,) of every kept sample; clusters are numbered in the order they form.

    Args:
        features: (N, D) feature vectors.
        k: cluster size (2 <= k <= N).
        block: distances are computed in tiles of at most block x block (memory O(N D + block^2 + block D)).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"k-Same needs (N, D) features; got shape {x.shape}")
    if k < 2 or k > len(x):
        raise ValueError(f"k must lie in [2, N={len(x)}]; got k={k}")
    n = len(x) - len(x) % k
    if not np.isfinite(x).all():
        raise ValueError("k-Same features contain NaN or infinite values")
    state = _Sums(torch.from_numpy(np.array(x[:n], dtype=np.float64)), block)
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
