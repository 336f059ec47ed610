"""Tiny feature folders (Gaussian class blobs) laid out like FeatureWriter's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASS_NAMES = ["ant", "bee", "cow"]


def make_feature_folder(
    root: Path, dim: int = 8, sizes: tuple[int, int, int] = (60, 30, 30), seed: int = 0, spread: float = 1.0
) -> Path:
    """``root/{train,val,test}.npz`` (embeddings, labels, ids) + ``manifest.json`` with 3 classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(len(CLASS_NAMES), dim))
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), sizes):
        labels = np.arange(n) % len(CLASS_NAMES)
        x = centres[labels] + spread * rng.normal(size=(n, dim))
        ids = np.asarray([f"{split}/{CLASS_NAMES[y]}/{i}" for i, y in enumerate(labels)])
        np.savez(root / f"{split}.npz", embeddings=x.astype(np.float32), labels=labels.astype(np.int64), ids=ids)
    (root / "manifest.json").write_text(json.dumps({"class_names": CLASS_NAMES, "feature_dim": dim}))
    return root
