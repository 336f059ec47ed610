"""ImageFolderDataModule: every bad input is a clear error naming the option, path and what was wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures_images import folder_datamodule, make_image_tree, three_class_tree
from PIL import Image

from datamodules import ImageFolderDataModule

_dm = folder_datamodule


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return three_class_tree(tmp_path)


# --------------------------------------------------------------------------- folder errors


def test_missing_train_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        _dm(str(missing))
    msg = str(err.value)
    assert "data.train_roots[0]" in msg
    assert str(missing) in msg
    assert "does not exist" in msg
    assert "<root>/<class name>/<image file>" in msg


def test_missing_second_train_folder_names_its_index(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("data.train_roots[1]")):
        _dm([str(tree), str(tmp_path / "nowhere")])


def test_missing_test_folder_names_option(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.test_root: folder .*nowhere does not exist"):
        _dm(str(tree), test_root=str(tmp_path / "nowhere"))


def test_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "images.zip"
    file.write_bytes(b"PK")
    with pytest.raises(NotADirectoryError) as err:
        _dm(str(file))
    msg = str(err.value)
    assert "data.train_roots[0]" in msg
    assert str(file) in msg
    assert "is a file" in msg


def test_folder_without_class_folders(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "loose.png")
    (flat / ".hidden").mkdir()  # hidden folders do not count as classes
    with pytest.raises(ValueError) as err:
        _dm(str(flat))
    msg = str(err.value)
    assert "data.train_roots[0]" in msg
    assert str(flat) in msg
    assert "has no class folders" in msg


def test_empty_class_folder_is_named(tree: Path) -> None:
    (tree / "gnu").mkdir()
    (tree / "gnu" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError) as err:
        _dm(str(tree))
    msg = str(err.value)
    assert "'gnu'" in msg
    assert "hold no images" in msg
    assert "'cat'" not in msg and "'dog'" not in msg


def test_no_source_at_all() -> None:
    with pytest.raises(ValueError, match="give at least one of train_roots, val_root, test_root"):
        ImageFolderDataModule()


def test_class_mismatch_between_training_sources(tmp_path: Path) -> None:
    a = make_image_tree(tmp_path / "real", {"a": 2, "b": 2, "c": 2})
    b = make_image_tree(tmp_path / "synth", {"a": 2, "b": 2, "d": 2})
    with pytest.raises(ValueError) as err:
        _dm([str(a), str(b)])
    msg = str(err.value)
    assert "data.train_roots[1]" in msg
    assert str(b) in msg
    assert "missing ['c']" in msg
    assert "unexpected ['d']" in msg


def test_class_mismatch_between_train_and_test(tmp_path: Path) -> None:
    train = make_image_tree(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    test = make_image_tree(tmp_path / "test", {"a": 2, "b": 2})
    with pytest.raises(ValueError) as err:
        _dm(str(train), test_root=str(test))
    msg = str(err.value)
    assert "data.test_root" in msg
    assert str(test) in msg
    assert "missing ['c']" in msg
    assert "unexpected" not in msg


def test_extra_class_in_test_is_unexpected(tmp_path: Path) -> None:
    train = make_image_tree(tmp_path / "train", {"a": 2, "b": 2})
    test = make_image_tree(tmp_path / "test", {"a": 2, "b": 2, "z": 1})
    with pytest.raises(ValueError, match=r"data\.test_root .*unexpected \['z'\]"):
        _dm(str(train), test_root=str(test))


# --------------------------------------------------------------------------- option validation


def test_train_fractions_length_mismatch(tree: Path) -> None:
    with pytest.raises(ValueError) as err:
        _dm(str(tree), train_fractions=[0.5, 0.5])
    msg = str(err.value)
    assert "data.train_fractions" in msg
    assert "2 values for 1 train_roots" in msg


@pytest.mark.parametrize("bad", [1.5, -0.1])
def test_train_fractions_out_of_range(tree: Path, bad: float) -> None:
    with pytest.raises(ValueError) as err:
        _dm(str(tree), train_fractions=[bad])
    msg = str(err.value)
    assert "data.train_fractions" in msg
    assert "[0, 1]" in msg
    assert str(bad) in msg


@pytest.mark.parametrize("bad", [1.0, -0.2, 2.0])
def test_val_fraction_out_of_range(tree: Path, bad: float) -> None:
    with pytest.raises(ValueError) as err:
        ImageFolderDataModule(train_roots=str(tree), val_fraction=bad)
    msg = str(err.value)
    assert "data.val_fraction" in msg
    assert "[0, 1)" in msg
    assert str(bad) in msg


def test_all_training_images_dropped_gives_clear_error(tree: Path) -> None:
    with pytest.raises(ValueError, match="train_fractions"):
        _dm(str(tree), train_fractions=[0.0])


# --------------------------------------------------------------------------- corrupt files


def test_corrupt_image_raises_at_setup_listing_file(tree: Path) -> None:
    bad = tree / "dog" / "2.png"
    bad.write_bytes(b"\x00garbage, not a png" * 8)
    dm = _dm(str(tree))  # __init__ does not decode images
    with pytest.raises(OSError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(bad) in msg
    assert "1 unreadable image file(s) in the train split" in msg
    assert "data.on_corrupt=skip" in msg
    assert "train" not in dm._datasets


def test_truncated_image_is_found(tree: Path) -> None:
    bad = tree / "fox" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # valid header, missing pixel data
    dm = _dm(str(tree))
    with pytest.raises(OSError, match=re.escape(str(bad))):
        dm.setup("fit")


def test_corrupt_image_skipped_and_counted(tree: Path) -> None:
    bad = tree / "dog" / "2.png"
    bad.write_bytes(b"garbage" * 10)
    dm = _dm(str(tree), on_corrupt="skip")
    dm.setup("fit")
    assert dm.skipped_files == [bad]
    assert len(dm._datasets["train"]) == 14
    assert "train0/dog/2.png" not in dm.example_ids("train")
    assert all(s.path != bad for s in dm.samples("train"))
    # Every remaining item loads.
    ds = dm._datasets["train"]
    assert [ds[i]["index"] for i in range(len(ds))] == list(range(14))


def test_check_images_off_defers_errors_to_loading(tree: Path) -> None:
    bad = tree / "dog" / "2.png"
    bad.write_bytes(b"garbage" * 10)
    dm = _dm(str(tree), check_images=False)
    dm.setup("fit")
    ds = dm._datasets["train"]
    index = [s.path for s in ds.samples].index(bad)
    with pytest.raises(OSError, match=r"cannot read image .*2\.png"):
        ds[index]


def test_corrupt_first_image_skipped(tree: Path) -> None:
    bad = tree / "cat" / "0.png"
    bad.write_bytes(b"garbage" * 10)
    dm = _dm(str(tree), on_corrupt="skip")
    dm.setup("fit")
    assert dm.skipped_files == [bad]
    assert dm.input_size == 16
