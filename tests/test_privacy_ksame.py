"""k-Same: equal to a dense re-implementation of the original on small inputs; k-anonymity; errors."""

from __future__ import annotations

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
