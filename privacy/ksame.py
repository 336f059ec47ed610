"""k-Same anonymisation of feature vectors (the CVAE study's ``src/anonymizer/ksame.py``, ``seeds.md`` §4.3).

The original's clustering, with its semantics kept: class-agnostic; the last N mod k samples are dropped; while
points remain, the unassigned point with the largest sum of distances to the other unassigned points starts a
cluster with its k - 1 nearest unassigned neighbours; every point is replaced by its cluster's centroid.

The original holds the N x N distance matrix and re-sums its rows every round (O(N^2) memory, O(N^3 / k)
time). Here each point's sum of distances to the unassigned points is kept in a vector and, when a cluster is
formed, decreased by the distances to the k points that left: O(N d) memory and O(N^2 d) time, the distances
computed block by block.
"""

from __future__ import annotations

import numpy as np
import torch


def _distances(points: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(points), len(others)); float64 keeps the matmul form accurate to ~1e-12."""
    return torch.cdist(points, others)


def ksame_clusters(features: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Cluster index (N - N mod k,) of every kept sample; clusters are numbered in the order they form.

    Args:
        features: (N, D) feature vectors.
        k: cluster size (2 <= k <= N).
        block: rows per block when the initial distance sums are computed (memory O(block * N)).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"k-Same needs (N, D) features; got shape {x.shape}")
    if k < 2 or k > len(x):
        raise ValueError(f"k must lie in [2, N={len(x)}]; got k={k}")
    n = len(x) - len(x) % k
    if not np.isfinite(x).all():
        raise ValueError("k-Same features contain NaN or infinite values")
    data = torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float64))
    sums = torch.cat([_distances(data[s : s + block], data).sum(1) for s in range(0, n, block)])
    unassigned = torch.ones(n, dtype=torch.bool)
    cluster = np.full(n, -1, dtype=np.int64)
    for c in range(n // k):
        candidates = torch.nonzero(unassigned).squeeze(1)
        start = candidates[torch.argmax(sums[candidates])]
        to_start = _distances(data[start][None], data[candidates])[0]
        nearest = candidates[torch.argsort(to_start, stable=True)[:k]]
        cluster[nearest.numpy()] = c
        unassigned[nearest] = False
        remaining = torch.nonzero(unassigned).squeeze(1)
        if len(remaining):
            sums[remaining] -= _distances(data[remaining], data[nearest]).sum(1)
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
