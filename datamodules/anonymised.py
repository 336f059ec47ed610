"""Anonymised training features (k-Same, offline CVAE replica), computed once and cached as npz.

The cache file name carries what determines its content: the anonymiser and its settings and a short hash of
the source file (and of the CVAE checkpoint), so a changed input never reuses a stale file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.feature_files import FeatureSplit, read_split
from privacy.ksame import ksame
from tools.files import file_sha256, write_bytes_atomic


def ksame_train(train: FeatureSplit, source: Path, k: int, cache_dir: Path, num_classes: int) -> FeatureSplit:
    """k-Same of the training features (class-agnostic; each sample keeps its own label, as the original)."""
    if not 2 <= k <= len(train):
        raise ValueError(f"data.k={k}: k-Same needs 2 <= k <= N, and {source} holds N={len(train)} training examples")
    path = cache_dir / f"train_ksame-{k}-{file_sha256(source)[:10]}.npz"
    if path.is_file():
        return read_split(path, num_classes)
    centroids, labels = ksame(train.embeddings, train.labels, k)
    # The centroids replace the first N - N mod k real examples: their ids stay the members' ids.
    _write(path, FeatureSplit(centroids, labels, train.ids[: len(labels)]))
    return read_split(path, num_classes)


def cvae_train(
    train: FeatureSplit,
    checkpoint: Path,
    seed: int,
    std: float,
    cache_dir: Path,
    num_classes: int,
) -> FeatureSplit:
    """The offline CVAE replica: one synthetic sample per real training label, z = std * eps, seeded."""
    from lightning_modules.cvae import cvae_replica, load_feature_cvae

    if not checkpoint.is_file():
        raise FileNotFoundError(f"data.cvae_checkpoint: {checkpoint} does not exist (train one with FeatureCVAE)")
    path = cache_dir / f"train_cvae-s{seed}-std{std:g}-{file_sha256(checkpoint)[:10]}.npz"
    if path.is_file():
        return read_split(path, num_classes)
    model = load_feature_cvae(checkpoint, train.embeddings.shape[1], num_classes)
    samples = cvae_replica(model, train.labels, seed=seed, std=std)
    ids = [f"cvae-s{seed}/{i}" for i in range(len(samples))]  # synthetic: no real example behind a row
    _write(path, FeatureSplit(samples.astype(np.float32), train.labels.copy(), ids))
    return read_split(path, num_classes)


def _write(path: Path, split: FeatureSplit) -> None:
    arrays = {"embeddings": split.embeddings, "labels": split.labels, "ids": np.asarray(split.ids)}
    write_bytes_atomic(path, lambda handle: np.savez(handle, **arrays))
