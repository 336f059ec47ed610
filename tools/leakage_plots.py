"""PNG of the synthetic images most similar to a real image (``privacy.image_leakage.nearest_real``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.files import atomic_path


def _as_hwc(image: Any, what: str) -> np.ndarray:
    """An (H, W, 3) uint8 or [0, 1] float image, or a PIL image -> (H, W, 3) array imshow accepts."""
    arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:  # (3, H, W) tensor layout
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) or (3, H, W) RGB image; found shape {arr.shape}")
    return arr if arr.dtype == np.uint8 else np.clip(arr.astype(np.float32), 0.0, 1.0)


def write_closest_pairs_png(
    result: dict[str, Any],
    synthetic: Sequence[Any],
    real: Sequence[Any],
    path: str | Path,
    k: int = 8,
    synthetic_names: Sequence[str] | None = None,
    real_names: Sequence[str] | None = None,
) -> list[tuple[int, int, float]]:
    """Write the ``k`` synthetic images closest to a real one, each beside that real image, to ``path`` atomically.

    Args:
        result: the dict of ``nearest_real`` (``cosine`` and ``index`` per synthetic image, ``threshold``).
        synthetic, real: the images in the rows' order ((H, W, 3) uint8 or [0, 1] float arrays, (3, H, W)
            tensors or PIL images); only the shown ones are read.
        path: the PNG to write.
        k: pairs shown (fewer when there are fewer synthetic images), highest cosine first, 4 pairs a row.
        synthetic_names, real_names: labels (default: row numbers).

    Returns:
        The (synthetic row, real row, cosine) shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from privacy.image_leakage import closest_pairs

    if len(synthetic) != len(result["cosine"]):
        raise ValueError(f"{len(synthetic)} synthetic images for {len(result['cosine'])} nearest_real rows")
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    pairs = closest_pairs(result, k)
    per_row = min(4, len(pairs))
    rows = -(-len(pairs) // per_row)
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(2.6 * per_row * 1.6, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, (s, r, cos) in enumerate(pairs):
        left, right = axes[n // per_row, 2 * (n % per_row)], axes[n // per_row, 2 * (n % per_row) + 1]
        left.imshow(_as_hwc(synthetic[s], f"synthetic image {s}"), interpolation="nearest")
        right.imshow(_as_hwc(real[r], f"real image {r}"), interpolation="nearest")
        flag = " COPY?" if cos > result.get("threshold", np.inf) else ""
        syn_label = str(synthetic_names[s])[-18:] if synthetic_names else s
        left.set_title(f"syn {syn_label}\ncos={cos:.4f}{flag}", fontsize=6)
        right.set_title(f"real {str(real_names[r])[-18:] if real_names else r}", fontsize=6)
    fig.suptitle("synthetic (left) and its most similar real image (right), by embedding cosine", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return pairs
