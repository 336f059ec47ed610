"""`synthpriv data`: bundled datasets written as train/val/test class folders, and stratified splitting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.folders import scan_class_folders, stratified_split
from tools.bundled_data import ANIMAL_MNIST_CLASSES, MANIFEST, materialise_dataset


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return materialise_dataset("digits", out=str(tmp_path / "digits"), per_class=6, seed=0)


def test_digits_layout_and_manifest(digits: Path, tmp_path: Path) -> None:
    assert digits == tmp_path / "digits"
    manifest = json.loads((digits / MANIFEST).read_text())
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert manifest["options"] == {
        "dataset": "digits",
        "val_fraction": 0.1,
        "test_fraction": 0.2,
        "per_class": 6,
        "seed": 0,
    }
    counts = manifest["counts"]
    assert set(counts) == {"train", "val", "test"}
    assert sum(counts.values()) == 60
    assert counts == {"train": 40, "val": 10, "test": 10}  # 4/1/1 of 6 per class
    for split, count in counts.items():
        scan = scan_class_folders(digits / split, f"{split}")
        assert sorted(scan) == manifest["class_names"]
        assert sum(len(files) for files in scan.values()) == count
        assert {len(files) for files in scan.values()} == {count // 10}
    # No staging folder is left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_digits_images_readable_and_disjoint(digits: Path) -> None:
    names: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        files = sorted((digits / split).rglob("*.png"))
        names[split] = {p.name for p in files}
        for path in files:
            with Image.open(path) as img:
                img.load()
                assert img.size == (8, 8)
                assert img.mode == "L"
                assert np.asarray(img).max() > 0  # not blank
    assert not names["train"] & names["val"]
    assert not names["train"] & names["test"]
    assert not names["val"] & names["test"]


def test_digits_labels_match_source(digits: Path) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for path in sorted((digits / "test").rglob("*.png")):
        index = int(path.stem)
        assert bunch.target[index] == int(path.parent.name)
        with Image.open(path) as img:
            expected = np.clip(np.round(bunch.images[index] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            assert np.array_equal(np.asarray(img), expected)


def test_rerun_with_same_options_is_noop(digits: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _files(digits)
    assert materialise_dataset("digits", out=str(digits), per_class=6, seed=0) == digits
    assert _files(digits) == before
    assert "nothing to do" in capsys.readouterr().out


def test_rerun_with_other_options_refused(digits: Path) -> None:
    before = _files(digits)
    with pytest.raises(FileExistsError) as err:
        materialise_dataset("digits", out=str(digits), per_class=6, seed=1)
    msg = str(err.value)
    assert str(digits) in msg
    assert "other options" in msg
    assert "'seed': 1" in msg
    assert _files(digits) == before


def test_same_seed_same_files(digits: Path, tmp_path: Path) -> None:
    again = materialise_dataset("digits", out=str(tmp_path / "again"), per_class=6, seed=0)
    other = materialise_dataset("digits", out=str(tmp_path / "other"), per_class=6, seed=3)
    assert set(_files(again)) == set(_files(digits))
    assert set(_files(other)) != set(_files(digits))


def test_non_empty_folder_without_manifest_refused(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError) as err:
        materialise_dataset("digits", out=str(out), per_class=2)
    msg = str(err.value)
    assert str(out) in msg
    assert "not empty" in msg
    assert MANIFEST in msg
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    materialise_dataset("digits", out=str(out), per_class=3)
    assert (out / MANIFEST).is_file()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "test", "train", "val"]


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction"),
    [(0.5, 0.5), (-0.1, 0.2), (0.1, 0.0), (0.1, 1.0), (1.0, 0.2), (0.6, 0.5)],
)
def test_bad_fractions(tmp_path: Path, val_fraction: float, test_fraction: float) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ValueError) as err:
        materialise_dataset("digits", out=str(out), val_fraction=val_fraction, test_fraction=test_fraction)
    msg = str(err.value)
    assert "--val_fraction" in msg and "--test_fraction" in msg
    assert f"{val_fraction}, {test_fraction}" in msg
    assert not out.exists()


def test_animal_mnist_small(tmp_path: Path) -> None:
    out = materialise_dataset("animal-mnist", out=str(tmp_path / "animals"), per_class=3, seed=0)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["class_names"] == ANIMAL_MNIST_CLASSES
    assert ANIMAL_MNIST_CLASSES[0] == "bear" and ANIMAL_MNIST_CLASSES[-1] == "zebra"
    assert len(ANIMAL_MNIST_CLASSES) == 10
    assert manifest["counts"] == {"train": 10, "val": 10, "test": 10}
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (out / split).iterdir()) == ANIMAL_MNIST_CLASSES
        files = sorted((out / split).rglob("*.png"))
        assert len(files) == 10
        with Image.open(files[0]) as img:
            img.load()
            assert img.size == (28, 28)


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), [40, 20, 10, 30])
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [8, 4, 2, 6]
    assert np.bincount(labels[keep]).tolist() == [32, 16, 8, 24]
    assert not np.intersect1d(keep, held).size
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    assert np.array_equal(keep, np.sort(keep)) and np.array_equal(held, np.sort(held))


def test_stratified_split_seeded() -> None:
    labels = np.repeat(np.arange(3), 10)
    first = stratified_split(labels, 0.3, seed=7)
    again = stratified_split(labels, 0.3, seed=7)
    other = stratified_split(labels, 0.3, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_stratified_split_edge_cases() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    keep, held = stratified_split(labels, 0.01, seed=0)
    # Every class with 2+ members gives at least one, and keeps at least one.
    assert np.bincount(labels[held], minlength=3).tolist() == [1, 1, 0]
    keep, held = stratified_split(labels, 0.9, seed=0)
    assert np.bincount(labels[keep], minlength=3).tolist()[:2] == [1, 1]
    keep, held = stratified_split(labels, 0.0, seed=0)
    assert held.size == 0 and keep.tolist() == list(range(6))
