"""ImageFolderDataModule: class lists, sources and splits, image modes, transforms and batches."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_images import folder_datamodule, make_image_tree, three_class_tree
from PIL import Image

from datamodules import ImageFolderDataModule

_dm = folder_datamodule


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return three_class_tree(tmp_path)


# --------------------------------------------------------------------------- class list and properties


def test_properties_known_right_after_init(tree: Path) -> None:
    dm = _dm(str(tree))
    assert dm.num_classes == 3
    assert dm.class_names == ["cat", "dog", "fox"]
    assert dm.input_size == 16
    assert len(dm.samples("train")) == 15
    # No dataset is built (and no image decoded) before setup.
    assert dm._datasets == {}


def test_class_names_default_to_sorted_folder_names(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "r", {"zebra": 2, "ant": 2, "moose": 2})
    dm = _dm(str(root))
    assert dm.class_names == ["ant", "moose", "zebra"]
    for sample in dm.samples("train"):
        assert sample.label == ["ant", "moose", "zebra"].index(sample.path.parent.name)


def test_class_names_property_is_a_copy(tree: Path) -> None:
    dm = _dm(str(tree))
    dm.class_names.append("intruder")
    assert dm.class_names == ["cat", "dog", "fox"]


def test_explicit_class_names_order_sets_labels(tree: Path) -> None:
    order = ["fox", "cat", "dog"]
    dm = _dm(str(tree), class_names=order)
    assert dm.class_names == order
    assert dm.num_classes == 3
    labels = {s.path.parent.name: s.label for s in dm.samples("train")}
    assert labels == {"fox": 0, "cat": 1, "dog": 2}
    dm.setup("fit")
    ds = dm._datasets["train"]
    for i in range(len(ds)):
        assert ds[i]["label"] == order.index(ds.samples[i].path.parent.name)


def test_explicit_class_names_not_matching_folders(tree: Path) -> None:
    with pytest.raises(ValueError) as err:
        _dm(str(tree), class_names=["cat", "dog", "wolf"])
    msg = str(err.value)
    assert "data.train_roots[0]" in msg
    assert "missing ['wolf']" in msg
    assert "unexpected ['fox']" in msg


def test_single_class_is_refused(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "r", {"only": 3})
    with pytest.raises(ValueError, match=r"need at least 2 classes.*'only'"):
        _dm(str(root))


# --------------------------------------------------------------------------- sources and splits


def test_several_sources_with_fractions(tmp_path: Path) -> None:
    real = make_image_tree(tmp_path / "real", {"a": 10, "b": 10}, seed=1)
    synth = make_image_tree(tmp_path / "synth", {"a": 10, "b": 10}, seed=2)
    dm = _dm([str(real), str(synth)], train_fractions=[1.0, 0.5])
    ids = dm.example_ids("train")
    assert len(ids) == 30
    from0 = [i for i in ids if i.startswith("train0/")]
    from1 = [i for i in ids if i.startswith("train1/")]
    assert len(from0) == 20 and len(from1) == 10
    assert len(set(ids)) == 30
    assert all(re.fullmatch(r"train[01]/[ab]/\d+\.png", i) for i in ids)
    for sample in dm.samples("train"):
        root = real if sample.example_id.startswith("train0/") else synth
        assert sample.path.parent.parent == root
        assert sample.label == ["a", "b"].index(sample.path.parent.name)
    # The subset is seeded by split_seed.
    again = _dm([str(real), str(synth)], train_fractions=[1.0, 0.5])
    assert again.example_ids("train") == ids
    other = [_dm([str(real), str(synth)], train_fractions=[1.0, 0.5], split_seed=s) for s in (1, 2, 3)]
    assert any(o.example_ids("train") != ids for o in other)


def test_fraction_subset_counts(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "r", {"a": 10, "b": 10})
    assert len(_dm(str(root), train_fractions=[0.25]).samples("train")) == 5


def _val_ids(tree: Path, seed: int) -> tuple[list[str], list[str]]:
    dm = ImageFolderDataModule(train_roots=str(tree), val_fraction=0.2, split_seed=seed)
    return dm.example_ids("train"), dm.example_ids("val")


def test_seeded_stratified_validation_split(tmp_path: Path) -> None:
    tree = make_image_tree(tmp_path / "r", {"a": 10, "b": 10, "c": 10})
    train, val = _val_ids(tree, 0)
    assert len(val) == 6 and len(train) == 24
    assert not set(train) & set(val)
    assert len(set(train) | set(val)) == 30
    for cls in ("a", "b", "c"):
        assert sum(i.split("/")[1] == cls for i in val) == 2
    assert _val_ids(tree, 0) == (train, val)
    assert _val_ids(tree, 1)[1] != val


def test_small_class_still_gets_a_validation_image(tmp_path: Path) -> None:
    tree = make_image_tree(tmp_path / "r", {"a": 20, "b": 2})
    dm = ImageFolderDataModule(train_roots=str(tree), val_fraction=0.1)
    val_classes = [i.split("/")[1] for i in dm.example_ids("val")]
    assert sorted(val_classes) == ["a", "a", "b"]
    train_classes = [i.split("/")[1] for i in dm.example_ids("train")]
    assert train_classes.count("b") == 1


def test_explicit_val_root(tmp_path: Path) -> None:
    train = make_image_tree(tmp_path / "train", {"a": 6, "b": 6})
    val = make_image_tree(tmp_path / "val", {"a": 2, "b": 3}, seed=5)
    dm = ImageFolderDataModule(train_roots=str(train), val_root=str(val), val_fraction=0.5)
    assert len(dm.samples("train")) == 12  # val_fraction is ignored when val_root is given
    assert sorted(dm.example_ids("val")) == sorted(
        ["val/a/0.png", "val/a/1.png", "val/b/0.png", "val/b/1.png", "val/b/2.png"]
    )
    assert all(s.path.parent.parent == val for s in dm.samples("val"))
    dm.setup("validate")
    assert len(dm._datasets["val"]) == 5
    assert "train" not in dm._datasets


def test_val_fraction_zero_means_no_validation(tree: Path) -> None:
    dm = _dm(str(tree))
    dm.setup("fit")
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match=r"the val split is empty; set data\.val_root or a val_fraction > 0"):
        dm.setup("validate")


def test_empty_test_split_error(tree: Path) -> None:
    dm = ImageFolderDataModule(train_roots=str(tree))
    with pytest.raises(ValueError) as err:
        dm.setup("test")
    msg = str(err.value)
    assert "test split is empty" in msg
    assert "data.test_root" in msg


def test_test_only_datamodule(tmp_path: Path) -> None:
    test = make_image_tree(tmp_path / "test", {"a": 2, "b": 2})
    dm = ImageFolderDataModule(test_root=str(test))
    assert dm.class_names == ["a", "b"]
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match=r"train split is empty; set data\.train_roots"):
        dm.setup("fit")


# --------------------------------------------------------------------------- image modes, transforms, batches


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_become_three_channels(tmp_path: Path, mode: str) -> None:
    root = make_image_tree(tmp_path / "r", {"a": 2, "b": 2}, mode=mode)
    with Image.open(root / "a" / "0.png") as img:
        assert img.mode == mode
    dm = _dm(str(root), normalize=False)
    dm.setup("fit")
    ds = dm._datasets["train"]
    image = ds[0]["image"]
    assert image.shape == (3, 16, 16)
    assert image.dtype == torch.float32
    with Image.open(ds.samples[0].path) as img:
        pixels = np.asarray(img.convert("RGBA" if mode == "RGBA" else "RGB"), dtype=np.float64)
    if mode == "RGBA":  # composited over white: c * a + 255 * (1 - a), a in [0, 1]
        alpha = pixels[..., 3:] / 255.0
        pixels = np.round(pixels[..., :3] * alpha + 255.0 * (1 - alpha))
    expected = (pixels / 255.0).astype(np.float32)
    torch.testing.assert_close(image, torch.from_numpy(expected).permute(2, 0, 1))
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_normalize_uses_mean_and_std(tree: Path) -> None:
    raw = _dm(str(tree), normalize=False)
    norm = _dm(str(tree), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    assert norm.mean == (0.5, 0.25, 0.0) and raw.mean is None and raw.std is None
    raw.setup("fit")
    norm.setup("fit")
    x = raw._datasets["train"][0]["image"]
    y = norm._datasets["train"][0]["image"]
    assert 0.0 <= x.min() and x.max() <= 1.0
    expected = (x - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor([0.5, 0.25, 2.0])[:, None, None]
    torch.testing.assert_close(y, expected)


def test_batches_are_dicts_with_image_label_index(tree: Path) -> None:
    dm = ImageFolderDataModule(train_roots=str(tree), val_fraction=0.2, batch_size=4, eval_batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert batch["index"].shape == (4,) and batch["index"].dtype == torch.int64
    assert batch["label"].min() >= 0 and batch["label"].max() < 3
    train_samples = dm.samples("train")
    for idx, label in zip(batch["index"].tolist(), batch["label"].tolist()):
        assert train_samples[idx].label == label

    val_batches = list(dm.val_dataloader())
    assert [b["image"].shape[0] for b in val_batches] == [3]  # 1 of 5 per class, one eval batch of <= 5
    assert val_batches[0]["index"].tolist() == [0, 1, 2]
    assert val_batches[0]["label"].tolist() == [s.label for s in dm.samples("val")]


def test_eval_batch_size_defaults_to_batch_size(tree: Path) -> None:
    dm = _dm(str(tree), batch_size=4)
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 4
    dm2 = _dm(str(tree), batch_size=4, predict_split="train")
    dm2.setup("predict")
    assert dm2.predict_dataloader().batch_size == 4


@pytest.mark.parametrize("preset", ["none", "cifar", "tckr"])
@pytest.mark.parametrize("image_size", [None, 24])
def test_transform_presets_give_square_float_tensors(tree: Path, preset: str, image_size: int | None) -> None:
    dm = _dm(str(tree), transform=preset, image_size=image_size)
    side = image_size or 16
    assert dm.input_size == side
    dm.setup("fit")
    torch.manual_seed(0)
    for i in range(3):
        image = dm._datasets["train"][i]["image"]
        assert image.shape == (3, side, side)
        assert image.dtype == torch.float32
        assert torch.isfinite(image).all()


def test_none_preset_is_deterministic_and_cifar_augments(tree: Path) -> None:
    plain = _dm(str(tree), transform="none")
    plain.setup("fit")
    first = plain._datasets["train"][0]["image"]
    torch.manual_seed(0)
    assert all(torch.equal(first, plain._datasets["train"][0]["image"]) for _ in range(5))

    aug = _dm(str(tree), transform="cifar")
    aug.setup("fit")
    torch.manual_seed(0)
    views = [aug._datasets["train"][0]["image"] for _ in range(8)]
    assert any(not torch.equal(v, first) for v in views)


def test_augmentation_only_for_training(tree: Path) -> None:
    dm = ImageFolderDataModule(train_roots=str(tree), val_fraction=0.2, transform="tckr")
    dm.setup("fit")
    torch.manual_seed(0)
    val = dm._datasets["val"]
    first = val[0]["image"]
    assert all(torch.equal(first, val[0]["image"]) for _ in range(4))


def test_image_size_resizes(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "r", {"a": 2, "b": 2}, size=20)
    dm = ImageFolderDataModule(train_roots=str(root), test_root=str(root), val_fraction=0.0, image_size=8, batch_size=4)
    assert dm.input_size == 8
    dm.setup("fit")
    dm.setup("test")
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 3, 8, 8)
    assert next(iter(dm.test_dataloader()))["image"].shape == (4, 3, 8, 8)


def test_native_size_is_input_size(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "r", {"a": 2, "b": 2}, size=12)
    assert _dm(str(root)).input_size == 12


def test_mixed_size_sources_match_input_size(tmp_path: Path) -> None:
    small = make_image_tree(tmp_path / "real", {"a": 2, "b": 2}, size=16)
    large = make_image_tree(tmp_path / "synth", {"a": 2, "b": 2}, size=24)
    dm = _dm([str(small), str(large)])
    dm.setup("fit")
    ds = dm._datasets["train"]
    assert {tuple(ds[i]["image"].shape) for i in range(len(ds))} == {(3, dm.input_size, dm.input_size)}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_predict_split_selects_split(tmp_path: Path, split: str) -> None:
    train = make_image_tree(tmp_path / "train", {"a": 5, "b": 5})
    test = make_image_tree(tmp_path / "test", {"a": 3, "b": 3}, seed=3)
    dm = ImageFolderDataModule(
        train_roots=str(train), test_root=str(test), val_fraction=0.2, predict_split=split, batch_size=64
    )
    dm.setup("predict")
    assert set(dm._datasets) == {split}
    expected = {"train": 8, "val": 2, "test": 6}[split]
    batches = list(dm.predict_dataloader())
    assert sum(b["image"].shape[0] for b in batches) == expected
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(expected))  # not shuffled
    prefix = {"train": "train0/", "val": "train0/", "test": "test/"}[split]
    assert all(i.startswith(prefix) for i in dm.example_ids(split))


def test_predict_on_empty_split_errors(tree: Path) -> None:
    dm = _dm(str(tree), predict_split="val")
    with pytest.raises(ValueError, match="the val split is empty"):
        dm.setup("predict")
