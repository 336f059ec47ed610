"""Scanning and checking ``root/<class>/<image>`` trees; loading images as 8-bit RGB with one rule per PIL mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


# Colour that transparent pixels are composited over (see ``to_rgb``).
ALPHA_BACKGROUND = (255, 255, 255)
# Grey, bilevel and colour modes whose 8-bit ``convert("RGB")`` needs no rescaling.
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Half an 8-bit step: float values this far outside [0, 1] still round to 0 or 255.
_FLOAT_SLACK = 0.5 / 255


def to_rgb(img: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of an opened image, scaled by a fixed rule per PIL mode.

    Rules (modes as listed in Pillow's "Concepts > Modes" page; ``convert`` as in Pillow's ``Image.convert``):

    * EXIF orientation first: ``PIL.ImageOps.exif_transpose`` rotates/flips phone JPEGs upright before
      anything else, so the pixels match what image viewers show.
    * ``1``, ``L``, ``RGB`` pass through Pillow's ``convert("RGB")`` (bilevel 0/1 -> 0/255, grey copied to
      the three channels). ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` and ``P`` without transparency
      use Pillow's own ``convert("RGB")`` too (CMYK by Pillow's ``(255 - C) * (255 - K) / 255`` per channel,
      no ICC profile applied).
    * ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N`` (16-bit unsigned grey, e.g. a 16-bit PNG or TIFF): the
      array is read with numpy and scaled by the full 16-bit range, ``round(v * 255 / 65535)``; 4096 -> 16.
      Never a per-image min-max stretch, which would make a dark image as bright as a light one and erase
      the brightness that can tell classes apart. (Plain ``convert("RGB")`` clips every value over 255 to
      white.)
    * ``I`` (32-bit signed grey; 16-bit sources often land here): same fixed scale, ``v * 255 / 65535``,
      whatever the image's own maximum (a rule guessed from each image's range would brighten dark
      images). Values below 0 or above 65535 are refused with an error: there is no fixed scale they fit,
      and clipping would silently saturate them.
    * ``F`` (32-bit float grey): read as the range [0, 1], ``round(v * 255)``. Values further than half an
      8-bit step outside [0, 1], NaN and inf are refused with an error: a float image in [0, 255] cannot be
      told apart from a [0, 1] one whose pixels are dark, so the loader does not guess; save such files as
      8- or 16-bit integers instead. (Plain ``convert("RGB")`` treats floats as [0, 255], so 0.5 -> 0.)
    * Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``P`` or ``L``/``RGB`` with a ``transparency`` key,
      i.e. Pillow's ``has_transparency_data``): converted to ``RGBA`` by Pillow, then composited over the
      fixed background ``ALPHA_BACKGROUND`` ``b`` (white), ``round((c * a + b * (255 - a)) / 255)``. A plain
      ``convert("RGB")`` drops alpha and shows the colours stored under transparent pixels, which are often
      arbitrary. White is the background most viewers and web pages show transparent images on.
    * 16-bit colour PNGs (RGB, RGBA, grey+alpha) are decoded by Pillow to 8-bit RGB/RGBA, keeping the high
      byte of each sample, and then follow the rules above.
    * A ``transparency`` key on a 16-bit, ``I`` or ``F`` grey image (rare) is ignored: no compositing.

    Raises:
        ValueError: a mode with no rule here, or values outside the range a rule accepts (one line
            naming the mode and what was found; ``load_rgb`` adds the file name).
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _UINT16_MODES or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img), mode)).convert("RGB")
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        background = np.asarray(ALPHA_BACKGROUND, dtype=np.uint32)
        blended = (rgba[..., :3] * alpha + background * (255 - alpha) + 127) // 255
        return Image.fromarray(blended.astype(np.uint8))
    if mode in _PLAIN_MODES:
        return img.convert("RGB")
    raise ValueError(
        f"image mode {mode} has no loading rule (supported: {', '.join(_PLAIN_MODES)}, "
        f"{', '.join(_UINT16_MODES)}, I, F and modes with alpha); convert it to RGB"
    )


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of a 16-bit, 32-bit integer or float image as uint8, by the fixed rules of ``to_rgb``."""
    values = values.astype(np.float64)
    if mode == "F":
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ValueError(f"mode F (32-bit float) image holds {bad} NaN/inf value(s) of {values.size}")
        low, high = float(values.min()), float(values.max())
        if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
            raise ValueError(
                f"mode F (32-bit float) values span {low:g}..{high:g}, outside the range [0, 1] float images "
                "are read in; save the file as 8- or 16-bit integers with the scaling you intend"
            )
        return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    if mode == "I":
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"mode I (32-bit integer) values span {low:g}..{high:g}, outside 0..65535 (the 16-bit range "
                "mode I images are scaled from); save the file as 8- or 16-bit with the scaling you intend"
            )
    return np.rint(values * (255 / 65535)).astype(np.uint8)


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as 8-bit RGB by the per-mode rules of ``to_rgb``; errors name the file."""
    try:
        return _open_rgb(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def find_unreadable(samples: list[Sample]) -> list[tuple[Path, str]]:
    """Decode and convert every file as ``load_rgb`` does; return (path, reason) for those that fail."""
    bad = []
    for sample in samples:
        try:
            _open_rgb(sample.path)
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
