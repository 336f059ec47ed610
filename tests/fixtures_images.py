"""Tiny synthetic ``root/<class>/<i>.png`` image trees for data-module tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Distinct base colours; classes beyond the list get a colour derived from their index.
_BASE_COLOURS = [
    (220, 40, 40),
    (40, 200, 40),
    (40, 60, 220),
    (230, 220, 40),
    (200, 40, 210),
    (40, 210, 210),
    (240, 140, 30),
    (120, 120, 120),
]


def _class_colour(k: int) -> tuple[int, int, int]:
    if k < len(_BASE_COLOURS):
        return _BASE_COLOURS[k]
    return ((53 * k) % 256, (97 * k + 80) % 256, (151 * k + 160) % 256)


def make_image_tree(root: Path, classes: dict[str, int], size: int = 16, mode: str = "RGB", seed: int = 0) -> Path:
    """Write ``root/<class>/<i>.png`` for every class and return ``root``.

    Each class has its own base colour and stripe pattern (stripe period depends on the class index) plus
    seeded noise, so images of different classes differ and images within a class are not identical.

    Args:
        root: output folder (created, may already exist).
        classes: {class name: number of images}, written in insertion order (class index = position).
        size: side of the square images in pixels.
        mode: PIL mode of the saved files, e.g. ``RGB``, ``L`` or ``RGBA``.
        seed: noise seed; the same arguments always give the same pixels.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for k, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array(_class_colour(k), dtype=np.float64)
        period = k + 2
        stripes = (((xx if k % 2 == 0 else yy) // max(1, period // 2)) % 2).astype(np.float64)
        for i in range(count):
            pattern = base[None, None, :] * (0.6 + 0.4 * stripes[..., None])
            noise = rng.normal(0.0, 12.0, size=(size, size, 3))
            pixels = np.clip(pattern + noise, 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            if mode != "RGB":
                img = img.convert(mode)
            if mode == "RGBA":
                alpha = np.full((size, size), 255, dtype=np.uint8)
                alpha[: size // 4] = 128  # a partly transparent band, so the alpha channel is not trivial
                img.putalpha(Image.fromarray(alpha))
            img.save(folder / f"{i}.png")
    return root


def folder_datamodule(train_roots: Any, **kwargs: Any) -> Any:
    """An ImageFolderDataModule without validation split unless asked for (tests of the data module)."""
    from datamodules import ImageFolderDataModule

    kwargs.setdefault("val_fraction", 0.0)
    return ImageFolderDataModule(train_roots=train_roots, **kwargs)


def three_class_tree(tmp_path: Path) -> Path:
    """``tmp_path/train`` with classes cat, dog, fox of 5 images each."""
    return make_image_tree(tmp_path / "train", {"cat": 5, "dog": 5, "fox": 5})
