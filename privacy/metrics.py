"""Membership-inference metrics: ROC, AUC, balanced accuracy, TPR at low FPR, AOP, log-log ROC plot.

Scores follow one convention everywhere: higher means "more likely a member".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from privacy.checks import finite_floats

DEFAULT_FPRS = (0.1, 0.01, 0.001, 1e-4, 1e-5)


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = finite_floats(np.ravel(scores), "attack scores", ("example",))
    is_member = np.asarray(is_member).astype(bool).ravel()
    if scores.shape != is_member.shape:
        raise ValueError(f"scores has {scores.size} values but is_member has {is_member.size}")
    if is_member.all() or not is_member.any():
        raise ValueError("is_member must contain both members and non-members")
    return scores, is_member


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) over all thresholds, from (0, 0) to (1, 1)."""
    from sklearn.metrics import roc_curve as _sk_roc_curve  # here: sklearn costs ~0.5 s of tool start-up

    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = _sk_roc_curve(is_member, scores, drop_intermediate=False)
    return fpr, tpr


def supports_fpr(negatives: int, target: float) -> bool:
    """Whether ``negatives`` non-members can measure a TPR at FPR ``target``: at least 1/target of them.

    With fewer, the only threshold with FPR <= target is the one with zero false positives, so the figure
    says nothing about that FPR (Carlini et al. 2022, section 4.2: low-FPR figures need enough negatives).
    """
    return negatives * target >= 1 - 1e-9


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among thresholds whose FPR is at most ``target`` (check ``supports_fpr`` first)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, fprs: Sequence[float] = DEFAULT_FPRS) -> dict[str, Any]:
    """AUC, balanced accuracy and TPR at each FPR in ``fprs`` (keys ``tpr@<fpr>``).

    A TPR at an FPR that the number of non-members cannot support (fewer than 1/FPR, ``supports_fpr``) is
    None and the FPR is listed under ``unsupported_fprs``; it is never reported as a figure.
    """
    scores, is_member = _check(scores, is_member)
    fpr, tpr = roc_curve(scores, is_member)
    negatives = int((~is_member).sum())
    result: dict[str, Any] = {
        "auc": float(np.trapezoid(tpr, fpr)),
        # Best accuracy on a balanced set over all thresholds: 1 - (FPR + FNR) / 2.
        "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
        "members": int(is_member.sum()),
        "non_members": negatives,
        "unsupported_fprs": [float(t) for t in fprs if not supports_fpr(negatives, t)],
    }
    for target in fprs:
        result[f"tpr@{target:g}"] = tpr_at_fpr(fpr, tpr, target) if supports_fpr(negatives, target) else None
    return result


def aop(accuracy_pct: float, auc_pct: float) -> float:
    """TCKR's Accuracy Over Privacy: accuracy x (50 / AUC_MIA)^2, both in percent (``seeds.md`` §3.4).

    An AUC_MIA below 50 % is an attack pointing the wrong way: flipping its scores gives 100 - AUC, so the
    leakage is measured on the attack's better side, max(AUC, 100 - AUC), and AOP never exceeds the accuracy
    (TCKR's formula alone gave 156.67 at AUC 39 %). Reports flag such rows (``auc_below_chance``).

    Raises:
        ValueError: accuracy outside [0, 100] or AUC outside (0, 100] (percent, not fractions).
    """
    if not 0 <= accuracy_pct <= 100:
        raise ValueError(f"accuracy must be in percent, in [0, 100]; got {accuracy_pct}")
    if not 0 < auc_pct <= 100:
        raise ValueError(f"AUC_MIA must be in percent, in (0, 100]; got {auc_pct}")
    return accuracy_pct * (50.0 / max(auc_pct, 100.0 - auc_pct)) ** 2


def aop_interval(accuracy_pct: float, auc_low_pct: float, auc_high_pct: float) -> list[float]:
    """AOP's range over an AUC_MIA interval with the accuracy held fixed ([low, high]).

    AOP peaks at AUC 50 % (it equals the accuracy there) and falls on both sides, so an interval that holds 50 %
    tops out at the accuracy.
    """
    ends = [aop(accuracy_pct, max(auc_low_pct, 1e-9)), aop(accuracy_pct, auc_high_pct)]
    top = accuracy_pct if auc_low_pct <= 50 <= auc_high_pct else max(ends)
    return [min(ends), top]


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Log-log ROC of several attacks (axes 1e-5..1, chance diagonal) written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools.files import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, 1e-5), np.maximum(tpr, 1e-5), label=label)
    ax.plot([1e-5, 1], [1e-5, 1], "k--", linewidth=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-5, 1), ylim=(1e-5, 1), xlabel="FPR", ylabel="TPR", title=title)
    ax.legend(fontsize=7, loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
