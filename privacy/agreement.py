"""Agreement of reconstruction metrics with human (or stand-in) recognisability labels (SemSim, ``seeds.md`` §2.6).

Direction. Every statistic here works on the **leakage-oriented** value of a metric: the metric itself when higher
means more similar (PSNR, SSIM, classifier agreement), its negative when lower means more similar (MSE, LPIPS,
ST-LPIPS, feature-MSE, the SemSim distance). So a metric that tracks people gives positive correlations and
pairwise agreement above 0.5, whatever its own direction (:func:`leakage_oriented`).

Model level (one point per victim configuration): leakage = share of the configuration's reconstructions judged
recognisable; x = mean of the metric's leakage-oriented value over the same reconstructions. Spearman ρ, Pearson r
and Kendall τ (τ-b; ``scipy.stats``) between x and leakage across configurations; the original correlates the
metric with 1 - leakage, which only flips the sign for lower-is-more-similar metrics and is what the orientation
does here. Fewer than 3 configurations, or a constant x or leakage, give no correlation (``None`` with a reason).
Intervals: percentile bootstrap (95 %), resampling **reconstructions within each configuration** with replacement
(metric value and label together), recomputing both means and the three coefficients per draw; the configurations
themselves are fixed (the interval covers the noise of finite labelling, not the choice of configurations).

Image level: every (recognisable, unrecognisable) pair of reconstructions of the **same original** (within and
across configurations); agreement = share of pairs in which the recognisable one has the higher leakage-oriented
value (i.e. is rated more similar), ties counting half. Interval: percentile bootstrap over originals (each drawn
original brings all its pairs). :func:`pairwise_accuracy` is the per-original mean variant that SemSimNet logs.

With one seed, every metric sees the same bootstrap draws (they depend only on the counts), so the intervals of
two metrics are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from privacy.checks import finite_floats

CORRELATIONS = ("spearman", "pearson", "kendall")
MIN_CONFIGURATIONS = 3
_CHUNK = 200


def pairwise_accuracy(distances: torch.Tensor, recognisable: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over originals of the share of (recognisable, unrecognisable) pairs ranked right (ties count half).

    Args:
        distances: (N,) metric value per reconstruction; lower = judged more similar to its original.
        recognisable: (N,) bool human label.
        groups: (N,) original (group) id of each reconstruction.

    Returns NaN when no original has both a recognisable and an unrecognisable reconstruction.
    """
    shares = []
    for g in torch.unique(groups):
        mine = groups == g
        pos, neg = distances[mine & recognisable], distances[mine & ~recognisable]
        if len(pos) and len(neg):
            diff = neg[None, :] - pos[:, None]  # > 0: the recognisable one is closer
            shares.append(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    return torch.stack(shares).mean() if shares else torch.tensor(float("nan"), dtype=torch.float64)


def leakage_oriented(values: np.ndarray, higher_is_more_similar: bool) -> np.ndarray:
    """``values`` if higher means more similar, else ``-values``: higher = more leakage, for every metric."""
    values = np.asarray(values, dtype=np.float64)
    return values if higher_is_more_similar else -values


def _interval(draws: np.ndarray) -> list[float] | None:
    finite = draws[np.isfinite(draws)]
    return [float(v) for v in np.percentile(finite, [2.5, 97.5])] if len(finite) else None


def _check_resamples(resamples: int) -> None:
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100 for a 95 % percentile interval; got {resamples}")


def _rank_rows(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each row pair (as scipy.stats.kendalltau), vectorised over rows; K is small."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    upper = np.triu(np.ones(x.shape[1], dtype=bool), 1)
    concord = (sx * sy)[:, upper].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return concord / np.sqrt(np.abs(sx[:, upper]).sum(1) * np.abs(sy[:, upper]).sum(1))


def correlations_rows(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Spearman, Pearson and Kendall τ-b of every row of (B, K) ``x`` against the same row of ``y`` (NaN: constant)."""
    return {
        "spearman": _pearson_rows(_rank_rows(x), _rank_rows(y)),
        "pearson": _pearson_rows(x, y),
        "kendall": _kendall_rows(x, y),
    }


def _check_groups(values: Sequence[np.ndarray], recognisable: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    if len(values) != len(recognisable):
        raise ValueError(f"{what}: {len(values)} value arrays but {len(recognisable)} label arrays")
    out = []
    for i, (v, r) in enumerate(zip(values, recognisable)):
        v = finite_floats(v, f"{what} configuration {i}", ndim=1)
        r = np.asarray(r)
        if r.dtype != bool or r.shape != v.shape:
            raise ValueError(f"{what} configuration {i}: labels must be {len(v)} booleans; found {r.dtype} {r.shape}")
        out.append(v)
    return out


def model_level(
    values: Sequence[np.ndarray],
    recognisable: Sequence[np.ndarray],
    higher_is_more_similar: bool,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Correlations between each configuration's mean metric and its leakage rate (see the module docstring).

    Args:
        values: one (n_k,) array of metric values per configuration (the metric's own scale).
        recognisable: one (n_k,) bool array per configuration, paired with ``values``.
        higher_is_more_similar: the metric's direction (``privacy.similarity.HIGHER_IS_MORE_SIMILAR``).
        resamples: bootstrap draws (at least 100).
        seed: seed of the draws.

    Returns:
        ``means`` and ``leakage`` per configuration, then per coefficient ``{value, ci95}`` or ``None`` and
        ``unavailable`` saying why.
    """
    _check_resamples(resamples)
    values = _check_groups(values, recognisable, "model-level agreement")
    labels = [np.asarray(r, dtype=np.float64) for r in recognisable]
    means = np.array([v.mean() for v in values])
    leakage = np.array([r.mean() for r in labels])
    out: dict[str, Any] = {"configurations": len(values), "means": means.tolist(), "leakage": leakage.tolist()}
    reason = None
    if len(values) < MIN_CONFIGURATIONS:
        reason = f"{len(values)} configuration(s); correlations need at least {MIN_CONFIGURATIONS}"
    elif np.ptp(leakage) == 0:
        reason = f"the leakage rate is {leakage[0]:.3g} in every configuration"
    elif np.ptp(means) == 0:
        reason = "the metric's mean is the same in every configuration"
    if reason is not None:
        return {**out, **{name: None for name in CORRELATIONS}, "unavailable": reason}
    from scipy import stats

    x = leakage_oriented(means, higher_is_more_similar)
    point = {
        "spearman": stats.spearmanr(x, leakage).statistic,
        "pearson": stats.pearsonr(x, leakage).statistic,
        "kendall": stats.kendalltau(x, leakage).statistic,
    }
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in CORRELATIONS}
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        idx = [rng.integers(0, len(v), (b, len(v))) for v in values]
        xb = np.stack([v[i].mean(1) for v, i in zip(values, idx)], axis=1)
        yb = np.stack([r[i].mean(1) for r, i in zip(labels, idx)], axis=1)
        for name, rows in correlations_rows(leakage_oriented(xb, higher_is_more_similar), yb).items():
            draws[name].append(rows)
    for name in CORRELATIONS:
        d = np.concatenate(draws[name])
        out[name] = {"value": float(point[name]), "ci95": _interval(d), "undefined_draws": int((~np.isfinite(d)).sum())}
    return out


def pair_counts(values: np.ndarray, recognisable: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per original with both kinds: (wins, pairs), wins = pairs where the recognisable reconstruction has the
    higher (leakage-oriented) value, ties counting half."""
    values = finite_floats(values, "image-level agreement values", ndim=1)
    recognisable = np.asarray(recognisable)
    groups = np.asarray(groups)
    if recognisable.dtype != bool or recognisable.shape != values.shape or groups.shape != values.shape:
        raise ValueError(
            f"image-level agreement: expected {len(values)} bool labels and group ids; found "
            f"{recognisable.dtype} {recognisable.shape} and {groups.shape}"
        )
    wins, pairs = [], []
    for g in np.unique(groups):
        mine = groups == g
        pos, neg = values[mine & recognisable], values[mine & ~recognisable]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            wins.append((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs.append(diff.size)
    return np.asarray(wins, dtype=np.float64), np.asarray(pairs, dtype=np.float64)


def image_level(
    values: np.ndarray,
    recognisable: np.ndarray,
    groups: np.ndarray,
    higher_is_more_similar: bool,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairwise agreement with the labels over (recognisable, unrecognisable) pairs of one original.

    Args:
        values: (N,) metric values (own scale), all configurations together.
        recognisable: (N,) bool labels.
        groups: (N,) original id of each reconstruction.
        higher_is_more_similar, resamples, seed: as in :func:`model_level`.

    Returns:
        ``agreement`` (share of pairs, ties half) with ``ci95`` (bootstrap over originals), ``per_original_mean``
        (the mean of the per-original shares), ``pairs`` and ``originals``; ``agreement`` None (with
        ``unavailable``) when no original has both kinds.
    """
    _check_resamples(resamples)
    oriented = leakage_oriented(values, higher_is_more_similar)
    wins, pairs = pair_counts(oriented, recognisable, groups)
    out: dict[str, Any] = {"pairs": int(pairs.sum()), "originals": len(pairs)}
    if not len(pairs):
        reason = "no original has both a recognisable and an unrecognisable reconstruction"
        return {**out, "agreement": None, "ci95": None, "per_original_mean": None, "unavailable": reason}
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, len(pairs), (min(_CHUNK, resamples - start), len(pairs)))
        draws.append(wins[idx].sum(1) / pairs[idx].sum(1))
    return {
        **out,
        "agreement": float(wins.sum() / pairs.sum()),
        "ci95": _interval(np.concatenate(draws)),
        "per_original_mean": float((wins / pairs).mean()),
    }


def overlaps(a: list[float] | None, b: list[float] | None) -> bool:
    """Whether two intervals overlap (an unknown interval counts as overlapping)."""
    return a is None or b is None or (a[0] <= b[1] and b[0] <= a[1])


def best_metric(figures: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The metric with the highest ``value`` among ``{metric: {value, ci95} | None}``, and whether its interval
    overlaps another metric's (then the ranking is not resolved by these data)."""
    known = {name: f for name, f in figures.items() if f is not None and f.get("value") is not None}
    if not known:
        return None
    ranked = sorted(known, key=lambda n: known[n]["value"], reverse=True)
    top = ranked[0]
    tied = [n for n in ranked[1:] if overlaps(known[top].get("ci95"), known[n].get("ci95"))]
    return {"metric": top, "value": known[top]["value"], "overlapping": tied}
