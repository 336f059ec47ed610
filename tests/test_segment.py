"""`synthpriv segment`: raw_split from user masks, a local model file, or the weight-free box fallbacks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.segment import box_gmm_mask, segment
from tools.spinml_demo_data import build_spinml_demo

CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def husky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_spinml_demo(str(tmp_path_factory.mktemp("seg") / "husky"), classes=CLASSES, per_class=3, size=48)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(Image.open(f)) for f in sorted(folder.iterdir())}


def test_user_masks_reproduce_the_segments_and_resume(husky: Path, tmp_path: Path) -> None:
    real = husky / "real"
    out = tmp_path / "mine"
    segment(str(real / "raw"), str(out), source="masks", masks=str(real / "raw_split" / "mask"))
    for part in ("foreground", "background", "mask"):
        assert _arrays(out / "raw_split" / part).keys() == _arrays(real / "raw_split" / part).keys()
        for name, pixels in _arrays(out / "raw_split" / part).items():
            assert np.array_equal(pixels, _arrays(real / "raw_split" / part)[name]), (part, name)
    assert sorted(p.name for p in (out / "raw").iterdir()) == sorted(p.name for p in (real / "raw").iterdir())
    manifest = json.loads((out / "segment_manifest.json").read_text())
    assert manifest["complete"] and manifest["images"] == 6 and manifest["empty_masks"] == []

    # the output is a SpinML real/ folder
    from datamodules import SpinMLDataModule

    root = tmp_path / "root"
    shutil.copytree(husky / "synthetic", root / "synthetic")
    shutil.copytree(out, root / "real")
    dm = SpinMLDataModule(str(root), alpha=0.5, class_names=CLASSES, val_fraction=0.0)
    assert len(dm.real_segments()) == 6

    # rerun: nothing rewritten; a deleted output is made again; other options are refused
    stamp = {f: f.stat().st_mtime_ns for f in (out / "raw_split").rglob("*.png")}
    (out / "raw_split" / "mask" / "0004_dog.png").unlink()
    segment(str(real / "raw"), str(out), source="masks", masks=str(real / "raw_split" / "mask"))
    changed = [f.name for f in stamp if not f.exists() or f.stat().st_mtime_ns != stamp[f]]
    assert sorted(changed) == ["0004_dog.png"] * 3
    with pytest.raises(FileExistsError, match="other options"):
        segment(str(real / "raw"), str(out), source="masks", masks=str(real / "raw_split" / "mask"), mask_threshold=5)


def test_user_mask_errors(husky: Path, tmp_path: Path) -> None:
    masks = Path(shutil.copytree(husky / "real" / "raw_split" / "mask", tmp_path / "masks"))
    Image.new("L", (30, 48)).save(masks / "0002_cat.png")
    with pytest.raises(ValueError, match=r"mask .*0002_cat.png is 30x48 but its image .*0002_cat.png is 48x48"):
        segment(str(husky / "real" / "raw"), str(tmp_path / "a"), source="masks", masks=str(masks))
    (masks / "0002_cat.png").unlink()
    with pytest.raises(ValueError, match=r"has no mask for 0002_cat.png"):
        segment(str(husky / "real" / "raw"), str(tmp_path / "b"), source="masks", masks=str(masks))
    with pytest.raises(ValueError, match="--masks is needed with --source masks"):
        segment(str(husky / "real" / "raw"), str(tmp_path / "c"), source="masks")


def test_model_from_a_local_state_dict(husky: Path, tmp_path: Path, one_torch_thread) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    missing = tmp_path / "weights" / "lraspp.pt"
    with pytest.raises(FileNotFoundError, match=r"model file .*weights/lraspp.pt does not exist; save the state dict"):
        segment(str(husky / "real" / "raw"), str(tmp_path / "x"), source="model", model=str(missing), num_classes=2)
    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2)
    missing.parent.mkdir()
    torch.save(net.state_dict(), missing)
    out = tmp_path / "model"
    segment(str(husky / "real" / "raw"), str(out), source="model", model=str(missing), num_classes=2)
    for f in (out / "raw_split" / "mask").iterdir():
        mask = np.asarray(Image.open(f))
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
    with pytest.raises(ValueError, match="does not fit lraspp_mobilenet_v3_large with num_classes=21"):
        segment(str(husky / "real" / "raw"), str(tmp_path / "y"), source="model", model=str(missing))


def _disk_scene(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2 + 3) ** 2 < (size / 4) ** 2
    image = np.stack([40 + 30 * (xx % 8 < 4), 120 + 0 * xx, 90 + 40 * (yy % 6 < 3)], -1).astype(np.float64)
    image[disk] = (210, 40, 50)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), disk


def test_box_gmm_finds_a_centred_object(tmp_path: Path) -> None:
    image, disk = _disk_scene()
    mask = box_gmm_mask(image, margin=0.1, iterations=5)
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.85
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(image).save(folder / "a_cat.jpg", quality=95)
    from cli import main

    main(["segment", str(folder), str(tmp_path / "out"), "--source", "box-gmm"])
    assert (tmp_path / "out" / "raw" / "a_cat.jpg").is_file()
    assert (tmp_path / "out" / "raw_split" / "mask" / "a_cat.png").is_file()


def test_grabcut_when_opencv_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    from tools.segment import grabcut_mask

    image, disk = _disk_scene()
    mask = grabcut_mask(image, 0.1, 5)
    assert (mask & disk).sum() / (mask | disk).sum() > 0.8


def test_otsu_finds_a_bright_silhouette_with_a_hole_and_a_speck() -> None:
    from tools.segment import otsu_mask

    yy, xx = np.mgrid[0:28, 0:28]
    body = ((yy - 14) ** 2 + (xx - 12) ** 2 < 64) & ~((yy - 14) ** 2 + (xx - 12) ** 2 < 4)  # a ring: hole inside
    image = np.zeros((28, 28, 3), np.uint8)
    image[body] = 230
    image[2, 25] = 255  # a bright speck away from the object
    mask = otsu_mask(image)
    filled = (yy - 14) ** 2 + (xx - 12) ** 2 < 64
    assert (mask == filled).all()  # hole filled, speck dropped
    assert not otsu_mask(np.full((8, 8, 3), 7, np.uint8)).any()  # constant: empty, no error


def test_grabcut_without_opencv_says_what_to_install(
    husky: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # OpenCV is a dependency; simulate an environment without it
    with pytest.raises(ModuleNotFoundError, match=r"opencv-python-headless.*--source box-gmm"):
        segment(str(husky / "real" / "raw"), str(tmp_path / "g"), source="grabcut")
    assert not (tmp_path / "g").exists()  # refused before anything is written
