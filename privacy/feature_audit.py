"""Distance audits of anonymised feature sets (exact nearest neighbours with faiss).

* ``average_min_distance``: the CVAE study's metric: for every anonymised training vector, the Euclidean
  distance to its nearest real training vector, averaged (``seeds.md`` §4.5). Larger means further from the
  real records. The original z-scores each set with its *own* statistics; here both sets are z-scored with
  the real training statistics, so the distances live in one space (``own_statistics=True`` gives the
  original's quirk).
* ``dcr_share``: the distance-to-closest-record test. The real training set is subsampled to the size of a
  real holdout set; for every anonymised vector, is its closest record in that training subset nearer than its
  closest holdout record? A generator that does not copy its training data lands nearer the training subset
  half of the time (ties count half); a copying one more often. Anonymised rows derived from training rows
  outside the subset look like holdout rows, which dilutes the excess but keeps the 50 % baseline exact.
"""

from __future__ import annotations

import numpy as np


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    safe = np.where(std > 0, std, 1.0)
    return np.ascontiguousarray((x - mean) / safe, dtype=np.float32)


def nearest_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(M,) Euclidean distance of each query to its nearest reference (exact, faiss IndexFlatL2)."""
    import faiss

    queries, references = (np.ascontiguousarray(a, dtype=np.float32) for a in (queries, references))
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"need (M, D) queries and (N, D) references; got {queries.shape} and {references.shape}")
    if len(references) == 0:
        raise ValueError("nearest_distances needs at least one reference vector")
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(references)
    squared, _ = index.search(queries, 1)
    return np.sqrt(np.maximum(squared[:, 0], 0.0)).astype(np.float64)


def average_min_distance(anonymised: np.ndarray, real: np.ndarray, own_statistics: bool = False) -> float:
    """Mean distance from each anonymised vector to its nearest real one, in the real set's z-scored space."""
    real_mean, real_std = real.mean(0), real.std(0)
    ref = _standardise(real, real_mean, real_std)
    if own_statistics:  # the original: the anonymised set z-scored with its own mean and std
        query = _standardise(anonymised, anonymised.mean(0), anonymised.std(0))
    else:
        query = _standardise(anonymised, real_mean, real_std)
    return float(nearest_distances(query, ref).mean())


def dcr_share(anonymised: np.ndarray, train: np.ndarray, holdout: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Share of anonymised vectors closer to a training record than to any holdout record (0.5: no copying).

    Returns ``share`` and the median distances to the closest training / holdout record, all in the real
    training set's z-scored space; the training set is subsampled (seeded) to the holdout size.
    """
    if len(holdout) > len(train):
        raise ValueError(f"the holdout set ({len(holdout)}) must not be larger than the training set ({len(train)})")
    mean, std = train.mean(0), train.std(0)
    pick = np.sort(np.random.default_rng(seed).choice(len(train), len(holdout), replace=False))
    query = _standardise(anonymised, mean, std)
    to_train = nearest_distances(query, _standardise(train[pick], mean, std))
    to_holdout = nearest_distances(query, _standardise(holdout, mean, std))
    share = float(np.mean(to_train < to_holdout) + 0.5 * np.mean(to_train == to_holdout))
    return {
        "share": share,
        "median_to_train": float(np.median(to_train)),
        "median_to_holdout": float(np.median(to_holdout)),
        "reference_size": len(holdout),
    }
