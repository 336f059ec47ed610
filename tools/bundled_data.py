"""`synthpriv data`: materialise a real dataset shipped inside a package as train/val/test class folders.

animal-mnist (PyPI ``animal-mnist``, install with ``--no-deps``): 10,000 28x28 grayscale animal silhouettes,
10 classes of 1,000. digits (scikit-learn ``load_digits``): 1,797 8x8 handwritten digits, 10 classes.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tools.files import write_json_atomic

Dataset = Literal["animal-mnist", "digits"]
# Label order of animal-mnist as stated by the package (classes listed alphabetically, 1,000 each).
ANIMAL_MNIST_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
MANIFEST = "manifest.json"


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N,28,28) uint8, labels (N,) and class names from the installed animal-mnist package."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "synthpriv data --dataset animal-mnist needs the package animal-mnist: "
            "`pip install --no-deps animal-mnist` (make demo / make test install it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    # The package ships its arrays as gzip pickles; they come from an installed package, not user input.
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as handle:
        images = np.asarray(pickle.load(handle), dtype=np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as handle:
        labels = np.asarray(pickle.load(handle), dtype=np.int64)
    return images, labels, list(ANIMAL_MNIST_CLASSES)


def load_digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled digits as uint8 8x8 images (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64), [str(d) for d in range(10)]


LOADERS = {"animal-mnist": load_animal_mnist, "digits": load_digits_images}


def materialise_dataset(
    dataset: Dataset = "animal-mnist",
    out: str = "data/animal-mnist",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a bundled dataset as ``out/{train,val,test}/<class>/<id>.png`` plus ``out/manifest.json``.

    The folder is built beside ``out`` and renamed into place when complete. A rerun with the same options
    does nothing; with other options it stops instead of overwriting.

    Args:
        dataset: animal-mnist or digits.
        out: output folder.
        val_fraction: share of each class for validation.
        test_fraction: share of each class for testing.
        per_class: keep only this many images per class (seeded), e.g. for quick runs.
        seed: seed of the subsampling and the splits.
    """
    out_dir = Path(out)
    options = {
        "dataset": dataset,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "per_class": per_class,
        "seed": seed,
    }
    existing = _read_manifest(out_dir)
    if existing is not None:
        if existing["options"] == options:
            print(f"{out_dir} already holds {dataset} with these options; nothing to do")
            return out_dir
        raise FileExistsError(
            f"{out_dir} already holds a dataset made with other options {existing['options']}; "
            f"choose another --out or delete the folder (asked for {options})"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and has no {MANIFEST}; choose another --out")
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            "--val_fraction and --test_fraction must be in [0, 1) with a sum below 1; "
            f"got {val_fraction}, {test_fraction}"
        )
    images, labels, class_names = LOADERS[dataset]()
    index = np.arange(len(labels))
    if per_class is not None:
        rng = np.random.default_rng(seed)
        index = np.sort(
            np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(class_names))])
        )
    from datamodules.folders import stratified_split  # imports the datamodules package (torch): only here

    rest, test = stratified_split(labels[index], test_fraction, seed)
    train, val = stratified_split(labels[index][rest], val_fraction / (1 - test_fraction), seed + 1)
    splits = {"train": index[rest][train], "val": index[rest][val], "test": index[test]}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for split, members in splits.items():
            for name in class_names:
                (staging / split / name).mkdir(parents=True, exist_ok=True)
            for i in members:
                Image.fromarray(images[i]).save(staging / split / class_names[labels[i]] / f"{i:05d}.png")
        write_json_atomic(
            staging / MANIFEST,
            {
                "options": options,
                "class_names": class_names,
                "counts": {split: len(m) for split, m in splits.items()},
                "source": f"{dataset} as shipped in its package; file names are the package's example indices",
            },
        )
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {dataset} to {out_dir}: {counts} images, {len(class_names)} classes")
    return out_dir


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())
