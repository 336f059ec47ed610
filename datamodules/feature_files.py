"""Reading and checking feature folders: ``<root>/{train,val,test}.npz`` + ``manifest.json``.

Each npz holds ``embeddings`` (N, D) float, ``labels`` (N,) int and ``ids`` (N,) str, as written by
``FeatureWriter``; ``manifest.json`` names the class list. Every check names the file, what was expected and
what was found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.checks import class_labels, example_ids, finite_floats

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("embeddings", "labels")


@dataclass
class FeatureSplit:
    """One split of a feature dataset."""

    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> FeatureSplit:
        """The first ``n`` examples."""
        return FeatureSplit(self.embeddings[:n], self.labels[:n], self.ids[:n])


def read_class_names(root: Path, given: list[str] | None) -> list[str]:
    """Class names from ``manifest.json`` (or ``given``); both present must agree."""
    manifest = root / "manifest.json"
    found = None
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text()).get("class_names")
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest} is not valid JSON ({err})") from err
    if found is not None and given is not None and list(found) != list(given):
        raise ValueError(f"data.class_names {given} differ from the class names in {manifest}: {found}")
    names = given if given is not None else found
    if names is None:
        raise FileNotFoundError(
            f"{manifest} does not exist and data.class_names is unset: the class list of the features is unknown "
            "(write the features with `synthpriv predict` and FeatureWriter, or give data.class_names)"
        )
    if len(names) < 2:
        raise ValueError(f"need at least 2 classes; {manifest} names {names}")
    return [str(n) for n in names]


def read_split(path: Path, num_classes: int) -> FeatureSplit:
    """Load and check one split file."""
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist (expected train.npz, val.npz, test.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path} lacks key(s) {missing}; it holds {sorted(data.files)} (expected embeddings, labels, ids)"
                )
            embeddings, labels = data["embeddings"], data["labels"]
            ids = data["ids"] if "ids" in data.files else None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable npz file ({err})") from err
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"{path}: 'embeddings' must be a non-empty (N, D) array; found shape {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{path}: 'embeddings' must be floating point; found {embeddings.dtype}")
    finite_floats(embeddings, f"{path} 'embeddings'", ("row", "feature"), 2, embeddings.dtype)
    labels = class_labels(
        labels, num_classes, f"{path} 'labels' ({num_classes} classes in the manifest)", count=embeddings.shape[0]
    )
    if ids is None:
        ids = [f"{path.stem}/{i}" for i in range(len(labels))]  # files written by other tools: position ids
    ids = example_ids(ids, f"{path} 'ids'", count=len(labels))
    return FeatureSplit(embeddings.astype(np.float32, copy=False), labels.astype(np.int64), ids)


def read_feature_folder(root: Path, num_classes: int, splits: tuple[str, ...] = SPLITS) -> dict[str, FeatureSplit]:
    """Every split of ``root``; all must have the same feature size."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: feature folder {root} does not exist")
    loaded = {split: read_split(root / f"{split}.npz", num_classes) for split in splits}
    sizes = {split: part.embeddings.shape[1] for split, part in loaded.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{root}: the splits have different feature sizes {sizes}; they must come from one backbone")
    return loaded
