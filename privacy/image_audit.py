"""Memorisation audit of a synthetic image set: closest real training image, DCR share, near copies.

Vectors are flattened pixels in [0, 1] at one fixed size, or embeddings of a feature extractor. For every
synthetic vector the audit gives:

* its nearest real *training* vector (index, Euclidean distance ``d_train``) and its distance to the nearest
  real *holdout* vector ``d_holdout`` (exact search: ``feature_audit.nearest_neighbours``);
* the **distance to closest record (DCR)** test: the share of synthetic vectors with ``d_train < d_holdout``
  (ties count half), against its no-copying baseline |train| / (|train| + |holdout|) and the excess
  ``(share - baseline) / (1 - baseline)`` (``feature_audit.dcr_from_distances``; the same figures as
  ``dcr_share`` on anonymised features). DCR, the distance of a synthetic record to its closest real record,
  is the usual privacy check of synthetic tabular data since table-GAN (Park et al., "Data Synthesis based on
  Generative Adversarial Networks", VLDB 2018); comparing it with the distance to real records the generator
  never saw is the holdout-based form (Platzer & Reutterer, "Holdout-Based Fidelity and Privacy Assessment of
  Mixed-Type Synthetic Data", 2021) used by the CVAE study's audit (``seeds.md`` §4.5);
* **exact copies**: ``d_train == 0`` (identical vectors);
* **near copies**: ``d_train < copy_ratio * r``, with ``r`` the median over real training vectors of the
  distance to their nearest *other* training vector. ``r`` is the typical gap between two distinct real
  images in the same space, so the rule needs no per-space constant: at the default ``copy_ratio = 0.1`` a
  synthetic image counts as a copy when it lies ten times closer to a training image than real training
  images typically lie to each other. Scaling by the local spread of real data follows the memorisation test
  of diffusion models by Carlini et al. ("Extracting Training Data from Diffusion Models", USENIX Security
  2023), which divides the l2 distance by the distance to neighbouring training images; the median over the
  whole training set used here is a simpler, global version of that normalisation. ``relative`` =
  ``d_train / r`` is reported for every image, so any other cut-off can be read off the per-image rows.

Pixels are compared in raw [0, 1] space (per-pixel z-scoring would weigh near-constant border pixels as much
as the object); embeddings are z-scored with the real training set's statistics, as ``dcr_share`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privacy.checks import finite_floats
from privacy.feature_audit import _standardise, dcr_from_distances, nearest_neighbours

DEFAULT_COPY_RATIO = 0.1


def real_gap(train: np.ndarray) -> np.ndarray:
    """(N,) distance of each training vector to its nearest *other* training vector (duplicates give 0)."""
    if len(train) < 2:
        raise ValueError(f"the real training set needs at least 2 vectors to measure its spread; found {len(train)}")
    index, dist = nearest_neighbours(train, train, k=2)
    # The first neighbour is the row itself unless a duplicate came first (then both are at distance 0).
    own = index[:, 0] == np.arange(len(train))
    return np.where(own, dist[:, 1], dist[:, 0])


def memorisation_audit(
    synthetic: np.ndarray,
    train: np.ndarray,
    holdout: np.ndarray,
    standardise: bool = False,
    copy_ratio: float = DEFAULT_COPY_RATIO,
) -> dict[str, Any]:
    """Nearest real training vector of every synthetic vector, DCR share and copy shares (see module doc).

    Args:
        synthetic: (M, D) synthetic vectors; train: (N, D) real training vectors (N >= 2); holdout: (H, D)
            real vectors the generator never saw. All finite.
        standardise: z-score all three with the training set's mean and std first (embeddings), or not (pixels).
        copy_ratio: near-copy cut-off as a fraction of the median real-to-real nearest distance.

    Returns:
        ``nearest_train`` (M,) int64 training index, ``to_train`` and ``to_holdout`` (M,) float64 distances,
        ``relative`` (M,) = to_train / real_gap_median, ``real_gap_median``, ``copy_ratio``,
        ``copy_threshold``, ``exact_copy_share``, ``near_copy_share`` and ``dcr`` (share, baseline, excess,
        median distances, sizes).
    """
    synthetic = finite_floats(synthetic, "synthetic vectors", ("row", "feature"), 2)
    train = finite_floats(train, "real training vectors", ("row", "feature"), 2)
    holdout = finite_floats(holdout, "real holdout vectors", ("row", "feature"), 2)
    dims = {synthetic.shape[1], train.shape[1], holdout.shape[1]}
    if len(dims) != 1:
        raise ValueError(
            f"synthetic, training and holdout vectors must have one width; found {synthetic.shape}, "
            f"{train.shape} and {holdout.shape}"
        )
    if not (np.isfinite(copy_ratio) and copy_ratio > 0):
        raise ValueError(f"copy_ratio must be a positive number; got {copy_ratio}")
    if standardise:
        mean, std = train.mean(0), train.std(0)
        synthetic, train, holdout = (_standardise(x, mean, std) for x in (synthetic, train, holdout))
    nearest, to_train = nearest_neighbours(synthetic, train)
    to_holdout = nearest_neighbours(synthetic, holdout)[1][:, 0]
    to_train = to_train[:, 0]
    gap = float(np.median(real_gap(train)))
    threshold = copy_ratio * gap
    relative = to_train / gap if gap > 0 else np.where(to_train > 0, np.inf, 0.0)
    return {
        "nearest_train": nearest[:, 0],
        "to_train": to_train,
        "to_holdout": to_holdout,
        "relative": relative,
        "real_gap_median": gap,
        "copy_ratio": float(copy_ratio),
        "copy_threshold": threshold,
        "exact_copy_share": float(np.mean(to_train == 0)),
        "near_copy_share": float(np.mean(to_train < threshold)) if threshold > 0 else float(np.mean(to_train == 0)),
        "dcr": dcr_from_distances(to_train, to_holdout, len(train), len(holdout)),
    }
