"""SpinML's on-disk layout: level folders, labels from file names, segment triples and mask compositing.

Two layouts are read (reference/seeds.md §1.2; the released README and the released code disagree)::

    <root>/real/raw/<name>                                    real images (the test set)
    <root>/real/raw_split/{foreground,background,mask}/<name> their segments (same names as raw/)
    <root>/synthetic/L<fg>_L<bg>/{foreground,background,mask}/<name>   README layout: segments, composited here
    <root>/synthetic/L<fg>_L<bg>/clean/<name>                 code layout: already composited images
    <root>/synthetic/L<fg>_L<bg>/clean_split/{foreground,background}/<name>  (segments without masks: not read)

Segments of one image share a file stem; masks may use another extension (``x.jpg`` with ``mask/x.png``).
Compositing: ``out = round((fg * m + bg * (255 - m)) / 255)`` per pixel with ``m`` the 8-bit grey mask, i.e. a
binary 0/255 mask picks the foreground where it is white; soft masks blend. The integer form is exact, so the
batched and the per-image paths (and Pillow's ``Image.composite``) give identical bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.folders import IMAGE_EXTENSIONS, load_rgb

PARTS = ("foreground", "background", "mask")
LEVEL_PATTERN = re.compile(r"^L(\d+)_L(\d+)$")
# The original: the class is the second underscore-separated token of the file name (``<x>_<state>_...``).
DEFAULT_LABEL_PATTERN = r"^[^_]+_(?P<label>[^_]+)"
HUSKY_CLASSES = ["sleeping", "eating", "playing", "sitting"]
LAYOUT = (
    "<root>/real/raw/, <root>/real/raw_split/{foreground,background,mask}/ and "
    "<root>/synthetic/L<fg>_L<bg>/{foreground,background,mask}/ or .../L<fg>_L<bg>/clean/"
)


@dataclass(frozen=True)
class Segments:
    """The foreground, background and mask files of one image (``name`` = the foreground's file name)."""

    name: str
    foreground: Path
    background: Path
    mask: Path


def parse_level(name: str, where: str) -> tuple[int, int]:
    """(foreground level, background level) of a folder name ``L<fg>_L<bg>``, e.g. ``L1_L0`` -> (1, 0)."""
    match = LEVEL_PATTERN.match(name)
    if match is None:
        raise ValueError(
            f"{where}: level folder name {name!r} does not parse; expected L<foreground level>_L<background level> "
            "such as L0_L0, L1_L0, L2_L0"
        )
    return int(match[1]), int(match[2])


def image_files(folder: Path) -> list[Path]:
    """Sorted image files of a folder (hidden files and other extensions left out)."""
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
    )


def compile_label_pattern(pattern: str, option: str = "data.label_pattern") -> re.Pattern[str]:
    """The label regex; it must hold a group named ``label`` or exactly one group."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{option}: {pattern!r} is not a valid regular expression ({err})") from None
    if "label" not in compiled.groupindex and compiled.groups != 1:
        raise ValueError(
            f"{option}: {pattern!r} needs a group named 'label' or exactly one group (found {compiled.groups} groups)"
        )
    return compiled


def label_of(path: Path, pattern: re.Pattern[str], class_names: list[str], option: str = "data.label_pattern") -> int:
    """Label index of a file from its stem, e.g. ``12_sitting_3.jpg`` -> 'sitting' -> its index in class_names."""
    match = pattern.match(path.stem)
    if match is None:
        raise ValueError(
            f"{option}: file name {path.name!r} ({path.parent}) does not match {pattern.pattern!r}; expected names "
            f"whose label the pattern captures, e.g. <id>_<class>_<anything>.png with a class in {class_names}"
        )
    token = match["label"] if "label" in pattern.groupindex else match[1]
    if token not in class_names:
        raise ValueError(
            f"{option}: file {path} has label {token!r}, which is not in data.class_names {class_names}; "
            "add it to class_names or rename the file"
        )
    return class_names.index(token)


def find_segments(split_dir: Path, names: list[str] | None, where: str) -> list[Segments]:
    """Segment triples in ``split_dir/{foreground,background,mask}``, matched by file stem.

    Args:
        split_dir: folder holding the three part folders.
        names: file names that must all have segments (e.g. the files of ``real/raw``); None = the foregrounds.
        where: option or folder named in errors.
    """
    stems: dict[str, dict[str, Path]] = {}
    for part in PARTS:
        folder = split_dir / part
        if not folder.is_dir():
            raise FileNotFoundError(f"{where}: folder {folder} is missing; expected {split_dir}/{{{','.join(PARTS)}}}/")
        by_stem: dict[str, Path] = {}
        for f in image_files(folder):
            if f.stem in by_stem:
                raise ValueError(f"{where}: {by_stem[f.stem].name} and {f.name} in {folder} share the stem {f.stem!r}")
            by_stem[f.stem] = f
        stems[part] = by_stem
    wanted = names if names is not None else [p.name for p in stems["foreground"].values()]
    if not wanted:
        raise ValueError(f"{where}: {split_dir / 'foreground'} holds no images")
    triples = []
    for name in wanted:
        stem = Path(name).stem
        missing = [part for part in PARTS if stem not in stems[part]]
        if missing:
            raise FileNotFoundError(
                f"{where}: image {name} has no {' / '.join(missing)} segment in {split_dir} "
                f"(expected {split_dir}/<part>/{stem}.<ext> for every part in {list(PARTS)}); "
                "make the segments with `synthpriv segment`"
            )
        triples.append(Segments(name, stems["foreground"][stem], stems["background"][stem], stems["mask"][stem]))
    return triples


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def check_segment_sizes(triples: list[Segments]) -> None:
    """Foreground, background and mask of each image must have one size (header reads only, no decoding)."""
    for t in triples:
        expected = _size(t.foreground)
        for part, path in (("background", t.background), ("mask", t.mask)):
            found = _size(path)
            if found != expected:
                raise ValueError(
                    f"{part} {path} is {found[0]}x{found[1]} but its foreground {t.foreground} is "
                    f"{expected[0]}x{expected[1]}; segments of one image must have the same size"
                )


def load_mask(path: Path) -> np.ndarray:
    """An 8-bit grey mask (H, W) uint8; colour masks are converted to grey, alpha is dropped."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                return np.array(load_rgb(path).convert("L"))
            return np.array(img.convert("L"))
    except OSError as err:
        raise OSError(f"cannot read mask {path}: {err}") from err


def composite_uint8(foreground: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blend uint8 images through an 8-bit mask, exactly: ``round((fg*m + bg*(255-m)) / 255)``.

    The sum ``s = fg*m + bg*(255-m)`` is at most 255*255, and ``(t + (t >> 8)) >> 8`` with ``t = s + 128`` is its
    exact rounded division by 255 over that range (checked for every ``s`` in the tests), the same rule Pillow's
    ``Image.composite`` applies. On the CPU the blend runs in numpy uint16 on chunks of about 64k values (one 128-px
    RGB image; the temporaries stay in cache, which full-batch int32 torch temporaries do not: they were several
    times slower); on other devices in int32 torch ops. Both give the same bytes.

    Args:
        foreground: uint8 (..., C, H, W).
        background: uint8, same shape.
        mask: uint8 (..., 1, H, W) or (..., C, H, W); 255 = foreground.
    """
    if foreground.dim() < 3 or foreground.shape != background.shape:
        raise ValueError(f"composite: foreground {tuple(foreground.shape)} != background {tuple(background.shape)}")
    if (
        mask.dim() != foreground.dim()
        or mask.shape[-2:] != foreground.shape[-2:]
        or mask.shape[:-3] != foreground.shape[:-3]
    ):
        raise ValueError(f"composite: mask {tuple(mask.shape)} does not fit images {tuple(foreground.shape)}")
    if mask.shape[-3] not in (1, foreground.shape[-3]):
        raise ValueError(f"composite: mask {tuple(mask.shape)} has neither 1 nor {foreground.shape[-3]} channels")
    for name, t in (("foreground", foreground), ("background", background), ("mask", mask)):
        if t.dtype != torch.uint8:
            raise TypeError(f"composite: {name} must be uint8; found {t.dtype}")
    if foreground.device.type != "cpu":
        return _blend_torch(foreground, background, mask)
    shape = foreground.shape
    fg = foreground.reshape(-1, *shape[-3:]).numpy()
    bg = background.reshape(-1, *shape[-3:]).numpy()
    m = mask.reshape(-1, *mask.shape[-3:]).numpy()
    out = np.empty(fg.shape, dtype=np.uint8)
    step = max(1, (1 << 16) // fg[0].size)
    for i in range(0, len(fg), step):
        _blend_numpy(fg[i : i + step], bg[i : i + step], m[i : i + step], out[i : i + step])
    return torch.from_numpy(out).reshape(shape)


def _blend_numpy(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
    m = mask.astype(np.uint16)
    t = fg.astype(np.uint16) * m
    t += bg.astype(np.uint16) * (255 - m)
    t += 128
    t += t >> 8
    t >>= 8
    out[...] = t


def _blend_torch(foreground: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(torch.int32)
    t = foreground.to(torch.int32) * m + background.to(torch.int32) * (255 - m) + 128
    return ((t + (t >> 8)) >> 8).to(torch.uint8)


def composite_files(t: Segments) -> Image.Image:
    """The composited RGB image of one triple (sizes checked, errors name the files)."""
    fg = np.array(load_rgb(t.foreground))
    bg = np.array(load_rgb(t.background))
    mask = load_mask(t.mask)
    if fg.shape != bg.shape or mask.shape != fg.shape[:2]:
        raise ValueError(
            f"segments of {t.name}: foreground {t.foreground} {fg.shape[1]}x{fg.shape[0]}, background "
            f"{t.background} {bg.shape[1]}x{bg.shape[0]}, mask {t.mask} {mask.shape[1]}x{mask.shape[0]}; "
            "expected one size"
        )
    out = composite_uint8(
        torch.from_numpy(fg).permute(2, 0, 1), torch.from_numpy(bg).permute(2, 0, 1), torch.from_numpy(mask)[None]
    )
    return Image.fromarray(out.permute(1, 2, 0).numpy())
