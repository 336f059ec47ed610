"""`synthpriv segment`: SpinML's ``real/raw_split`` layout for a folder of the user's own images.

SpinML ships segments but no code that makes them. This tool writes, for every image of ``images``::

    <out>/raw/<file>                                   the image, copied unchanged (unless images is <out>/raw)
    <out>/raw_split/mask/<stem>.png                    0/255 object mask, the image's size
    <out>/raw_split/foreground/<stem>.png              the object on black (pixels outside the mask zeroed)
    <out>/raw_split/background/<stem>.png              the image with the object cut out (zeroed)
    <out>/segment_manifest.json                        options, the model file's sha256, counts, empty masks

so ``<out>`` can serve as a SpinML ``real/`` folder (``SpinMLDataModule`` reads ``<root>/real``). The mask comes
from one ``source``:

* ``masks``: the user's own masks in ``masks`` (same stem as the image, any image extension, the image's size);
  a pixel is object when its grey value exceeds ``mask_threshold``.
* ``model``: a torchvision segmentation network (``architecture``) whose state dict is the local file ``model``
  (e.g. torchvision's COCO-with-VOC-labels weights, saved with ``torch.save(net.state_dict(), path)``); the object
  is every pixel whose arg-max class is in ``foreground_classes`` (default: every class but 0, the background).
* ``grabcut``: weight-free: OpenCV's GrabCut started from a centred box (the image minus ``box_margin`` of each
  side); needs ``opencv-python-headless``.
* ``box-gmm``: weight-free and pure (numpy, scikit-learn, scipy): GrabCut's colour model without its graph cut.
  Pixels outside the centred box are background; inside the box, each pixel goes to whichever of two Gaussian
  mixtures (one fitted to the background colours, one to the current object colours) explains its colour better;
  this repeats ``iterations`` times, then the mask is opened, holes are filled and only the largest connected
  region is kept. It assumes one object, roughly centred, whose colours differ from the border's.
* ``otsu``: weight-free, for a bright object on a plain dark background (animal-mnist-like images): grey pixels
  above Otsu's threshold, holes filled, the largest region kept; needs OpenCV.

Every file is written atomically; a rerun with the same options skips images whose outputs exist and are valid
(mask readable and of the image's size), so an interrupted run resumes; other options into the same ``out`` are
refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tools.files import atomic_path, file_sha256, write_json_atomic

Source = Literal["masks", "model", "grabcut", "box-gmm", "otsu"]
Architecture = Literal["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]
MANIFEST = "segment_manifest.json"
PARTS = ("foreground", "background", "mask")


def _fail(message: str) -> None:
    raise ValueError(f"segment: {message}")


def _by_stem(folder: Path, option: str) -> dict[str, Path]:
    from datamodules.spinml_layout import image_files

    if not folder.is_dir():
        raise FileNotFoundError(f"segment: {option} {folder} is not a folder")
    found: dict[str, Path] = {}
    for f in image_files(folder):
        if f.stem in found:
            _fail(f"{option}: {found[f.stem].name} and {f.name} in {folder} share the stem {f.stem!r}; rename one")
        found[f.stem] = f
    if not found:
        _fail(f"{option}: {folder} holds no images")
    return found


def _box(shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the centred box leaving ``margin`` of each side outside (at least 1 pixel)."""
    h, w = shape
    dy, dx = max(1, round(margin * h)), max(1, round(margin * w))
    return dy, dx, h - dy, w - dx


def box_gmm_mask(rgb: np.ndarray, margin: float = 0.1, iterations: int = 5, seed: int = 0) -> np.ndarray:
    """Object mask (H, W) bool of an RGB uint8 image by the ``box-gmm`` rule of this module's docstring."""
    from scipy import ndimage
    from sklearn.mixture import GaussianMixture

    h, w = rgb.shape[:2]
    y0, x0, y1, x1 = _box((h, w), margin)
    inside = np.zeros((h, w), dtype=bool)
    inside[y0:y1, x0:x1] = True
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    obj = inside.copy()
    rng = np.random.default_rng(seed)

    def fit(selection: np.ndarray) -> GaussianMixture:
        idx = np.flatnonzero(selection.ravel())
        idx = rng.choice(idx, min(len(idx), 4000), replace=False)
        k = max(1, min(5, len(idx) // 20))
        return GaussianMixture(k, covariance_type="full", reg_covar=1.0, random_state=seed).fit(pixels[idx])

    for _ in range(iterations):
        if obj.sum() < 10:
            break
        background, foreground = fit(~obj), fit(obj)
        candidates = inside.ravel()
        score = foreground.score_samples(pixels[candidates]) - background.score_samples(pixels[candidates])
        new = np.zeros(h * w, dtype=bool)
        new[candidates] = score > 0
        new = new.reshape(h, w)
        if np.array_equal(new, obj):
            break
        obj = new
    obj = ndimage.binary_fill_holes(ndimage.binary_opening(obj, iterations=1))
    regions, count = ndimage.label(obj)
    if count > 1:
        sizes = ndimage.sum(obj, regions, range(1, count + 1))
        obj = regions == (int(np.argmax(sizes)) + 1)
    return obj


def _opencv():
    try:
        import cv2
    except ImportError:
        raise ModuleNotFoundError(
            "segment: --source grabcut / otsu needs OpenCV: `pip install opencv-python-headless`; or use "
            "--source box-gmm (weight-free, no OpenCV)"
        ) from None
    return cv2


def grabcut_mask(rgb: np.ndarray, margin: float = 0.1, iterations: int = 5) -> np.ndarray:
    """Object mask (H, W) bool by OpenCV's GrabCut initialised with the centred box."""
    cv2 = _opencv()
    y0, x0, y1, x1 = _box(rgb.shape[:2], margin)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(rgb[..., ::-1].copy(), mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def otsu_mask(rgb: np.ndarray) -> np.ndarray:
    """Object mask (H, W) bool of a bright object on a plain dark background (e.g. animal-mnist silhouettes and the
    CPU generator's images, where GrabCut's box start often finds nothing at 28 px): grey pixels above Otsu's
    threshold (Otsu 1979), holes filled, the largest connected region kept. A constant image gives an empty mask."""
    from scipy import ndimage

    cv2 = _opencv()
    grey = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    if int(grey.max()) == int(grey.min()):
        return np.zeros(grey.shape, bool)
    _, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    obj = ndimage.binary_fill_holes(binary > 0)
    regions, count = ndimage.label(obj)
    if count > 1:
        sizes = ndimage.sum(obj, regions, range(1, count + 1))
        obj = regions == (int(np.argmax(sizes)) + 1)
    return obj


class ModelMasker:
    """A torchvision segmentation network from a local state-dict file; ``__call__(rgb) -> bool mask``."""

    def __init__(
        self, path: Path, architecture: str, num_classes: int, foreground_classes: list[int] | None, device: str
    ) -> None:
        import torch
        from torchvision.models import segmentation

        if not path.is_file():
            raise FileNotFoundError(
                f"segment: model file {path} does not exist; save the state dict of a torchvision {architecture} "
                f"({num_classes} classes) there, e.g. torch.save(net.state_dict(), '{path}'); nothing is downloaded"
            )
        net = getattr(segmentation, architecture)(weights=None, weights_backbone=None, num_classes=num_classes)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle that is not a plain state dict, a truncated file
            raise ValueError(f"segment: {path} is not a loadable state dict ({type(err).__name__}: {err})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            _fail(f"{path} holds a {type(state).__name__}, not a state dict")
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}  # torchvision's aux head
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[:3]
            _fail(f"{path} does not fit {architecture} with num_classes={num_classes}: {' '.join(first)}")
        if foreground_classes is not None:
            bad = [c for c in foreground_classes if not 0 <= c < num_classes]
            if bad or not foreground_classes:
                _fail(f"--foreground_classes {foreground_classes}: expected class indices in 0..{num_classes - 1}")
        self.classes = foreground_classes if foreground_classes is not None else list(range(1, num_classes))
        self.net = net.eval().to(device)
        self.device = device
        self.torch = torch

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255).to(self.device)
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            classes = self.net((x - mean) / std)["out"].argmax(1)[0]
        return torch.isin(classes, torch.tensor(self.classes, device=self.device)).cpu().numpy()


def _valid_outputs(split: Path, stem: str, size: tuple[int, int]) -> bool | None:
    """None when an output is missing, unreadable or of another size; else whether the mask is empty."""
    try:
        for part in PARTS:
            with Image.open(split / part / f"{stem}.png") as img:
                img.load()
                if img.size != size:
                    return None
                if part == "mask":
                    empty = not np.asarray(img).any()
    except (OSError, ValueError, SyntaxError):
        return None
    return empty


def _save_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def segment(
    images: str,
    out: str,
    source: Source = "grabcut",
    masks: str | None = None,
    mask_threshold: int = 127,
    model: str | None = None,
    architecture: Architecture = "lraspp_mobilenet_v3_large",
    num_classes: int = 21,
    foreground_classes: list[int] | None = None,
    device: str = "cpu",
    box_margin: float = 0.1,
    iterations: int = 5,
    seed: int = 0,
) -> Path:
    """Write ``<out>/raw`` and ``<out>/raw_split/{foreground,background,mask}`` for a folder of images.

    Args:
        images: folder of real images (any name; each segment file is named after the image's stem).
        out: output folder, usable as a SpinML ``real/`` folder.
        source: where masks come from: masks (your files), model (a local torchvision state dict), grabcut
            (OpenCV, centred box), box-gmm (pure colour-mixture fallback, centred box) or otsu (bright object on a
            plain dark background).
        masks: folder of your masks for source=masks (same stems as the images, same sizes).
        mask_threshold: grey level above which a user-mask pixel is object (0..254).
        model: state-dict file for source=model.
        architecture: torchvision segmentation architecture of the state dict.
        num_classes: output classes of the network (21 for torchvision's VOC-label weights).
        foreground_classes: class indices counted as object; default every class but 0.
        device: torch device of the network.
        box_margin: share of each side outside the centred box (grabcut, box-gmm), in [0, 0.45].
        iterations: GrabCut / colour-mixture iterations (>= 1).
        seed: seed of the colour-mixture fits (box-gmm).
    """
    from datamodules.folders import load_rgb
    from datamodules.spinml_layout import load_mask

    if not 0 <= mask_threshold < 255:
        _fail(f"--mask_threshold: expected a grey level in 0..254; found {mask_threshold}")
    if not 0 <= box_margin <= 0.45:
        _fail(f"--box_margin: expected a share in [0, 0.45]; found {box_margin}")
    if iterations < 1:
        _fail(f"--iterations: expected at least 1; found {iterations}")
    if (source == "masks") != (masks is not None):
        _fail(f"--masks is {'needed' if source == 'masks' else 'only used'} with --source masks (source={source})")
    if (source == "model") != (model is not None):
        _fail(f"--model is {'needed' if source == 'model' else 'only used'} with --source model (source={source})")
    sources = _by_stem(Path(images), "--images")
    user_masks = _by_stem(Path(masks), "--masks") if masks is not None else {}
    if masks is not None:
        missing = [sources[s].name for s in sources if s not in user_masks]
        if missing:
            _fail(f"--masks: {masks} has no mask for {', '.join(missing[:10])} (expected <stem>.<ext> per image)")
    out_dir, split = Path(out), Path(out) / "raw_split"
    copy_raw = Path(images).resolve() != (out_dir / "raw").resolve()
    options = {
        "images": str(Path(images).resolve()),
        "source": source,
        "masks": str(Path(masks).resolve()) if masks else None,
        "mask_threshold": mask_threshold if source == "masks" else None,
        "model_sha256": file_sha256(model) if model and Path(model).is_file() else None,
        "architecture": architecture if source == "model" else None,
        "num_classes": num_classes if source == "model" else None,
        "foreground_classes": foreground_classes if source == "model" else None,
        "box_margin": box_margin if source in ("grabcut", "box-gmm") else None,
        "iterations": iterations if source in ("grabcut", "box-gmm") else None,
        "seed": seed if source == "box-gmm" else None,
    }
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("options") != options:
            raise FileExistsError(
                f"segment: {out_dir} holds segments made with other options {old.get('options')}; choose another "
                f"--out or delete it (asked for {options}); nothing is overwritten"
            )
    elif split.exists() and any(split.rglob("*.png")):
        raise FileExistsError(f"segment: {split} holds files but {out_dir} has no {MANIFEST}; choose another --out")
    masker = None
    if source in ("grabcut", "otsu"):
        _opencv()  # before anything is written
    if source == "model":
        masker = ModelMasker(Path(model), architecture, num_classes, foreground_classes, device)
    write_json_atomic(manifest_path, {"options": options, "complete": False})

    from tqdm import tqdm

    done, skipped, empty = 0, 0, []
    for stem, path in tqdm(sorted(sources.items()), desc="segment", unit="image"):
        rgb = np.array(load_rgb(path))
        size = (rgb.shape[1], rgb.shape[0])
        raw_out = out_dir / "raw" / path.name
        was_empty = _valid_outputs(split, stem, size)
        if was_empty is not None and (not copy_raw or raw_out.is_file()):
            skipped += 1
            if was_empty:
                empty.append(path.name)
            continue
        if source == "masks":
            grey = load_mask(user_masks[stem])
            if grey.shape != rgb.shape[:2]:
                _fail(
                    f"mask {user_masks[stem]} is {grey.shape[1]}x{grey.shape[0]} but its image {path} is "
                    f"{size[0]}x{size[1]}; a mask must have its image's size"
                )
            obj = grey > mask_threshold
        elif source == "model":
            obj = masker(rgb)
        elif source == "grabcut":
            obj = grabcut_mask(rgb, box_margin, iterations)
        elif source == "otsu":
            obj = otsu_mask(rgb)
        else:
            obj = box_gmm_mask(rgb, box_margin, iterations, seed)
        if not obj.any():
            empty.append(path.name)
        if copy_raw and not raw_out.is_file():
            with atomic_path(raw_out) as tmp:
                shutil.copyfile(path, tmp)
        _save_png(split / "foreground" / f"{stem}.png", rgb * obj[..., None])
        _save_png(split / "background" / f"{stem}.png", rgb * ~obj[..., None])
        _save_png(split / "mask" / f"{stem}.png", obj.astype(np.uint8) * 255)
        done += 1
    write_json_atomic(
        manifest_path,
        {"options": options, "complete": True, "images": len(sources), "empty_masks": empty},
    )
    print(f"segment: {done} image(s) segmented, {skipped} already done, into {split}; {len(empty)} empty mask(s)")
    return out_dir
