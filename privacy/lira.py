"""LiRA (Carlini et al. 2022) and baselines as pure numpy functions over saved per-example outputs.

Shapes: ``K`` shadow (reference) models, ``N`` examples, ``Q`` query augmentations, ``C`` classes.
Every attack returns one membership score per example, higher meaning "more likely a member".

- ``scaled_confidence``: the reference score, log p_y - log sum_{y' != y} p_y', from logits via a float64
  softmax (the stable logit of the true-class probability).
- ``lira_online``: per-example Gaussians of the shadows' scores when IN and when OUT (centre = median);
  score = log N(s; IN) - log N(s; OUT), averaged over augmentations.
- ``lira_offline``: OUT Gaussian only; one-sided test log Pr[Z <= s], Z ~ N(OUT) (the paper's offline test;
  ``one_sided=False`` gives the reference code's two-sided -log-density variant).
- ``variance``: 'per_example' std per example; 'fixed' one std per side pooled over all examples after
  centring each example on its median (the paper's global variance, as in TF Privacy's library; the reference
  script instead takes the uncentred std of the IN scores for both sides); 'tckr_global' pools mean *and*
  std over all examples, TCKR's variant (``seeds.md`` §3.4), which reduces LiRA to a global threshold.
- ``global_threshold``: the target's own score (LOSS-style baseline).

Per example, IN and OUT references are cut to the smallest count over all examples (the reference code's
``in_size``/``out_size`` truncation), which removes a small-K bias under leave-one-out evaluation.

Minimum references (``minimum_shadows`` gives K for a balanced mask): 'fixed' and 'per_example' centre
each example on the median of its references and need at least two per side used (with one, every residual is
exactly 0 and the spread vanishes); 'tckr_global' pools over examples and needs one. A spread of zero is
refused, never replaced by a tiny constant. Inputs are checked: finite scores, one view count Q shared by
target and shadows, labels in range.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# scipy is imported inside the functions that use it: `synthpriv attack --help` must start in well under 2 s.
from privacy.checks import class_labels, finite_floats

Variance = Literal["per_example", "fixed", "tckr_global"]
TckrScore = Literal["logit_stable", "logit_unstable", "logits"]
Attack = Literal["online", "offline", "global", "rmia"]


def _onehot(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """True-class mask broadcast to logits of shape (N, C), (N, Q, C) or (K, N, Q, C), labels (N,)."""
    n_axis = {2: 0, 3: 0, 4: 1}.get(len(shape))
    if n_axis is None:
        raise ValueError(f"logits must be (N, C), (N, Q, C) or (K, N, Q, C); got shape {shape}")
    labels = class_labels(labels, shape[-1], "labels", count=shape[n_axis])
    view = [1] * (len(shape) - 1) + [shape[-1]]
    view[n_axis] = -1
    return np.broadcast_to(np.eye(shape[-1], dtype=bool)[labels].reshape(view), shape)


def scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y - log sum_{y'!=y} p_y' computed from logits in float64 (no log(0), no overflow)."""
    axes = {2: ("example", "class"), 3: ("example", "view", "class"), 4: ("model", "example", "view", "class")}
    from scipy.special import logsumexp

    z = finite_floats(logits, "logits", axes.get(np.ndim(logits)), ndim=(2, 3, 4))
    onehot = _onehot(labels, z.shape)
    # The softmax normaliser cancels: z_y - logsumexp over the other classes.
    return np.where(onehot, z, -np.inf).max(-1) - logsumexp(np.where(onehot, -np.inf, z), axis=-1)


def tckr_score(values: np.ndarray, labels: np.ndarray, kind: TckrScore) -> np.ndarray:
    """TCKR's three scores applied to ``values`` exactly as its notebook does (TCKR-compatible, flagged).

    TCKR feeds raw logits to all three; only 'logits' (z_y - max_{y'!=y} z_y') is sound on logits, the two
    probability formulas give NaN where a logit is negative. Pass softmax probabilities for the sound variant.
    """
    v = np.asarray(values, dtype=np.float64)
    onehot = _onehot(labels, v.shape)
    true = np.where(onehot, v, 0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "logit_stable":
            return np.log(true) - np.log(np.where(onehot, 0, v).sum(-1))
        if kind == "logit_unstable":
            return np.log(true) - np.log(1 - true)
    return true - np.where(onehot, -np.inf, v).max(-1)


def _split_in_out(shadow_scores: np.ndarray, in_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N, Q) scores -> IN and OUT copies with the other side set to NaN."""
    s = finite_floats(shadow_scores, "shadow scores", ("model", "example", "view")[: np.ndim(shadow_scores)], (2, 3))
    if s.ndim == 2:
        s = s[..., None]
    mask = np.asarray(in_mask, dtype=bool)
    if mask.shape != s.shape[:2]:
        raise ValueError(f"in_mask has shape {mask.shape} but the shadow scores are (K, N) = {s.shape[:2]}")
    m = mask[..., None]
    return _equalize(np.where(m, s, np.nan)), _equalize(np.where(m, np.nan, s))


def _equalize(side: np.ndarray) -> np.ndarray:
    """Keep the first m models per example, m = the smallest count over examples (as the reference does).

    Without this, leave-one-out on a balanced mask gives members one IN reference fewer than OUT ones, and
    the noisier IN median biases online LiRA below chance (AUC 0.43 at K=8 on data without any leak).
    """
    valid = ~np.isnan(side)
    keep = valid.sum(axis=0).min()
    return np.where(valid & (np.cumsum(valid, axis=0) <= keep), side, np.nan)


def _gaussian(side: np.ndarray, variance: Variance, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Centre and spread per (example, augmentation) from a NaN-masked (K, N, Q) array.

    Raises:
        ValueError: fewer references per example than the variance mode needs, or a spread of zero.
    """
    counts = (~np.isnan(side)).sum(axis=0)[:, 0]
    if (counts == 0).any():
        missing = int((counts == 0).sum())
        raise ValueError(f"{missing} examples have no {what} shadow model; every example needs at least one")
    need = 1 if variance == "tckr_global" else 2
    if counts.min() < need:
        raise ValueError(
            f"variance '{variance}' needs at least {need} {what} reference models per example; this design gives "
            f"{int(counts.min())} (with one, the spread around each example's median is exactly 0 and scores tie): "
            "train more shadow models (minimum K per attack mode: see privacy.lira.minimum_shadows)"
        )
    if variance == "tckr_global":
        centre, spread = np.full(side.shape[1:], np.nanmean(side)), np.full(side.shape[1:], np.nanstd(side))
    else:
        centre = np.nanmedian(side, axis=0)
        spread = np.full(side.shape[1:], np.nanstd(side - centre)) if variance == "fixed" else np.nanstd(side, axis=0)
    flat = np.flatnonzero((spread == 0).any(axis=1))
    if len(flat):
        raise ValueError(
            f"the {what} reference scores have zero spread for {len(flat)} examples (first: example {int(flat[0])}): "
            "the shadow models give identical scores there (duplicated or constant models?); LiRA's Gaussians "
            "are undefined" + (" (try variance 'fixed')" if variance == "per_example" else "")
        )
    return centre, spread


def _as_nq(target_scores: np.ndarray, shadow_shape: tuple[int, ...]) -> np.ndarray:
    """Target scores as (N, Q), checked to be finite and to match the shadows' N examples and Q views."""
    t = finite_floats(target_scores, "target scores", ("example", "view")[: np.ndim(target_scores)], (1, 2))
    t = t[:, None] if t.ndim == 1 else t
    n, q = shadow_shape[1], shadow_shape[2] if len(shadow_shape) == 3 else 1
    if t.shape != (n, q):
        raise ValueError(
            f"target scores are (N, Q) = {t.shape} but the shadows' are ({n}, {q}): the target must be queried "
            "on the same examples under the same query views (Q) as the shadows"
        )
    return t


def minimum_shadows(
    attack: Attack, variance: Variance = "fixed", leave_one_out: bool = False, rmia_offline: bool = False
) -> int:
    """Smallest K (balanced mask: each example IN for K/2 models) with which ``attack`` is defined.

    With a target, each example has K/2 IN and K/2 OUT references; under leave-one-out the target shadow is
    removed and sides are equalised, leaving K/2 - 1 per side. 'fixed'/'per_example' need 2 per side,
    'tckr_global' 1; RMIA needs one reference model (offline: one OUT model per example); the global
    threshold needs none, but the shadows file holds an even K >= 2.

    =============================  ============  ==============
    attack (variance)              with target   leave-one-out
    =============================  ============  ==============
    online / offline LiRA          4             6
    online / offline, tckr_global  2             4
    rmia online                    2             2
    rmia offline (rmia_offline_a)  2             4
    global threshold               2             2
    =============================  ============  ==============
    """
    if attack in ("online", "offline"):
        per_side = 1 if variance == "tckr_global" else 2
        return 2 * (per_side + 1) if leave_one_out else 2 * per_side
    return 4 if attack == "rmia" and rmia_offline and leave_one_out else 2


def lira_online(
    target_scores: np.ndarray, shadow_scores: np.ndarray, in_mask: np.ndarray, variance: Variance = "per_example"
) -> np.ndarray:
    """Online LiRA: log-likelihood ratio of IN vs OUT Gaussians, averaged over augmentations -> (N,)."""
    from scipy.stats import norm

    s_in, s_out = _split_in_out(shadow_scores, in_mask)
    t = _as_nq(target_scores, s_in.shape)
    mu_in, sd_in = _gaussian(s_in, variance, "IN")
    mu_out, sd_out = _gaussian(s_out, variance, "OUT")
    ratio = norm.logpdf(t, mu_in, sd_in) - norm.logpdf(t, mu_out, sd_out)
    return ratio.mean(axis=1)


def lira_offline(
    target_scores: np.ndarray,
    shadow_scores: np.ndarray,
    in_mask: np.ndarray,
    variance: Variance = "per_example",
    one_sided: bool = True,
) -> np.ndarray:
    """Offline LiRA from OUT models only -> (N,)."""
    from scipy.stats import norm

    _, s_out = _split_in_out(shadow_scores, in_mask)
    t = _as_nq(target_scores, s_out.shape)
    mu_out, sd_out = _gaussian(s_out, variance, "OUT")
    if one_sided:
        return norm.logcdf(t, mu_out, sd_out).mean(axis=1)
    return -norm.logpdf(t, mu_out, sd_out).mean(axis=1)


def global_threshold(target_scores: np.ndarray) -> np.ndarray:
    """LOSS-style baseline: the target's own scaled confidence, averaged over augmentations -> (N,)."""
    t = finite_floats(target_scores, "target scores", ("example", "view")[: np.ndim(target_scores)], (1, 2))
    return (t[:, None] if t.ndim == 1 else t).mean(axis=1)


def leave_one_out(
    shadow_scores: np.ndarray, in_mask: np.ndarray, attack: str = "online", variance: Variance = "fixed"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each shadow in turn as the target, the others as references: [(scores (N,), is_member (N,)), ...]."""
    s = finite_floats(shadow_scores, "shadow scores", ("model", "example", "view")[: np.ndim(shadow_scores)], (2, 3))
    mask = np.asarray(in_mask, dtype=bool)
    if attack in ("online", "offline", "global") and len(s) < minimum_shadows(attack, variance, leave_one_out=True):
        need = minimum_shadows(attack, variance, leave_one_out=True)
        raise ValueError(
            f"leave-one-out {attack} LiRA with variance '{variance}' needs K >= {need} shadow models; got K={len(s)} "
            "(each shadow in turn is the target, leaving K/2 - 1 IN and OUT references per example)"
        )
    results = []
    for k in range(s.shape[0]):
        refs, ref_mask = np.delete(s, k, axis=0), np.delete(mask, k, axis=0)
        if attack == "online":
            scores = lira_online(s[k], refs, ref_mask, variance)
        elif attack == "offline":
            scores = lira_offline(s[k], refs, ref_mask, variance)
        elif attack == "global":
            scores = global_threshold(s[k])
        else:
            raise ValueError(f"attack must be online, offline or global; got {attack!r}")
        results.append((scores, mask[k]))
    return results


def true_class_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p_y = softmax(logits)_y in float64, RMIA's per-example signal; logits (..., C) as in ``scaled_confidence``."""
    axes = {2: ("example", "class"), 3: ("example", "view", "class"), 4: ("model", "example", "view", "class")}
    from scipy.special import logsumexp

    z = finite_floats(logits, "logits", axes.get(np.ndim(logits)), ndim=(2, 3, 4))
    onehot = _onehot(labels, z.shape)
    return np.exp(np.where(onehot, z, -np.inf).max(-1) - logsumexp(z, axis=-1))
