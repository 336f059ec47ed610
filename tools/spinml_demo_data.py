"""`synthpriv spinml-demo-data`: a small dataset in SpinML's husky layout, made from real images shipped in packages.

Objects are animal-mnist silhouettes (white animals on black, 28x28; package ``animal-mnist``), the object mask is
the silhouette thresholded at ``threshold``. They are tinted, scaled and pasted onto crops of scikit-learn's two
bundled photos (``load_sample_images``: china.jpg for the real backgrounds, flower.jpg for the "generated" ones).
The class is the animal class. No diffusion model is involved: the three levels imitate what each privacy level
keeps of the real foreground (reference/seeds.md §1.1), so leakage metrics have something to separate:

* ``L2_L0``: the real object itself (same shape, place and texture), slightly re-tinted and with pixel noise;
* ``L1_L0``: the real object's shape and place only, filled with a new flat colour and outlined (edges kept);
* ``L0_L0``: another animal-mnist image of the same class, at a random size, place and tint;

and every synthetic background is a fresh crop of the other photo (L0). Written (``out``)::

    real/raw/<name>.png                                   composited real images
    real/raw_split/{foreground,background,mask}/<name>.png  object on black, photo with the object cut out,
                                                          0/255 mask
    synthetic/L{0,1,2}_L0/{foreground,background,mask}/<name>.png   README layout
    synthetic/L{0,1,2}_L0/clean/<name>.png                composited (code layout; with ``write_clean``)
    manifest.json                                         options, class names, counts, sources

``<name>`` is ``<k>_<class>`` (e.g. ``0003_cat``): the class is the second underscore-separated token, SpinML's
naming, so ``SpinMLDataModule(label_pattern=default, class_names=<manifest class_names>)`` reads it. The folder is
built beside ``out`` and renamed into place when complete; a rerun with the same options does nothing, other
options are refused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tools.files import write_json_atomic

LEVELS = ("L0_L0", "L1_L0", "L2_L0")
MANIFEST = "manifest.json"


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (a third to two thirds of the photo's short side) resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, 2 * min(h, w) // 3 + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def _place(silhouette: np.ndarray, size: int, threshold: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The silhouette scaled to 45-75 % of ``size`` at a random place: (grey (H,W) float, mask (H,W) bool)."""
    side = round(size * rng.uniform(0.45, 0.75))
    grey = np.asarray(Image.fromarray(silhouette).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float64)
    y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    full = np.zeros((size, size), dtype=np.float64)
    full[y : y + side, x : x + side] = grey
    return full, full > threshold


def _tinted(grey: np.ndarray, mask: np.ndarray, tint: np.ndarray) -> np.ndarray:
    return np.clip(grey[..., None] * tint[None, None, :], 0, 255).astype(np.uint8) * mask[..., None]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _write(folder: Path, name: str, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{name}.png")


def _composite(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Batched compositing (N,H,W,3) through (N,H,W) masks with the data module's exact rule."""
    from datamodules.spinml_layout import composite_uint8  # imports torch-heavy datamodules only when building

    out = composite_uint8(
        torch.from_numpy(fg).permute(0, 3, 1, 2),
        torch.from_numpy(bg).permute(0, 3, 1, 2),
        torch.from_numpy(mask)[:, None],
    )
    return out.permute(0, 2, 3, 1).numpy()


def build_spinml_demo(
    out: str = "data/spinml-demo",
    classes: list[str] | None = None,
    per_class: int = 20,
    size: int = 128,
    threshold: int = 64,
    write_clean: bool = True,
    seed: int = 0,
    grey: bool = False,
    synthetic_levels: bool = True,
) -> Path:
    """Write a small SpinML husky-layout dataset from animal-mnist objects on real photo crops.

    Args:
        out: output folder (must not exist, be empty, or hold a build with the same options).
        classes: animal-mnist classes to use (default cat, dog, horse, sheep); the class list of the manifest.
        per_class: images per class in real/raw and in each level.
        size: side of the square images in pixels.
        threshold: grey level above which a silhouette pixel belongs to the object (0..254).
        write_clean: also write each level's composited images to clean/ (the code's layout).
        seed: seed of every draw (objects, crops, tints, places).
        grey: untinted objects on grey photo crops (luminance in all 3 channels), for a 1-channel generator such
            as the TCKR CPU study's; the same draws as a colour build otherwise.
        synthetic_levels: also write the hand-made synthetic levels; false: real/ only (e.g. a study that
            generates its levels with a diffusion model).
    """
    from tools.bundled_data import ANIMAL_MNIST_CLASSES, load_animal_mnist

    classes = list(classes) if classes is not None else ["cat", "dog", "horse", "sheep"]
    unknown = [c for c in classes if c not in ANIMAL_MNIST_CLASSES]
    if unknown or len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(
            f"--classes: expected at least 2 distinct animal-mnist classes from {ANIMAL_MNIST_CLASSES}; found {classes}"
        )
    if not 1 <= per_class <= 500:
        raise ValueError(f"--per_class: expected 1..500 images per class; found {per_class}")
    if size < 16:
        raise ValueError(f"--size: expected at least 16 pixels; found {size}")
    if not 0 <= threshold < 255:
        raise ValueError(f"--threshold: expected a grey level in 0..254; found {threshold}")
    out_dir = Path(out)
    options = {
        "classes": classes,
        "per_class": per_class,
        "size": size,
        "threshold": threshold,
        "write_clean": write_clean,
        "seed": seed,
        # newer options are recorded only when not default, so earlier builds still match on a rerun
        **({"grey": True} if grey else {}),
        **({"synthetic_levels": False} if not synthetic_levels else {}),
    }
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        if existing.get("options") == options:
            print(f"{out_dir} already holds the SpinML demo data with these options; nothing to do")
            return out_dir
        raise FileExistsError(
            f"{out_dir} holds a SpinML demo build with other options {existing.get('options')}; choose another "
            f"--out or delete the folder (asked for {options})"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists, is not an empty folder and has no {MANIFEST}; choose another --out")

    from sklearn.datasets import load_sample_images

    images, labels, _ = load_animal_mnist()
    photos = load_sample_images()
    real_photo, synthetic_photo = photos.images[0], photos.images[1]  # china.jpg, flower.jpg
    rng = np.random.default_rng(seed)
    names, real_idx, other_idx = [], [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == ANIMAL_MNIST_CLASSES.index(c)))[: 2 * per_class]
        real_idx += list(members[:per_class])
        other_idx += list(members[per_class:])
        names += [f"{len(names) + k:04d}_{c}" for k in range(per_class)]
    n = len(names)
    arrays: dict[str, dict[str, np.ndarray]] = {
        part: {k: np.zeros((n, size, size, 3), np.uint8) for k in ("foreground", "background")}
        for part in ("real", *LEVELS)
    }
    masks = {part: np.zeros((n, size, size), np.uint8) for part in arrays}
    for i in range(n):
        grey_obj, mask = _place(images[real_idx[i]], size, threshold, rng)
        tint = rng.uniform(0.45, 1.0, 3)
        if grey:
            tint = np.ones(3)
        real_fg = _tinted(grey_obj, mask, tint)
        arrays["real"]["foreground"][i] = real_fg
        arrays["real"]["background"][i] = _crop(real_photo, size, rng)
        masks["real"][i] = masks["L1_L0"][i] = masks["L2_L0"][i] = mask * np.uint8(255)
        noise = rng.normal(0.0, 8.0, grey_obj.shape)
        retint = tint * rng.uniform(0.9, 1.1, 3)
        arrays["L2_L0"]["foreground"][i] = _tinted(np.clip(grey_obj + noise, 0, 255), mask, retint)
        flat = np.where(_outline(mask)[..., None], 20, rng.uniform(60, 255, 3)[None, None, :]).astype(np.uint8)
        arrays["L1_L0"]["foreground"][i] = flat * mask[..., None]
        grey0, mask0 = _place(images[other_idx[i]], size, threshold, rng)
        arrays["L0_L0"]["foreground"][i] = _tinted(grey0, mask0, rng.uniform(0.45, 1.0, 3))
        masks["L0_L0"][i] = mask0 * np.uint8(255)
        for level in LEVELS:
            arrays[level]["background"][i] = _crop(synthetic_photo, size, rng)

    if grey:  # luminance (ITU-R 601) in all three channels, as a grey generator sees them
        for part in arrays:
            for key in arrays[part]:
                lum = arrays[part][key].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
                arrays[part][key] = np.repeat(np.round(lum).astype(np.uint8)[..., None], 3, axis=-1)
    levels = list(LEVELS) if synthetic_levels else []
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for part in ["real", *levels]:
            fg, bg, mask = arrays[part]["foreground"], arrays[part]["background"], masks[part]
            composited = _composite(fg, bg, mask)
            base = staging / "real" / "raw_split" if part == "real" else staging / "synthetic" / part
            cut = bg * (mask[..., None] == 0) if part == "real" else bg  # the real background has the object cut out
            for i, name in enumerate(names):
                _write(base / "foreground", name, fg[i])
                _write(base / "background", name, cut[i])
                _write(base / "mask", name, mask[i])
                if part == "real":
                    _write(staging / "real" / "raw", name, composited[i])
                elif write_clean:
                    _write(base / "clean", name, composited[i])
        write_json_atomic(
            staging / MANIFEST,
            {
                "options": options,
                "class_names": classes,
                "levels": levels,
                "counts": {"real": n, **{level: n for level in levels}},
                "label_pattern": "the second underscore-separated token of the file name (<k>_<class>.png)",
                "sources": {
                    "objects": "animal-mnist package (animal_data_version_3.gz), indices recorded per file",
                    "real_backgrounds": "sklearn.datasets.load_sample_images china.jpg",
                    "synthetic_backgrounds": "sklearn.datasets.load_sample_images flower.jpg",
                },
                "objects": {name: {"real": int(r), "L0": int(o)} for name, r, o in zip(names, real_idx, other_idx)},
            },
        )
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    written = f" and {n} per level {', '.join(levels)}" if levels else " (real/ only)"
    print(f"wrote the SpinML demo data to {out_dir}: {n} real images{written}")
    return out_dir
