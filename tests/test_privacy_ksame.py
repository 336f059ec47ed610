"""k-Same: equal to a dense re-implementation of the original on small inputs; exact ties; k-anonymity; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.ksame import ksame, ksame_clusters


def _dense_reference(x: np.ndarray, k: int) -> np.ndarray:
    """The original's procedure, literally: full distance matrix, row sums over the unassigned every round."""
    n = len(x) - len(x) % k
    x = x[:n].astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    unassigned = np.ones(n, dtype=bool)
    cluster = np.full(n, -1)
    for c in range(n // k):
        idx = np.flatnonzero(unassigned)
        start = idx[np.argmax(dist[np.ix_(idx, idx)].sum(1))]
        nearest = idx[np.argsort(dist[start, idx], kind="stable")[:k]]
        cluster[nearest] = c
        unassigned[nearest] = False
    return cluster


@pytest.mark.parametrize(("n", "d", "k"), [(60, 5, 2), (61, 8, 3), (64, 3, 5), (50, 16, 7), (20, 4, 20)])
def test_equals_the_dense_original(n: int, d: int, k: int) -> None:
    x = np.random.default_rng(n * k).normal(size=(n, d)).astype(np.float32)
    assert np.array_equal(ksame_clusters(x, k, block=7), _dense_reference(x, k))


def test_centroids_are_shared_by_exactly_k_samples_and_labels_are_kept() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(23, 4)).astype(np.float32), rng.integers(0, 3, 23)
    out, labels = ksame(x, y, k=5)
    assert out.shape == (20, 4) and out.dtype == np.float32 and np.array_equal(labels, y[:20])
    _, counts = np.unique(out, axis=0, return_counts=True)
    assert (counts == 5).all() and len(counts) == 4
    cluster = ksame_clusters(x, 5)
    for c in range(4):
        assert np.allclose(out[cluster == c], x[:20][cluster == c].mean(0), atol=1e-6)


def test_bad_inputs() -> None:
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match=r"k must lie in \[2, N=10\]; got k=11"):
        ksame_clusters(x, 11)
    with pytest.raises(ValueError, match="got k=1"):
        ksame_clusters(x, 1)
    with pytest.raises(ValueError, match="NaN"):
        ksame_clusters(np.full((4, 2), np.nan), 2)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        ksame_clusters(np.zeros(5), 2)
    with pytest.raises(ValueError, match="9 labels"):
        ksame(x, np.zeros(9), 2)


@pytest.mark.parametrize(("n", "k"), [(300, 2), (301, 5), (250, 7)])
def test_batched_updates_and_fallback_equal_the_dense_original(n: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small _TOP/_PENDING force the lazy batched updates, the fallback and compaction on a few hundred points."""
    import privacy.ksame as module

    monkeypatch.setattr(module, "_TOP", 8)
    monkeypatch.setattr(module, "_PENDING", 4)
    x = np.random.default_rng(n + k).normal(size=(n, 6)).astype(np.float32)
    assert np.array_equal(ksame_clusters(x, k, block=32), _dense_reference(x, k))


def _exact_reference(x: np.ndarray, k: int) -> np.ndarray:
    """The rule on exact float64 distances from differences, plainly: fsum row sums, ties by the lowest index."""
    n = len(x) - len(x) % k
    x = x[:n].astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    unassigned = list(range(n))
    cluster = np.full(n, -1)
    for c in range(n // k):
        sums = [math.fsum(dist[i, unassigned]) for i in unassigned]
        start = unassigned[sums.index(max(sums))]  # list.index: the first maximum, i.e. the lowest index
        others = sorted((j for j in unassigned if j != start), key=lambda j: (dist[start, j], j))
        members = [start, *others[: k - 1]]
        cluster[members] = c
        unassigned = [j for j in unassigned if j not in members]
    return cluster


@pytest.mark.parametrize(("n", "d", "k", "levels"), [(60, 2, 2, 4), (90, 3, 3, 3), (61, 5, 5, 2), (84, 4, 4, 3)])
@pytest.mark.parametrize("batched", [False, True])
def test_quantised_features_with_exact_ties_follow_the_exact_rule(
    n: int, d: int, k: int, levels: int, batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features on a grid of step 0.5 far from the origin (exact in float32 and in the differences): many
    duplicated rows and many equal distances; centring them would round, the differences do not."""
    import privacy.ksame as module

    if batched:
        monkeypatch.setattr(module, "_TOP", 8)
        monkeypatch.setattr(module, "_PENDING", 4)
    grid = np.random.default_rng(n * d + k).integers(0, levels, size=(n, d))
    x = (1000.25 + 0.5 * grid).astype(np.float32)
    assert np.array_equal(ksame_clusters(x, k, block=16), _exact_reference(x, k))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_duplicated_rows_follow_the_exact_rule(k: int, seed: int) -> None:
    """60 rows drawn with replacement from 12 Gaussian rows: each row has ~5 identical copies."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(12, 6)).astype(np.float32)
    x = base[rng.integers(0, 12, 60)]
    assert np.array_equal(ksame_clusters(x, k, block=8), _exact_reference(x, k))


def test_an_identical_copy_of_the_start_is_its_first_neighbour() -> None:
    """The farthest row 5 = (1000, 0, 0) has a copy at row 6; rows 0-4 lie 1e-6..5e-6 from it towards the others.

    Row 5 starts (its sum ties row 6's exactly and exceeds rows 0-4's by ~1e-5) and with k = 2 takes its copy
    (distance exactly 0), not one of the rows 1e-6 away (in Gram form, |a|^2 + |b|^2 - 2 a.b of the centred rows,
    all of rows 0-6 come out at distance 0 from row 5 here, and the old code clustered rows 3 and 0 first).
    """
    far = np.array([[1000.0 - 1e-6 * (i + 1), 0.0, 0.0] for i in range(5)] + [[1000.0, 0.0, 0.0]] * 2)
    x = np.concatenate([far, np.random.default_rng(0).normal(size=(9, 3))])
    cluster = ksame_clusters(x, 2)
    assert cluster[5] == cluster[6] == 0
    assert np.array_equal(cluster, _exact_reference(x, 2))


def test_hand_worked_ties() -> None:
    """k = 2 on ten integer points (z = 0 unless given); expected clusters worked out by hand.

    Rows: 0 C=(0,0), 1 P1=(3,6), 2 B=(0,-10), 3 Q2=(-3,-6), 4 A=(0,10), 5 P2=(-3,6), 6 Q1=(3,-6), 7 D=(0,0),
    8 E=(1,1,101), 9 = copy of E. (The mean, (0.2, 0.2, 20.2), is not exact in binary: centring rounds.)

    - Round 0: E and its copy have the largest sum (~8 x 101 each, exactly tied): row 8 starts, row 9 joins
      at distance 0 -> cluster 0 = {8, 9}.
    - Round 1: A and B tie exactly (mirror images, distances {5, 5, 10, 10, 20, sqrt 265, sqrt 265}, sum 82.56;
      P1/P2/Q1/Q2 have 66.11, C and D 46.83): row 2 (B) starts; Q2 and Q1 are both 5 from B -> row 3.
      Cluster 1 = {2, 3}.
    - Round 2 (C, P1, A, P2, Q1, D): sums A 46.28, P1 36.42, P2 37.83, Q1 55.11, C and D 30.12: Q1 (row 6)
      starts; C and D are both sqrt 45 from it -> row 0. Cluster 2 = {6, 0}.
    - Round 3 (P1, A, P2, D): A 20, P1 = P2 = 17.71, D 23.42: D (row 7) starts; P1 and P2 are both sqrt 45 from
      it -> row 1. Cluster 3 = {7, 1}.
    - Round 4: cluster 4 = {4, 5}.
    """
    plane = [(0, 0), (3, 6), (0, -10), (-3, -6), (0, 10), (-3, 6), (3, -6), (0, 0), (0, 0), (0, 0)]
    x = np.array([[a, b, 0.0] for a, b in plane])
    x[8:] = [1.0, 1.0, 101.0]
    expected = np.array([2, 3, 1, 1, 4, 4, 2, 3, 0, 0])
    assert np.array_equal(_exact_reference(x, 2), expected)
    assert np.array_equal(ksame_clusters(x, 2), expected)
    assert np.array_equal(ksame_clusters(x, 2, block=3), expected)
