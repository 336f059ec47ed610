"""SpinMLDataModule on a tiny husky-layout dataset built from animal-mnist objects on real photo crops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import SpinMLDataModule
from datamodules.spinml_layout import composite_uint8, parse_level
from tools.spinml_demo_data import LEVELS, build_spinml_demo

CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def husky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 6 images at 64 px in the README layout, plus clean/ composites."""
    return build_spinml_demo(str(tmp_path_factory.mktemp("spinml") / "husky"), classes=CLASSES, per_class=6, size=64)


@pytest.fixture
def husky_copy(husky: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(husky, tmp_path / "husky"))


def _dm(root: Path, **kwargs) -> SpinMLDataModule:
    kwargs.setdefault("class_names", CLASSES)
    kwargs.setdefault("image_size", 32)
    return SpinMLDataModule(str(root), **kwargs)


def test_builder_writes_the_husky_layout(husky: Path) -> None:
    names = sorted(p.name for p in (husky / "real" / "raw").iterdir())
    assert len(names) == 12 and names[0] == "0000_cat.png" and names[-1] == "0011_dog.png"
    for part in ("foreground", "background", "mask"):
        assert sorted(p.name for p in (husky / "real" / "raw_split" / part).iterdir()) == names
        for level in LEVELS:
            assert sorted(p.name for p in (husky / "synthetic" / level / part).iterdir()) == names
    mask = np.asarray(Image.open(husky / "real" / "raw_split" / "mask" / names[0]))
    assert set(np.unique(mask)) == {0, 255} and 0.05 < (mask > 0).mean() < 0.6
    raw = np.asarray(Image.open(husky / "real" / "raw" / names[0]))
    fg = np.asarray(Image.open(husky / "real" / "raw_split" / "foreground" / names[0]))
    assert np.array_equal(raw[mask > 0], fg[mask > 0]) and not fg[mask == 0].any()
    manifest = json.loads((husky / "manifest.json").read_text())
    assert manifest["class_names"] == CLASSES and manifest["counts"]["real"] == 12
    # a rerun with the same options does nothing; other options are refused
    build_spinml_demo(str(husky), classes=CLASSES, per_class=6, size=64)
    with pytest.raises(FileExistsError, match="other options"):
        build_spinml_demo(str(husky), classes=CLASSES, per_class=5, size=64)


def test_demo_grey_real_only_matches_the_colour_build(husky: Path, tmp_path: Path) -> None:
    out = build_spinml_demo(
        str(tmp_path / "grey"), classes=CLASSES, per_class=6, size=64, grey=True, synthetic_levels=False
    )
    assert not (out / "synthetic").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["levels"] == [] and manifest["options"]["grey"] is True
    assert "grey" not in json.loads((husky / "manifest.json").read_text())["options"]  # defaults stay unrecorded
    name = sorted(p.name for p in (husky / "real" / "raw").iterdir())[0]
    grey = np.asarray(Image.open(out / "real" / "raw" / name)).astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # the same draws as the colour build: the same object in the same place
    for part in ("mask",):
        a, b = (np.asarray(Image.open(root / "real" / "raw_split" / part / name)) for root in (out, husky))
        assert np.array_equal(a, b)
    colour = np.asarray(Image.open(husky / "real" / "raw_split" / "background" / name)).astype(float)
    lum = np.asarray(Image.open(out / "real" / "raw_split" / "background" / name))[..., 0].astype(float)
    assert np.abs(colour @ np.array([0.299, 0.587, 0.114]) - lum).max() <= 0.5 + 1e-9
    build_spinml_demo(str(out), classes=CLASSES, per_class=6, size=64, grey=True, synthetic_levels=False)  # no-op


def test_mix_counts_labels_and_test_split(husky: Path) -> None:
    dm = _dm(husky, alpha=0.5, first_level="L0_L0", second_level="L2_L0", val_fraction=0.0)
    ids = dm.example_ids("train")
    assert sum(i.startswith("L0_L0/") for i in ids) == 6 and sum(i.startswith("L2_L0/") for i in ids) == 6
    assert len(set(ids)) == 12  # without replacement: no file twice per level
    for item in dm.items("train"):
        assert CLASSES[item.label] in item.source.name
    assert [i.split("/")[1] for i in dm.example_ids("test")] == sorted(
        p.name for p in (husky / "real" / "raw").iterdir()
    )
    assert dm.num_classes == 2 and dm.levels == list(LEVELS)
    dm.setup("fit")
    dm.setup("test")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (12, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0  # no normalisation by default
    assert next(iter(dm.test_dataloader()))["image"].shape == (4, 3, 32, 32)


def test_alpha_ends_replacement_and_validation(husky: Path) -> None:
    only_first = _dm(husky, alpha=1.0, second_level=None, val_fraction=0.0)
    assert all(i.startswith("L0_L0/") for i in only_first.example_ids("train")) and len(only_first.items("train")) == 12
    only_second = _dm(husky, alpha=0.0, val_fraction=0.0)
    assert all(i.startswith("L1_L0/") for i in only_second.example_ids("train"))
    drawn = _dm(husky, alpha=0.75, with_replacement=True, val_fraction=0.0, split_seed=3)
    files = [i.split("#")[0] for i in drawn.example_ids("train")]
    assert len(files) == 9 + 3 and len(set(files)) < len(files)  # int(.75*12)+int(.25*12), duplicates drawn
    assert drawn.example_ids("train") == _dm(
        husky, alpha=0.75, with_replacement=True, val_fraction=0.0, split_seed=3
    ).example_ids("train")
    split = _dm(husky, alpha=0.5, val_fraction=0.25)
    assert len(split.items("train")) + len(split.items("val")) == 12 and len(split.items("val")) == 3
    with pytest.raises(ValueError, match="second_level is null"):
        _dm(husky, alpha=0.5, second_level=None)


def test_on_the_fly_composite_equals_clean_and_raw(husky: Path) -> None:
    segments = _dm(husky, alpha=0.5, composite="segments", val_fraction=0.0)
    clean = _dm(husky, alpha=0.5, composite="clean", val_fraction=0.0)
    assert segments.example_ids("train") == clean.example_ids("train")
    for a, b in zip(segments.items("train")[:4], clean.items("train")[:4], strict=True):
        assert np.array_equal(np.asarray(a.load()), np.asarray(b.load()))
    from datamodules.spinml_layout import composite_files

    for triple in segments.real_segments()[:3]:
        raw = np.asarray(Image.open(husky / "real" / "raw" / triple.name))
        assert np.array_equal(np.asarray(composite_files(triple)), raw)  # cut-out background + fg = raw


def test_composite_is_exact_for_soft_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    fg, bg = (torch.randint(0, 256, (5, 3, 7, 9), generator=gen, dtype=torch.uint8) for _ in range(2))
    mask = torch.randint(0, 256, (5, 1, 7, 9), generator=gen, dtype=torch.uint8)
    expected = torch.round((fg.double() * mask + bg.double() * (255 - mask.double())) / 255).to(torch.uint8)
    assert torch.equal(composite_uint8(fg, bg, mask), expected)
    assert torch.equal(composite_uint8(fg[2], bg[2], mask[2]), expected[2])
    with pytest.raises(ValueError, match="mask"):
        composite_uint8(fg, bg, mask[..., :5])
    from datamodules.spinml_layout import _blend_torch

    assert torch.equal(_blend_torch(fg, bg, mask), expected)  # the non-CPU path, same bytes
    # the shift rule is the exact rounded division by 255 for every sum fg*m + bg*(255-m) can take
    s = torch.arange(0, 255 * 255 + 1, dtype=torch.int64)
    assert torch.equal(((s + 128) + ((s + 128) >> 8)) >> 8, torch.round(s.double() / 255).long())


def test_compositing_benchmark_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_spinml", Path(__file__).parents[1] / "benchmarks" / "spinml_compositing.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--n", "40", "--size", "16", "--batch", "16", "--repeats", "1"])
    assert results["identical"] == 1.0 and results["ratio_pil"] > 0 and results["ratio_torch"] > 0
    assert "ratio PIL loop / batched" in capsys.readouterr().out


def test_label_pattern_and_class_map_are_configurable(husky_copy: Path) -> None:
    dm = _dm(husky_copy, alpha=0.5, class_names=["dog", "cat"], val_fraction=0.0)
    assert all(("dog" in i.source.name) == (i.label == 0) for i in dm.items("train"))
    for f in (husky_copy / "real" / "raw").iterdir():
        f.rename(f.with_name(f.name.replace("_", "-")))
    shutil.rmtree(husky_copy / "real" / "raw_split")
    with pytest.raises(ValueError, match=r"0000-cat.png.*does not match"):
        _dm(husky_copy, alpha=0.5)
    shutil.rmtree(husky_copy / "synthetic" / "L1_L0")
    shutil.rmtree(husky_copy / "synthetic" / "L2_L0")
    for f in (husky_copy / "synthetic" / "L0_L0").rglob("*.png"):
        f.rename(f.with_name(f.name.replace("_", "-")))
    dm = _dm(husky_copy, alpha=1.0, second_level=None, label_pattern=r"\d+-(?P<label>[a-z]+)$")
    assert sorted({i.label for i in dm.items("test")}) == [0, 1]
    with pytest.raises(ValueError, match=r"'bird', which is not in data\.class_names"):
        (husky_copy / "real" / "raw" / "0000-cat.png").rename(husky_copy / "real" / "raw" / "0000-bird.png")
        _dm(husky_copy, alpha=1.0, second_level=None, label_pattern=r"\d+-(?P<label>[a-z]+)$")
    with pytest.raises(ValueError, match="needs a group"):
        _dm(husky_copy, alpha=1.0, second_level=None, label_pattern=r"\d+-[a-z]+")


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval(husky: Path, alpha: float) -> None:
    with pytest.raises(ValueError, match=rf"data.alpha: expected a share in \[0, 1\]; found {alpha}"):
        _dm(husky, alpha=alpha)


def test_mask_of_another_size(husky_copy: Path) -> None:
    mask = husky_copy / "synthetic" / "L1_L0" / "mask" / "0003_cat.png"
    Image.new("L", (40, 64)).save(mask)
    with pytest.raises(ValueError, match=r"mask .*L1_L0/mask/0003_cat.png is 40x64 but its foreground .* is 64x64"):
        _dm(husky_copy, alpha=0.5)
    _dm(husky_copy, alpha=0.5, composite="clean")  # the composited images need no mask
    real_mask = husky_copy / "real" / "raw_split" / "mask" / "0001_cat.png"
    Image.new("L", (64, 50)).save(real_mask)
    with pytest.raises(ValueError, match=r"raw_split/mask/0001_cat.png is 64x50 but its foreground .* is 64x64"):
        _dm(husky_copy, alpha=0.5, composite="clean")


def test_raw_image_without_its_segments(husky_copy: Path) -> None:
    (husky_copy / "real" / "raw_split" / "background" / "0007_dog.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image 0007_dog.png has no background segment in .*raw_split"):
        _dm(husky_copy, alpha=0.5)
    (husky_copy / "synthetic" / "L0_L0" / "mask" / "0002_cat.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"first_level \(L0_L0\): image 0002_cat.png has no mask segment"):
        _dm(husky_copy, alpha=0.5, composite="segments")


def test_level_folder_name_that_does_not_parse(husky_copy: Path) -> None:
    (husky_copy / "synthetic" / "L1_L0").rename(husky_copy / "synthetic" / "level1")
    with pytest.raises(ValueError, match=r"level folder name 'level1' does not parse; expected L<foreground level>"):
        _dm(husky_copy, alpha=1.0, second_level=None)
    with pytest.raises(ValueError, match="'L1-L0' does not parse"):
        parse_level("L1-L0", "data.second_level")
    (husky_copy / "synthetic" / "level1").rename(husky_copy / "synthetic" / "L1_L0")
    with pytest.raises(FileNotFoundError, match=r"level L3_L0 not found .* found \['L0_L0', 'L1_L0', 'L2_L0'\]"):
        _dm(husky_copy, alpha=0.5, second_level="L3_L0")
