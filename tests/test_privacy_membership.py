"""Membership masks, id hashing and RMIA against a brute-force pairwise count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privacy.membership import balanced_mask, check_disjoint, ids_hash, load_mask, rmia_scores, save_mask


def test_balanced_mask_is_deterministic_and_exactly_half() -> None:
    mask = balanced_mask(16, 300, seed=5)
    assert mask.shape == (16, 300) and mask.dtype == bool
    assert (mask.sum(axis=0) == 8).all()
    np.testing.assert_array_equal(mask, balanced_mask(16, 300, seed=5))
    assert not np.array_equal(mask, balanced_mask(16, 300, seed=6))
    assert 0.4 < mask.mean(axis=1).min() <= mask.mean(axis=1).max() < 0.6  # every model sees about half


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_mask_needs_even_k_of_at_least_two(k: int) -> None:
    with pytest.raises(ValueError, match="even and at least 2"):
        balanced_mask(k, 10, seed=0)


def test_mask_round_trip_and_id_order_check(tmp_path: Path) -> None:
    ids = [f"train0/c/{i}.png" for i in range(10)]
    mask = balanced_mask(4, 10, seed=1)
    save_mask(tmp_path / "mask.npz", mask, ids, seed=1)
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.npz", ids), mask)
    with pytest.raises(ValueError, match="other order"):
        load_mask(tmp_path / "mask.npz", list(reversed(ids)))
    with pytest.raises(ValueError, match="covers 10 examples but 9"):
        load_mask(tmp_path / "mask.npz", ids[:9])
    with pytest.raises(ValueError, match="mask has shape"):
        save_mask(tmp_path / "bad.npz", mask[:, :5], ids, seed=1)
    assert ids_hash(ids) != ids_hash([*ids[1:], ids[0]])


def test_overlapping_members_and_non_members_are_refused() -> None:
    with pytest.raises(ValueError, match="both members and non-members"):
        check_disjoint(["a", "b"], ["b", "c"])
    check_disjoint(["a"], ["b"])


def _brute_rmia(t: np.ndarray, r: np.ndarray, population: np.ndarray, gamma: float) -> np.ndarray:
    p_ref = r.mean(axis=0)
    out = []
    for x in range(len(t)):
        count = sum((t[x] / p_ref[x]) / (t[z] / p_ref[z]) > gamma for z in population)
        out.append(count / len(population))
    return np.array(out)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_rmia_online_equals_pairwise_count(gamma: float) -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(0.05, 1, 40)
    r = rng.uniform(0.05, 1, (6, 40))
    population = rng.choice(40, 25, replace=False)
    np.testing.assert_allclose(rmia_scores(t, r, None, population, gamma), _brute_rmia(t, r, population, gamma))


def test_rmia_offline_uses_out_models_only() -> None:
    rng = np.random.default_rng(1)
    t = rng.uniform(0.05, 1, 20)
    r = rng.uniform(0.05, 1, (4, 20))
    mask = balanced_mask(4, 20, seed=0)
    changed = r.copy()
    changed[mask] = 0.999  # IN models must not matter offline
    population = np.arange(20)
    np.testing.assert_allclose(
        rmia_scores(t, r, mask, population, offline_a=0.3), rmia_scores(t, changed, mask, population, offline_a=0.3)
    )
    with pytest.raises(ValueError, match="in_mask of shape"):
        rmia_scores(t, r, None, population, offline_a=0.3)
