"""feature-report's figures: AUROC vs k (k-Same), AUROC vs test noise, and LiRA AUC_MIA per anonymiser.

Figures are PNG files written atomically; the AUC_MIA bars show the mean over seeds for a seeded entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tools.files import atomic_path

FIGURES = ("auroc_vs_k.png", "auroc_vs_sigma.png", "auc_mia.png")


def plot_feature_report(rows: list[dict[str, Any]], out_dir: Path, title: str) -> None:
    """The three figures of ``FIGURES`` from feature-report rows, written atomically into ``out_dir``."""
    ksame = sorted((r["k"], r["auroc_pct"].get(0.0)) for r in rows if r["anonymiser"] == "ksame")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if ksame:
        ax.plot([k for k, _ in ksame], [a for _, a in ksame], "o-", label="k-Same")
    for r in rows:
        if r["anonymiser"] != "ksame" and r["auroc_pct"].get(0.0) is not None:
            ax.axhline(r["auroc_pct"][0.0], linestyle="--", label=r["label"], color=f"C{1 + rows.index(r) % 9}")
    ax.set(xlabel="k", ylabel="test AUROC x 100 (σ=0)", title=f"{title}: AUROC vs k")
    ax.legend(fontsize=7)
    _save(fig, out_dir / "auroc_vs_k.png")

    scales = [("auroc_pct", "test noise σ (probe's z-scored space)")]
    if any(len(r["auroc_real_pct"]) > 1 for r in rows):
        scales.append(("auroc_real_pct", "test noise σ x real training std"))
    fig, axes = plt.subplots(1, len(scales), figsize=(5 * len(scales), 3.5), squeeze=False, sharey=True)
    for ax, (key, xlabel) in zip(axes[0], scales):
        for r in rows:
            levels = sorted(r[key])
            ax.plot(levels, [r[key][v] for v in levels], "o-", label=r["label"])
        ax.set(xlabel=xlabel, ylabel="test AUROC x 100")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: AUROC vs σ", fontsize=9)
    _save(fig, out_dir / "auroc_vs_sigma.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    values = [(r["lira"] or {}).get("auc_mia_pct", np.nan) for r in rows]
    aware = [(r["lira_aware"] or {}).get("auc_mia_pct", np.nan) for r in rows]
    if np.isnan(aware).all():
        ax.bar(range(len(rows)), values, color="C3")
    else:
        ax.bar(np.arange(len(rows)) - 0.2, values, width=0.4, color="C3", label="shadows on real features")
        ax.bar(np.arange(len(rows)) + 0.2, aware, width=0.4, color="C0", label="anonymiser-aware shadows")
        ax.legend(fontsize=7)
    ax.axhline(50, color="k", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="LiRA AUC_MIA %", title=f"{title}: membership inference")
    _save(fig, out_dir / "auc_mia.png")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
