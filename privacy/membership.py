"""Membership masks for shadow-model ensembles and RMIA scoring (pure numpy).

``balanced_mask``: the reference LiRA construction, every example IN for exactly half of the K models.
The mask travels with a hash of the example ids so that logits saved in another example order are caught.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privacy.checks import finite_floats
from tools.files import write_bytes_atomic


def balanced_mask(num_models: int, num_examples: int, seed: int) -> np.ndarray:
    """(K, N) bool mask, each column with exactly K/2 True, drawn deterministically from ``seed``.

    Per example, the K models are ranked by a seeded uniform draw and the first half take it IN.
    """
    if num_models < 2 or num_models % 2:
        raise ValueError(f"num_models must be even and at least 2 (each example IN for exactly half); got {num_models}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be positive; got {num_examples}")
    draws = np.random.default_rng(seed).random((num_models, num_examples))
    ranks = draws.argsort(axis=0).argsort(axis=0)
    return ranks < num_models // 2


def ids_hash(ids: Sequence[str]) -> str:
    """sha256 over the example ids in order (any reordering changes it)."""
    digest = hashlib.sha256()
    for example_id in ids:
        digest.update(str(example_id).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def save_mask(
    path: str | Path, mask: np.ndarray, ids: Sequence[str], seed: int, population: np.ndarray | None = None
) -> Path:
    """Write ``mask.npz`` (mask, ids, ids_hash, seed and, for RMIA, the (N,) bool ``population``) atomically."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.shape[1] != len(ids):
        raise ValueError(f"mask has shape {mask.shape} but there are {len(ids)} example ids")
    payload = {"mask": mask, "ids": np.asarray(ids), "ids_hash": np.asarray(ids_hash(ids)), "seed": np.asarray(seed)}
    if population is not None:
        payload["population"] = np.asarray(population, dtype=bool)
        if payload["population"].shape != (len(ids),):
            raise ValueError(f"population has shape {payload['population'].shape}; expected ({len(ids)},)")
    return write_bytes_atomic(path, lambda handle: np.savez(handle, **payload))


def load_mask(path: str | Path, ids: Sequence[str] | None = None) -> np.ndarray:
    """Read a saved mask; with ``ids``, refuse it unless the example order is the same."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"membership mask {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        missing = {"mask", "ids_hash"} - set(data.files)
        if missing:
            raise ValueError(f"{path} is not a membership mask file: missing {sorted(missing)}")
        mask, saved_hash = data["mask"], str(data["ids_hash"])
    if ids is not None:
        if len(ids) != mask.shape[1]:
            raise ValueError(f"{path}: mask covers {mask.shape[1]} examples but {len(ids)} ids were given")
        if ids_hash(ids) != saved_hash:
            raise ValueError(
                f"{path}: the example ids differ from those the mask was made for (other order or other "
                "examples); logits and mask would be misaligned"
            )
    return mask


def check_disjoint(members: Sequence[str], non_members: Sequence[str]) -> None:
    """Members and non-members of a challenge set must not overlap."""
    both = sorted(set(members) & set(non_members))
    if both:
        raise ValueError(f"{len(both)} examples are both members and non-members, e.g. {json.dumps(both[:3])}")


def rmia_scores(
    target_probs: np.ndarray,
    reference_probs: np.ndarray,
    in_mask: np.ndarray | None,
    population: np.ndarray,
    gamma: float = 1.0,
    offline_a: float | None = None,
) -> np.ndarray:
    """RMIA (Zarifzadeh et al. 2024): share of population points z with LR(x, z) > gamma.

    LR(x, z) = [p_target(x) / p_ref(x)] / [p_target(z) / p_ref(z)], p = probability of the true class
    (averaged over query augmentations when a Q axis is present). Online: p_ref is the mean over all
    reference models. Offline (``offline_a`` set): p_ref(x) = ((1 + a) * mean over OUT models + (1 - a)) / 2.

    Args:
        target_probs: (N,) or (N, Q) true-class probabilities from the target.
        reference_probs: (K, N) or (K, N, Q) from the reference models.
        in_mask: (K, N) membership of the reference models (needed offline; ignored online).
        population: indices of the examples used as z: known non-members of the target, kept apart from
            the examples the scores are evaluated on (the design's ``population`` set).
        gamma: likelihood-ratio threshold.
        offline_a: the offline interpolation a in [0, 1]; None for online RMIA.

    Returns:
        (N,) scores in [0, 1] for every example (evaluate them only outside ``population``).

    Raises:
        ValueError: non-finite or out-of-range probabilities, mismatched (N, Q), an empty, non-integer,
            duplicated or out-of-range population, gamma <= 0, a in [0, 1] violated, a zero reference probability.
    """
    t = finite_floats(target_probs, "RMIA target probabilities", ("example", "view")[: np.ndim(target_probs)], (1, 2))
    r = finite_floats(
        reference_probs,
        "RMIA reference probabilities",
        ("model", "example", "view")[: np.ndim(reference_probs)],
        (2, 3),
    )
    if t.ndim + 1 != r.ndim or t.shape != r.shape[1:]:
        raise ValueError(
            f"RMIA: target probabilities {t.shape} and reference probabilities {r.shape} must cover the same "
            "examples under the same query views ((N, Q) and (K, N, Q))"
        )
    for name, p in (("target", t), ("reference", r)):
        if p.min() < 0 or p.max() > 1:
            raise ValueError(f"RMIA: {name} probabilities must lie in [0, 1]; found {p.min()}..{p.max()}")
    t = t.mean(axis=1) if t.ndim == 2 else t
    r = r.mean(axis=2) if r.ndim == 3 else r
    population = np.asarray(population)
    if population.ndim != 1 or len(population) == 0:
        raise ValueError(f"RMIA needs a non-empty 1-d population of example indices; got shape {population.shape}")
    if not np.issubdtype(population.dtype, np.integer):
        raise ValueError(f"RMIA population must be integer example indices; found dtype {population.dtype}")
    if population.min() < 0 or population.max() >= len(t):
        raise ValueError(
            f"RMIA population indices must lie in [0, {len(t) - 1}]; found {population.min()}..{population.max()}"
        )
    if len(np.unique(population)) != len(population):
        raise ValueError("RMIA population indices must be unique")
    if not gamma > 0:
        raise ValueError(f"RMIA gamma must be positive; got {gamma}")
    if offline_a is not None and not 0 <= offline_a <= 1:
        raise ValueError(f"RMIA offline_a must lie in [0, 1]; got {offline_a}")
    if offline_a is None:
        p_ref = r.mean(axis=0)
    else:
        if in_mask is None or np.asarray(in_mask).shape != r.shape:
            raise ValueError(f"offline RMIA needs in_mask of shape {r.shape}")
        out = np.where(np.asarray(in_mask, dtype=bool), np.nan, r)
        if np.isnan(out).all(axis=0).any():
            raise ValueError("offline RMIA needs at least one OUT reference model per example")
        p_ref = 0.5 * ((1 + offline_a) * np.nanmean(out, axis=0) + (1 - offline_a))
    if (p_ref <= 0).any():
        raise ValueError(
            f"RMIA: the reference probability of the true class is 0 for {int((p_ref <= 0).sum())} examples "
            "(the likelihood ratio is undefined there)"
        )
    ratio = t / p_ref
    z = np.sort(ratio[np.asarray(population)])
    # LR(x, z) > gamma  <=>  ratio(z) < ratio(x) / gamma: count with one binary search per x.
    return np.searchsorted(z, ratio / gamma, side="left") / len(z)
