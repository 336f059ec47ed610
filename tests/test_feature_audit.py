"""Distance audits of anonymised features: exact nearest distances, average min-distance, DCR share."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.feature_audit import average_min_distance, dcr_share, nearest_distances


def test_nearest_distances_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    queries, references = rng.normal(size=(50, 5)), rng.normal(size=(80, 5))
    brute = np.sqrt(((queries[:, None, :] - references[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(queries, references), brute, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(nearest_distances(references, references), np.zeros(80))
    # Wide, large-norm vectors: faiss's Gram-form float32 distance of a copy is far from 0; ours is exact.
    wide = 30.0 + rng.normal(size=(200, 1280))
    np.testing.assert_array_equal(nearest_distances(wide[::-1].copy(), wide), np.zeros(200))
    with pytest.raises(ValueError, match=r"need \(M, D\) queries and \(N, D\) references"):
        nearest_distances(queries, references[:, :4])
    with pytest.raises(ValueError, match="at least one reference"):
        nearest_distances(queries, references[:0])


def test_average_min_distance() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(loc=5.0, scale=[1.0, 10.0, 0.1], size=(200, 3))
    assert average_min_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    assert average_min_distance(real[::-1].copy(), real) == pytest.approx(0.0, abs=1e-6)
    shifted = real + np.array([0.0, 10.0, 0.0])  # one real-space std along the second axis
    assert average_min_distance(shifted, real) > average_min_distance(real + 0.1 * real.std(0), real) > 0
    # The original's quirk z-scores each set with its own statistics: a shift disappears.
    assert average_min_distance(shifted, real, own_statistics=True) == pytest.approx(0.0, abs=1e-5)


def test_dcr_share() -> None:
    rng = np.random.default_rng(2)
    train, holdout = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    copies = dcr_share(train.copy(), train, holdout)
    assert copies["share"] == pytest.approx(1.0) and copies["excess"] == pytest.approx(1.0)
    jittered = dcr_share(train + 0.01 * rng.normal(size=train.shape), train, holdout)
    assert jittered["share"] > 0.9 and jittered["median_to_train"] < jittered["median_to_holdout"]
    fresh = dcr_share(rng.normal(size=(600, 4)), train, holdout)
    assert fresh["baseline"] == 0.5 and abs(fresh["share"] - 0.5) < 0.07 and abs(fresh["excess"]) < 0.14
    # Unequal sizes: the no-copying baseline moves to |train| / (|train| + |holdout|); copies of *any*
    # training record still score 100 % (a subsampled training set would miss most of them).
    small = holdout[:100]
    assert dcr_share(train[::3].copy(), train, small)["share"] == pytest.approx(1.0)
    independent = dcr_share(rng.normal(size=(2000, 4)), train, small)
    assert independent["baseline"] == pytest.approx(0.8) and abs(independent["share"] - 0.8) < 0.04
    with pytest.raises(ValueError, match="needs training and holdout records; got 400 and 0"):
        dcr_share(train, train, holdout[:0])
