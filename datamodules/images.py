"""ImageFolderDataModule: ``root/<class>/<image>`` trees, several training sources, one class list."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from datamodules.ats_policies import parse_spec as parse_ats_policy
from datamodules.folders import (
    LAYOUT,
    Sample,
    check_same_classes,
    find_unreadable,
    load_rgb,
    read_image_size,
    scan_class_folders,
    stratified_split,
)
from datamodules.hparams import save_own_hyperparameters
from datamodules.pool import MembershipPool
from datamodules.split_loaders import SplitLoaders
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformPreset, build_transform

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class ImageFileDataset(Dataset):
    """Images from a list of samples; items are dicts with ``image``, ``label`` and ``index``."""

    def __init__(self, samples: list[Sample], transform: Any) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return {"image": self.transform(load_rgb(sample.path)), "label": sample.label, "index": index}


class ImageFolderDataModule(SplitLoaders, LightningDataModule):
    """Real and/or synthetic image folders sharing one class list."""

    def __init__(
        self,
        train_roots: str | list[str] | None = None,
        train_fractions: list[float] | None = None,
        val_root: str | None = None,
        val_fraction: float = 0.1,
        test_root: str | None = None,
        predict_split: Literal["train", "val", "test", "all"] = "test",
        class_names: list[str] | None = None,
        image_size: int | None = None,
        transform: TransformPreset = "none",
        ats_policy: str = "",
        normalize: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        split_seed: int = 0,
        on_corrupt: Literal["error", "skip"] = "error",
        check_images: bool = True,
    ) -> None:
        """Scan the folders and fix the class list (cheap: no image is decoded here).

        Args:
            train_roots: one or more training folders laid out as <root>/<class>/<image> (e.g. real and
                synthetic images).
            train_fractions: per-source share of images used (seeded subset, 0..1); default all of each.
            val_root: explicit validation folder; when unset, val_fraction of the pooled training images is
                held out (stratified, seeded by split_seed).
            val_fraction: held-out share of the training images when val_root is unset; 0 disables validation.
            test_root: real test folder.
            predict_split: which split `predict` runs on; 'all' gives one loader per non-empty split, in the
                order train, val, test (see ``predict_splits``).
            class_names: class names in label order; default the sorted class folders of the first source.
            image_size: resize every image to this square size; default the first image's longer side.
            transform: training augmentation preset: none, cifar (crop + flip), tckr (flip, AugMix, crop) or ats
                (the ATS policy in ats_policy, no crop or flip: SemSim's ``aug`` mode).
            ats_policy: ATS sub-policy indices for transform=ats: "3-1-7" applies 3, 1, 7 in sequence,
                "3-1-7+43-18-18" picks one chain per image; empty = no augmentation (datamodules/ats_policies.py).
            normalize: subtract mean and divide by std after scaling to [0, 1].
            mean: per-channel normalisation mean.
            std: per-channel normalisation std.
            batch_size: training batch size.
            eval_batch_size: batch size for val/test/predict; default batch_size.
            num_workers: DataLoader worker processes.
            split_seed: seed of the validation split and of per-source subsets (separate from the training seed).
            on_corrupt: 'error' lists unreadable files and stops; 'skip' drops them and counts them.
            check_images: decode every image once at setup to find corrupt files early.
        """
        super().__init__()
        roots = [train_roots] if isinstance(train_roots, str) else list(train_roots or [])
        fractions = list(train_fractions) if train_fractions is not None else [1.0] * len(roots)
        if len(fractions) != len(roots):
            raise ValueError(f"data.train_fractions has {len(fractions)} values for {len(roots)} train_roots")
        for f in fractions:
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"data.train_fractions values must be in [0, 1]; got {f}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1); got {val_fraction}")
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size is not None and size < 1:
                raise ValueError(f"data.{name}: expected a positive number of examples per batch; found {size}")
        try:
            parse_ats_policy(ats_policy)
        except ValueError as error:
            raise ValueError(f"data.ats_policy: {error}") from None
        if not roots and test_root is None and val_root is None:
            raise ValueError("data: give at least one of train_roots, val_root, test_root")
        self.skipped_files: list[Path] = []
        self._datasets: dict[str, ImageFileDataset] = {}

        scans = {f"train_roots[{k}]": scan_class_folders(r, f"data.train_roots[{k}]") for k, r in enumerate(roots)}
        if val_root is not None:
            scans["val_root"] = scan_class_folders(val_root, "data.val_root")
        if test_root is not None:
            scans["test_root"] = scan_class_folders(test_root, "data.test_root")
        first = next(iter(scans.values()))
        self._class_names = list(class_names) if class_names is not None else sorted(first)
        if len(self._class_names) < 2:
            raise ValueError(f"data: need at least 2 classes; found {self._class_names} in {next(iter(scans))}")
        for what, scan in scans.items():
            check_same_classes(
                self._class_names, sorted(scan), f"data.{what} ({_root_of(what, roots, val_root, test_root)})"
            )

        train: list[Sample] = []
        for k in range(len(roots)):
            samples = self._samples(scans[f"train_roots[{k}]"], f"train{k}")
            if fractions[k] < 1.0:
                rng = np.random.default_rng([split_seed, k])
                keep = np.sort(rng.choice(len(samples), round(fractions[k] * len(samples)), replace=False))
                samples = [samples[i] for i in keep]
            train += samples
        self._samples_by_split: dict[str, list[Sample]] = {"train": train, "val": [], "test": []}
        if val_root is not None:
            self._samples_by_split["val"] = self._samples(scans["val_root"], "val")
        elif val_fraction > 0 and train:
            keep, held = stratified_split(np.array([s.label for s in train]), val_fraction, split_seed)
            self._samples_by_split["val"] = [train[i] for i in held]
            self._samples_by_split["train"] = [train[i] for i in keep]
        if test_root is not None:
            self._samples_by_split["test"] = self._samples(scans["test_root"], "test")
        # class_names stays out of the hparams: the resolved list reaches the model through the CLI link, and
        # Lightning refuses differing values under one key in model and data hparams.
        save_own_hyperparameters(self, ignore=["class_names"])
        all_samples = [s for split in self._samples_by_split.values() for s in split]
        if not all_samples:
            raise ValueError(
                "data: no images left in any split (check data.train_fractions, which may round a source to 0 images)"
            )
        self._input_size = image_size if image_size is not None else _first_readable_size(all_samples)
        norm = (mean, std) if normalize else (None, None)
        self.mean, self.std = norm
        self._transforms = {
            # Always resize to input_size: sources of other sizes must still batch together.
            train_flag: build_transform(
                transform, self._input_size, True, *norm, train=train_flag, ats_policy=ats_policy
            )
            for train_flag in (True, False)
        }

    def _samples(self, scan: dict[str, list[Path]], tag: str) -> list[Sample]:
        return [
            Sample(path, self._class_names.index(name), f"{tag}/{name}/{path.name}")
            for name in self._class_names
            for path in scan[name]
        ]

    @property
    def num_classes(self) -> int:
        """Number of classes (linked into the model)."""
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (linked into the model)."""
        return list(self._class_names)

    @property
    def input_size(self) -> int:
        """Side in pixels of the images the model receives (linked into the model)."""
        return self._input_size

    @property
    def predict_splits(self) -> list[Split]:
        """Split names of the predict loaders, in loader order."""
        if self.hparams.predict_split == "all":
            return [split for split in SPLITS if self._samples_by_split[split]]
        return [self.hparams.predict_split]

    def samples(self, split: Split) -> list[Sample]:
        """The samples of a split, in dataset-index order."""
        return list(self._samples_by_split[split])

    def example_ids(self, split: Split) -> list[str]:
        """Stable example ids (source tag / class / file name) of a split, in dataset-index order."""
        return [s.example_id for s in self._samples_by_split[split]]

    def membership_pool(self, split: Split) -> MembershipPool:
        """A split as uint8 images resized to ``input_size``, for shadow-model training held in memory."""
        if not self._samples_by_split[split]:
            raise ValueError(f"data: the {split} split is empty; {_how_to_fill(split)} (layout {LAYOUT})")
        samples = self._checked(split)
        resize = v2.Compose(
            [v2.ToImage(), v2.Resize((self._input_size,) * 2, interpolation=InterpolationMode.BICUBIC, antialias=True)]
        )
        images = torch.stack([resize(load_rgb(s.path)) for s in samples])
        train_transform = build_transform(
            self.hparams.transform,
            self._input_size,
            False,
            self.mean,
            self.std,
            train=True,
            ats_policy=self.hparams.ats_policy,
        )
        return MembershipPool(
            inputs=images,
            labels=np.array([s.label for s in samples], dtype=np.int64),
            ids=[s.example_id for s in samples],
            augment=self.hparams.transform,
            mean=self.mean,
            std=self.std,
            train_transform=train_transform,
        )

    def _checked(self, split: Split) -> list[Sample]:
        samples = self._samples_by_split[split]
        if not self.hparams.check_images:
            return samples
        bad = find_unreadable(samples)
        if not bad:
            return samples
        if self.hparams.on_corrupt == "error":
            listing = "\n".join(f"  {p}: {reason}" for p, reason in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise OSError(
                f"data: {len(bad)} unreadable image file(s) in the {split} split:\n{listing}{more}\n"
                "Fix or remove them, or set data.on_corrupt=skip to leave them out."
            )
        bad_paths = {p for p, _ in bad}
        self.skipped_files += sorted(bad_paths)
        log.warning("data: skipped %d unreadable image(s) in the %s split", len(bad_paths), split)
        kept = [s for s in samples if s.path not in bad_paths]
        self._samples_by_split[split] = kept
        return kept

    def setup(self, stage: str) -> None:
        """Check the images of the splits this stage needs and build their datasets."""
        needed: dict[str, Sequence[Split]] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": self.predict_splits,
        }
        for split in needed[stage]:
            if split in self._datasets:
                continue
            if not self._samples_by_split[split]:
                if stage == "fit" and split == "val":
                    continue  # training without validation is allowed (val_fraction 0, no val_root)
                raise ValueError(f"data: the {split} split is empty; {_how_to_fill(split)} (layout {LAYOUT})")
            samples = self._checked(split)
            self._datasets[split] = ImageFileDataset(samples, self._transforms[split == "train"])

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """Batches of ``predict_split`` in index order; for 'all', one loader per entry of ``predict_splits``."""
        if self.hparams.predict_split == "all":
            return [self._loader(split, shuffle=False) for split in self.predict_splits]
        return self._loader(self.hparams.predict_split, shuffle=False)

    def train_example_ids(self) -> list[str]:
        """Ids of the examples `fit` trains on, in training-set order: the train split after train_fractions, the
        val_fraction hold-out and on_corrupt skips (the strings ``membership_pool('train')`` gives; the fit
        records them in ``<run>/trained_ids.txt``)."""
        samples = self._datasets["train"].samples if "train" in self._datasets else self._checked("train")
        return [s.example_id for s in samples]


def _first_readable_size(samples: list[Sample]) -> int:
    """Side of the first image that opens (corrupt files are reported at setup, not here)."""
    for sample in samples:
        try:
            return read_image_size(sample.path)
        except Exception:  # PIL raises many types; find_unreadable lists them at setup
            continue
    raise OSError(f"data: none of the {len(samples)} image files could be read, e.g. {samples[0].path}")


def _root_of(what: str, roots: list[str], val_root: str | None, test_root: str | None) -> str:
    if what == "val_root":
        return str(val_root)
    if what == "test_root":
        return str(test_root)
    return str(roots[int(what[len("train_roots[") : -1])])


def _how_to_fill(split: str) -> str:
    return {
        "train": "set data.train_roots",
        "val": "set data.val_root or a val_fraction > 0",
        "test": "set data.test_root",
    }[split]
