"""ATS augmentation policies (Gao et al., CVPR 2021, "Privacy-preserving Collaborative Learning with Automatic
Transformation Search"), as SemSim's victims use them (``--mode aug --aug_list 3-1-7``; seeds.md §2.2).

The table holds 50 sub-policies, each one image operation with a probability and a magnitude index 0..9. A spec
string picks sub-policies by index: ``"3-1-7"`` applies sub-policies 3, 1 and 7 in that order; ``"3-1-7+43-18-18"``
picks one of the chains uniformly at random for each image; ``""`` is no augmentation (the reference's ``aug`` mode
with an empty list).

Reference behaviour kept on purpose:
  - every sub-policy's operation is applied **always**: the reference stores the probability but never reads it.
    ``use_probability=True`` applies each with its probability instead (not what the published victims saw).
  - magnitudes: shear 0..0.3, translate 0..150/331 of the image side, rotate 0..30 degrees (counter-clockwise,
    no random sign), color/contrast/sharpness/brightness factor 1 +- 0..0.5 (random sign), posterize 8..4 bits
    (rounded), solarize threshold 256..0; autocontrast, equalize and invert ignore the magnitude.
  - shear and translate take a random sign and fill with black; rotate fills with grey 128. Shear is about the
    top-left corner (as PIL's affine map), bicubic; translate is nearest-neighbour.

Operations act on PIL RGB images; uint8 CHW tensors (e.g. after ``v2.ToImage``/``Resize``) are converted to PIL
and back, so the transform fits anywhere before ``ToDtype``/``Normalize``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F


class SubPolicy(NamedTuple):
    """One table row: the reference's probability (ignored by default), operation name, magnitude index 0..9."""

    probability: float
    operation: str
    magnitude_index: int


# ATSPrivacy's policy table (data), indices 0..49.
ATS_SUBPOLICIES: tuple[SubPolicy, ...] = tuple(
    SubPolicy(p, op, m)
    for p, op, m in (
        (0.1, "invert", 7), (0.2, "contrast", 6), (0.7, "rotate", 2), (0.3, "translateX", 9),
        (0.8, "sharpness", 1), (0.9, "sharpness", 3), (0.5, "shearY", 2), (0.7, "translateY", 2),
        (0.5, "autocontrast", 5), (0.9, "equalize", 2), (0.2, "shearY", 5), (0.3, "posterize", 5),
        (0.4, "color", 3), (0.6, "brightness", 5), (0.3, "sharpness", 9), (0.7, "brightness", 9),
        (0.6, "equalize", 5), (0.5, "equalize", 1), (0.6, "contrast", 7), (0.6, "sharpness", 5),
        (0.7, "color", 5), (0.5, "translateX", 5), (0.3, "equalize", 7), (0.4, "autocontrast", 8),
        (0.4, "translateY", 3), (0.2, "sharpness", 6), (0.9, "brightness", 6), (0.2, "color", 8),
        (0.5, "solarize", 0), (0.0, "invert", 0), (0.2, "equalize", 0), (0.6, "autocontrast", 0),
        (0.2, "equalize", 8), (0.6, "equalize", 4), (0.9, "color", 5), (0.6, "equalize", 5),
        (0.8, "autocontrast", 4), (0.2, "solarize", 4), (0.1, "brightness", 3), (0.7, "color", 0),
        (0.4, "solarize", 1), (0.9, "autocontrast", 0), (0.9, "translateY", 3), (0.7, "translateY", 3),
        (0.9, "autocontrast", 1), (0.8, "solarize", 1), (0.8, "equalize", 5), (0.1, "invert", 0),
        (0.7, "translateY", 3), (0.9, "autocontrast", 1),
    )
)  # fmt: skip

BLACK = (0, 0, 0)
GREY = (128, 128, 128)


def magnitude(operation: str, index: int) -> float:
    """The reference's magnitude for an operation at index 0..9 (ten evenly spaced values per range)."""
    if not 0 <= index <= 9:
        raise ValueError(f"ATS magnitude index must be in 0..9; got {index}")
    t = index / 9
    if operation in ("shearX", "shearY"):
        return 0.3 * t
    if operation in ("translateX", "translateY"):
        return 150 / 331 * t
    if operation == "rotate":
        return 30.0 * t
    if operation in ("color", "contrast", "sharpness", "brightness"):
        return 0.5 * t
    if operation == "posterize":
        return float(round(8 - 4 * t))
    if operation == "solarize":
        return 256 - 256 * t
    if operation in ("autocontrast", "equalize", "invert"):
        return 0.0
    raise ValueError(f"unknown ATS operation {operation!r}")


def _sign(rng: random.Random) -> int:
    return rng.choice((-1, 1))


def _affine(img: Image.Image, coeffs: tuple[float, ...], resample: Image.Resampling) -> Image.Image:
    # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample, fillcolor=BLACK)


def _enhance(kind: type) -> Callable[[Image.Image, float, random.Random], Image.Image]:
    return lambda img, mag, rng: kind(img).enhance(1 + mag * _sign(rng))


OPERATIONS: dict[str, Callable[[Image.Image, float, random.Random], Image.Image]] = {
    "shearX": lambda img, mag, rng: _affine(img, (1, mag * _sign(rng), 0, 0, 1, 0), Image.Resampling.BICUBIC),
    "shearY": lambda img, mag, rng: _affine(img, (1, 0, 0, mag * _sign(rng), 1, 0), Image.Resampling.BICUBIC),
    "translateX": lambda img, mag, rng: _affine(
        img, (1, 0, mag * img.size[0] * _sign(rng), 0, 1, 0), Image.Resampling.NEAREST
    ),
    "translateY": lambda img, mag, rng: _affine(
        img, (1, 0, 0, 0, 1, mag * img.size[1] * _sign(rng)), Image.Resampling.NEAREST
    ),
    "rotate": lambda img, mag, rng: img.rotate(mag, Image.Resampling.NEAREST, fillcolor=GREY),
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "brightness": _enhance(ImageEnhance.Brightness),
    "posterize": lambda img, mag, rng: ImageOps.posterize(img, int(mag)),
    "solarize": lambda img, mag, rng: ImageOps.solarize(img, mag),
    "autocontrast": lambda img, mag, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, mag, rng: ImageOps.equalize(img),
    "invert": lambda img, mag, rng: ImageOps.invert(img),
}


def parse_spec(spec: str) -> list[list[int]]:
    """``"3-1-7+43-18-18"`` -> ``[[3, 1, 7], [43, 18, 18]]``; ``""`` -> ``[]`` (no augmentation)."""
    text = spec.strip()
    if not text:
        return []
    n = len(ATS_SUBPOLICIES)
    chains = []
    for chain_text in text.split("+"):
        parts = chain_text.strip().split("-")
        chain = []
        for part in parts:
            part = part.strip()
            if not part.isdigit():
                raise ValueError(
                    f"ATS policy {spec!r}: expected sub-policy indices 0..{n - 1} joined by '-' (a chain) and "
                    f"'+' (choose one chain per image), e.g. '3-1-7+43-18-18'; found {part!r} in {chain_text!r}"
                )
            index = int(part)
            if index >= n:
                raise ValueError(f"ATS policy {spec!r}: sub-policy index {index} is out of range 0..{n - 1}")
            chain.append(index)
        chains.append(chain)
    return chains


class ATSPolicy:
    """Apply an ATS policy spec to an image (PIL, or a uint8 CHW tensor converted through PIL).

    Args:
        spec: sub-policy indices, ``a-b-c`` applied in sequence, chains joined by ``+`` (one chosen per image at
            random); empty means no augmentation.
        use_probability: apply each sub-policy with its table probability; default False = always (the reference).
        seed: seed of this transform's own random generator (chain choice, signs, probabilities); default None
            uses Python's global ``random`` module, which Lightning seeds per DataLoader worker
            (``seed_everything(workers=True)``). A fixed seed repeats the same stream in every worker.
    """

    def __init__(self, spec: str = "", use_probability: bool = False, seed: int | None = None) -> None:
        self.spec = spec
        self.chains = parse_spec(spec)
        self.use_probability = use_probability
        self.rng: Any = random.Random(seed) if seed is not None else random

    def apply_chain(self, img: Image.Image, chain: list[int]) -> Image.Image:
        """Apply the sub-policies of one chain in order to a PIL image."""
        for index in chain:
            sub = ATS_SUBPOLICIES[index]
            if self.use_probability and self.rng.random() >= sub.probability:
                continue
            img = OPERATIONS[sub.operation](img, magnitude(sub.operation, sub.magnitude_index), self.rng)
        return img

    def __call__(self, img: Any) -> Any:
        if not self.chains:
            return img
        chain = self.chains[0] if len(self.chains) == 1 else self.rng.choice(self.chains)
        if isinstance(img, Image.Image):
            return self.apply_chain(img.convert("RGB") if img.mode != "RGB" else img, chain)
        if isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"ATSPolicy: expected a PIL image or a uint8 (3, H, W) tensor; found {img.dtype} {tuple(img.shape)}"
                )
            out = F.pil_to_tensor(self.apply_chain(F.to_pil_image(img), chain))
            return tv_tensors.Image(out) if isinstance(img, tv_tensors.Image) else out
        raise TypeError(f"ATSPolicy: expected a PIL image or a uint8 tensor; found {type(img).__name__}")

    def __repr__(self) -> str:
        return f"ATSPolicy(spec={self.spec!r}, use_probability={self.use_probability})"
