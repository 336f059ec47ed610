"""Scanning and checking ``root/<class>/<image>`` trees; loading images as RGB."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LAYOUT = "<root>/<class name>/<image file>"


@dataclass(frozen=True)
class Sample:
    """One image file with its label index and stable example id."""

    path: Path
    label: int
    example_id: str


def scan_class_folders(root: str | Path, option: str) -> dict[str, list[Path]]:
    """Return {class name: sorted image files} for a class-folder tree, or raise naming what is wrong."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{option}: folder {root} does not exist; expected {LAYOUT}")
    if not root.is_dir():
        raise NotADirectoryError(f"{option}: {root} is a file; expected a folder laid out as {LAYOUT}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{option}: {root} has no class folders; expected {LAYOUT}")
    classes = {}
    empty = []
    for d in class_dirs:
        files = sorted(
            f
            for f in d.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
        if not files:
            empty.append(d.name)
        classes[d.name] = files
    if empty:
        raise ValueError(
            f"{option}: class folder(s) {', '.join(repr(e) for e in empty)} in {root} hold no images "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images"
        )
    return classes


def check_same_classes(expected: list[str], found: list[str], what: str) -> None:
    """Raise when a source's class folders differ from the dataset's class list (TCKR's label-order bug)."""
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ValueError(
            f"{what} has other classes than the dataset's class_names {expected}: {'; '.join(parts)}. "
            "Every source must hold the same class folders so label indices agree."
        )


def load_rgb(path: Path) -> Image.Image:
    """Open an image file and convert it to RGB (grayscale, palette and RGBA inputs alike)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def find_unreadable(samples: list[Sample]) -> list[tuple[Path, str]]:
    """Decode every file fully; return (path, reason) for those that fail."""
    bad = []
    for sample in samples:
        try:
            with Image.open(sample.path) as img:
                img.load()
        except Exception as err:  # PIL raises many types for truncated or foreign files
            bad.append((sample.path, f"{type(err).__name__}: {err}"))
    return bad


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with ``fraction`` of every class held out, seeded."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_held = round(fraction * len(idx))
        if fraction > 0 and len(idx) > 1:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def read_image_size(path: Path) -> int:
    """Side of the (square) image at ``path``; the longer side for non-square images."""
    with Image.open(path) as img:
        return max(img.size)
