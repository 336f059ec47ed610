"""Distance audits of anonymised feature sets (exact nearest neighbours with faiss).

* ``average_min_distance``: the CVAE study's metric: for every anonymised training vector, the Euclidean
  distance to its nearest real training vector, averaged (``seeds.md`` §4.5). Larger means further from the
  real records. The original z-scores each set with its *own* statistics; here both sets are z-scored with
  the real training statistics, so the distances live in one space (``own_statistics=True`` gives the
  original's quirk).
* ``dcr_share``: the distance-to-closest-record test: for every anonymised vector, is its closest real
  training record nearer than its closest real holdout record (ties count half)? Training and holdout records
  are draws from one distribution, so for a generator that does not copy, the closest of all real records is a
  training one with probability ``baseline`` = |train| / (|train| + |holdout|); a copying one scores above it,
  exact copies 100 %. (Subsampling the training set to the holdout size would give a 50 % baseline, but then
  copies of the records left out look like fresh samples: pure copying scored about 70 % on the CVAE study.)
"""

from __future__ import annotations

import numpy as np

from privacy.checks import finite_floats


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    safe = np.where(std > 0, std, 1.0)
    return np.ascontiguousarray((x - mean) / safe, dtype=np.float32)


def nearest_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(M,) Euclidean distance of each query to its nearest reference (exact, faiss IndexFlatL2)."""
    return nearest_neighbours(queries, references)[1][:, 0]


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(M, k) indices of each query's ``k`` nearest references and their (M, k) Euclidean distances (exact).

    The search is faiss IndexFlatL2 (exact); the distances to the neighbours it found are recomputed in float64.
    """
    import faiss

    if np.ndim(queries) != 2 or np.ndim(references) != 2 or np.shape(queries)[1] != np.shape(references)[1]:
        raise ValueError(
            f"need (M, D) queries and (N, D) references; got {np.shape(queries)} and {np.shape(references)}"
        )
    if len(references) == 0:
        raise ValueError("nearest_distances needs at least one reference vector")
    if not 1 <= k <= len(references):
        raise ValueError(f"nearest_neighbours: k={k} must lie in [1, {len(references)}] (the reference count)")
    # faiss returns index -1 for a NaN query, which numpy would read as the last reference row.
    queries = np.ascontiguousarray(finite_floats(queries, "query vectors", ("row", "feature"), 2, np.float32))
    references = np.ascontiguousarray(finite_floats(references, "reference vectors", ("row", "feature"), 2, np.float32))
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(references)
    _, nearest = index.search(queries, k)
    if (nearest < 0).any():
        raise ValueError(f"faiss found no neighbour for {int((nearest < 0).sum())} query vectors")
    # faiss's float32 |q|^2 + |r|^2 - 2 q.r loses the small distances (an exact copy came out ~0.01 away in
    # 1,280-d); the distance to each neighbour it found is recomputed directly in float64.
    diff = queries.astype(np.float64)[:, None, :] - references[nearest].astype(np.float64)
    return nearest.astype(np.int64), np.sqrt(np.einsum("mkd,mkd->mk", diff, diff))


def average_min_distance(anonymised: np.ndarray, real: np.ndarray, own_statistics: bool = False) -> float:
    """Mean distance from each anonymised vector to its nearest real one, in the real set's z-scored space.

    Args:
        anonymised: (M, D) anonymised vectors; real: (N, D) real training vectors; both finite.
    """
    anonymised = finite_floats(anonymised, "anonymised vectors", ("row", "feature"), 2)
    real = finite_floats(real, "real training vectors", ("row", "feature"), 2)
    real_mean, real_std = real.mean(0), real.std(0)
    ref = _standardise(real, real_mean, real_std)
    if own_statistics:  # the original: the anonymised set z-scored with its own mean and std
        query = _standardise(anonymised, anonymised.mean(0), anonymised.std(0))
    else:
        query = _standardise(anonymised, real_mean, real_std)
    return float(nearest_distances(query, ref).mean())


def dcr_share(anonymised: np.ndarray, train: np.ndarray, holdout: np.ndarray) -> dict[str, float]:
    """Share of anonymised vectors closer to a real training record than to any real holdout record.

    Returns ``share``, its no-copying ``baseline`` (|train| / (|train| + |holdout|)), ``excess`` =
    (share - baseline) / (1 - baseline) (0: no sign of copying, 1: all nearer the training set) and the median
    distances to the closest training / holdout record, all in the real training set's z-scored space.
    """
    if len(train) == 0 or len(holdout) == 0:
        raise ValueError(f"dcr_share needs training and holdout records; got {len(train)} and {len(holdout)}")
    anonymised = finite_floats(anonymised, "anonymised vectors", ("row", "feature"), 2)
    train = finite_floats(train, "real training vectors", ("row", "feature"), 2)
    holdout = finite_floats(holdout, "real holdout vectors", ("row", "feature"), 2)
    mean, std = train.mean(0), train.std(0)
    query = _standardise(anonymised, mean, std)
    to_train = nearest_distances(query, _standardise(train, mean, std))
    to_holdout = nearest_distances(query, _standardise(holdout, mean, std))
    return dcr_from_distances(to_train, to_holdout, len(train), len(holdout))


def dcr_from_distances(
    to_train: np.ndarray, to_holdout: np.ndarray, train_size: int, holdout_size: int
) -> dict[str, float]:
    """``dcr_share``'s figures from each query's distance to its closest training and holdout record."""
    share = float(np.mean(to_train < to_holdout) + 0.5 * np.mean(to_train == to_holdout))
    baseline = train_size / (train_size + holdout_size)
    return {
        "share": share,
        "baseline": baseline,
        "excess": (share - baseline) / (1.0 - baseline),
        "median_to_train": float(np.median(to_train)),
        "median_to_holdout": float(np.median(to_holdout)),
        "train_size": train_size,
        "holdout_size": holdout_size,
    }
