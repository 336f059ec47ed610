"""95 % bootstrap intervals for membership-inference figures (AUC, TPR at a fixed FPR).

Method (stated in every attack's ``metrics.json``): percentile bootstrap over examples (Efron & Tibshirani 1993,
ch. 13), ``resamples`` draws from a seeded generator.

- One target: *stratified* resampling, members and non-members each drawn with replacement at their own
  count, so every resample has the design's class balance. Each resample recomputes the AUC and, per FPR,
  the TPR at the best threshold whose FPR stays within it (the threshold is re-chosen per resample, so the
  interval includes the uncertainty of the threshold, not only of a binomial TPR).
- Leave-one-out (every shadow in turn the target): the figure is the mean over the K targets; examples are
  resampled jointly (one draw of example indices shared by all targets, whose membership differs), and each
  resample averages the K targets' figures.

All per-resample figures are computed in batch from ranks: AUC = (sum of member ranks - n1 (n1 + 1) / 2) /
(n1 n0) with average ranks for ties (the trapezoidal ROC area, ties scoring one half), and TPR at FPR f =
share of members scoring strictly above the (m + 1)-th largest non-member score, m = floor(f n0), which is
the highest TPR among thresholds with at most m false positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from privacy.metrics import supports_fpr

METHOD = (
    "percentile bootstrap over examples (members and non-members resampled separately for one target; "
    "examples resampled jointly for leave-one-out means), 95 % interval"
)
_CHUNK = 100  # resamples per batch: bounds memory at CHUNK x N scores


def batched_figures(scores: np.ndarray, is_member: np.ndarray, fprs: Sequence[float]) -> dict[str, np.ndarray]:
    """AUC and TPR at each FPR for every row of (B, N) ``scores`` / ``is_member`` -> {'auc': (B,), 'tpr@f': (B,)}.

    Rows without members or without non-members give NaN.
    """
    from scipy.stats import rankdata  # here, not at the top: tool start-up (synthpriv attack --help)

    member = np.asarray(is_member, dtype=bool)
    n1 = member.sum(axis=1).astype(np.float64)
    n0 = member.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        ranks = rankdata(scores, axis=1)
        auc = (np.where(member, ranks, 0.0).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
        # Non-member scores in descending order; members sink to the end as -inf.
        negatives = -np.sort(np.where(member, np.inf, -scores), axis=1)
        out = {"auc": auc}
        rows = np.arange(len(scores))
        for target in fprs:
            allowed = np.floor((target + 1e-12) * n0).astype(np.int64)  # false positives within FPR <= target
            threshold = np.where(allowed < n0, negatives[rows, np.minimum(allowed, member.shape[1] - 1)], -np.inf)
            above = (member & (scores > threshold[:, None])).sum(axis=1)
            out[f"tpr@{target:g}"] = above / n1
    bad = (n1 == 0) | (n0 == 0)
    for values in out.values():
        values[bad] = np.nan
    return out


def _percentile_interval(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(finite, [2.5, 97.5])]


def _collect(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def _intervals(draws: dict[str, np.ndarray], fprs: Sequence[float], negatives: Sequence[int]) -> dict[str, Any]:
    result: dict[str, Any] = {"auc_ci95": _percentile_interval(draws["auc"])}
    for target in fprs:
        supported = all(supports_fpr(n, target) for n in negatives)
        result[f"tpr@{target:g}_ci95"] = _percentile_interval(draws[f"tpr@{target:g}"]) if supported else None
    return result


def bootstrap_intervals(
    scores: np.ndarray, is_member: np.ndarray, fprs: Sequence[float], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Stratified-bootstrap 95 % intervals of one target's AUC and TPR at each FPR.

    Args:
        scores: (N,) membership scores, higher meaning member (finite; checked by ``attack_metrics``).
        is_member: (N,) bool.
        fprs: the FPRs of the ``tpr@<fpr>`` figures.
        resamples: number of bootstrap draws (at least 100).
        seed: seed of the draws.

    Returns:
        ``auc_ci95`` and ``tpr@<fpr>_ci95`` as [low, high]; None for an FPR the non-members cannot support.
    """
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100 for a 95 % percentile interval; got {resamples}")
    scores = np.asarray(scores, dtype=np.float64)
    member = np.asarray(is_member, dtype=bool)
    pos, neg = np.flatnonzero(member), np.flatnonzero(~member)
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        idx = np.concatenate([rng.choice(pos, (b, len(pos))), rng.choice(neg, (b, len(neg)))], axis=1)
        chunks.append(batched_figures(scores[idx], member[idx], fprs))
    return _intervals(_collect(chunks), fprs, [len(neg)])


def leave_one_out_intervals(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], fprs: Sequence[float], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Bootstrap 95 % intervals of the mean over targets of AUC and TPR at each FPR (leave-one-out).

    Args:
        runs: [(scores (N,), is_member (N,)), ...], one pair per target, all over the same N examples.
        fprs, resamples, seed: as in ``bootstrap_intervals``.
    """
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100 for a 95 % percentile interval; got {resamples}")
    n = len(runs[0][0])
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, n, (min(_CHUNK, resamples - start), n))
        per_target = [batched_figures(np.asarray(s, np.float64)[idx], np.asarray(m, bool)[idx], fprs) for s, m in runs]
        chunks.append({key: np.nanmean([t[key] for t in per_target], axis=0) for key in per_target[0]})
    negatives = [int((~np.asarray(m, bool)).sum()) for _, m in runs]
    return _intervals(_collect(chunks), fprs, negatives)
