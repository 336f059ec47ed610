"""SpinMLDataModule: training mixes of two synthetic privacy levels, tested on the real images (SpinML utility).

Layout and compositing: ``datamodules/spinml_layout.py``. The training set follows SpinML's
``train_mobilenet.py`` (reference/seeds.md §1.5): ``int(alpha * n_first)`` images from ``first_level`` and
``int((1 - alpha) * n_second)`` from ``second_level``, drawn without replacement by default, with replacement
(duplicates possible, as the original's ``random.choices``) when ``with_replacement`` is set; ``val_fraction`` of
the pooled draw is held out (stratified, seeded); the test set is all of ``real/raw``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.folders import load_rgb, stratified_split
from datamodules.hparams import save_own_hyperparameters
from datamodules.spinml_layout import (
    DEFAULT_LABEL_PATTERN,
    HUSKY_CLASSES,
    LAYOUT,
    Segments,
    check_segment_sizes,
    compile_label_pattern,
    composite_files,
    find_segments,
    image_files,
    label_of,
    parse_level,
)
from datamodules.split_loaders import SplitLoaders
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformPreset, build_transform

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class SpinMLItem:
    """One training or test image: a file, or a segment triple composited when loaded."""

    source: Path | Segments
    label: int
    example_id: str

    def load(self) -> Image.Image:
        """The RGB image (composited through its mask for a segment triple)."""
        if isinstance(self.source, Segments):
            return composite_files(self.source)
        return load_rgb(self.source)


class SpinMLDataset(Dataset):
    """Items are dicts with ``image``, ``label`` and ``index``."""

    def __init__(self, items: list[SpinMLItem], transform: Any) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {"image": self.transform(item.load()), "label": item.label, "index": index}


class SpinMLDataModule(SplitLoaders, LightningDataModule):
    """SpinML's husky layout: synthetic levels ``L<fg>_L<bg>`` for training, ``real/raw`` for testing."""

    def __init__(
        self,
        root: str,
        alpha: float = 0.8,
        first_level: str = "L0_L0",
        second_level: str | None = "L1_L0",
        with_replacement: bool = False,
        composite: Literal["auto", "segments", "clean"] = "auto",
        label_pattern: str = DEFAULT_LABEL_PATTERN,
        class_names: list[str] | None = None,
        val_fraction: float = 0.1,
        image_size: int = 224,
        transform: TransformPreset = "none",
        normalize: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 128,
        eval_batch_size: int | None = 4,
        num_workers: int = 0,
        split_seed: int = 0,
        predict_split: Split = "test",
    ) -> None:
        """Scan the layout, parse every label and check segment sizes (header reads only; no decoding).

        Args:
            root: the dataset folder holding ``real/`` and ``synthetic/`` (e.g. ``SpinML-Artifact/data/husky``).
            alpha: share drawn from first_level (SpinML's ``--alpha``, the L0_L0 share); 1 - alpha comes from
                second_level. In [0, 1].
            first_level: level folder under synthetic/ for the alpha share, named L<fg>_L<bg>.
            second_level: level folder for the 1 - alpha share (SpinML's ``--augdata``); may be null when alpha = 1.
            with_replacement: draw each share with replacement like the original (``random.choices``: duplicates,
                which may land in both train and val); default without replacement.
            composite: 'segments' composites foreground/, background/, mask/ on the fly (README layout);
                'clean' reads composited images from clean/ (code layout); 'auto' uses segments when the
                level has them, else clean/.
            label_pattern: regex matched at the start of each file stem; its group 'label' (or its only group)
                is the class name. Default: the second underscore-separated token, as the original.
            class_names: class names in label order (the class map); default SpinML's husky map
                sleeping=0, eating=1, playing=2, sitting=3.
            val_fraction: share of the drawn training images held out for validation (stratified, seeded); the
                original holds out 0.1 at random. 0 disables validation.
            image_size: every image is resized to this square side (the original: 224).
            transform: training augmentation preset (datamodules/transforms.py); the original: none.
            normalize: subtract mean and divide by std; the original feeds [0, 1] tensors (False).
            mean: per-channel normalisation mean.
            std: per-channel normalisation std.
            batch_size: training batch size (the original: 128).
            eval_batch_size: val/test/predict batch size (the original: 4); null = batch_size.
            num_workers: DataLoader worker processes.
            split_seed: seed of the draws and of the validation split (separate from the training seed).
            predict_split: which split `predict` runs on.
        """
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"data.alpha: expected a share in [0, 1]; found {alpha}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction: expected a value in [0, 1); found {val_fraction}")
        for name, size in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("image_size", image_size),
        ):
            if size is not None and size < 1:
                raise ValueError(f"data.{name}: expected a positive integer; found {size}")
        if second_level is None and alpha < 1.0:
            raise ValueError(f"data.second_level is null but data.alpha={alpha} < 1 asks for a share from it")
        self._class_names = list(class_names) if class_names is not None else list(HUSKY_CLASSES)
        if len(self._class_names) < 2 or len(set(self._class_names)) != len(self._class_names):
            raise ValueError(f"data.class_names: expected at least 2 distinct names; found {self._class_names}")
        self._pattern = compile_label_pattern(label_pattern)
        self.root = Path(root).expanduser()
        if not (self.root / "real" / "raw").is_dir():
            raise FileNotFoundError(f"data.root: {self.root / 'real' / 'raw'} is missing; expected {LAYOUT}")
        self._levels = self._scan_levels()
        for option, level in (("first_level", first_level), ("second_level", second_level)):
            if level is None:
                continue
            parse_level(level, f"data.{option}")
            if level not in self._levels:
                raise FileNotFoundError(
                    f"data.{option}: level {level} not found in {self.root / 'synthetic'}; found {sorted(self._levels)}"
                )

        rng = np.random.default_rng(split_seed)
        train: list[SpinMLItem] = []
        for option, level, share in (("first_level", first_level, alpha), ("second_level", second_level, 1 - alpha)):
            if level is None:
                continue
            pool = self._level_items(level, composite, f"data.{option}")
            count = int(share * len(pool))  # truncation as the original; alpha = 0 or 1 gives 0 from one side
            if count == 0:
                continue
            picks = rng.choice(len(pool), count, replace=with_replacement)
            picks = picks if with_replacement else np.sort(picks)
            train += [
                SpinMLItem(pool[i].source, pool[i].label, f"{pool[i].example_id}#{k}") for k, i in enumerate(picks)
            ]
        if not train:
            raise ValueError(
                f"data: the draw is empty: alpha={alpha} of {first_level} and 1 - alpha of {second_level} "
                "round down to 0 images"
            )
        self._items: dict[str, list[SpinMLItem]] = {"train": train, "val": [], "test": self._test_items()}
        if val_fraction > 0:
            keep, held = stratified_split(np.array([s.label for s in train]), val_fraction, split_seed)
            self._items["train"] = [train[i] for i in keep]
            self._items["val"] = [train[i] for i in held]
        save_own_hyperparameters(self, ignore=["class_names"])
        norm = (mean, std) if normalize else (None, None)
        self.mean, self.std = norm
        self._transforms = {
            flag: build_transform(transform, image_size, True, *norm, train=flag) for flag in (True, False)
        }
        self._datasets: dict[str, SpinMLDataset] = {}

    def _scan_levels(self) -> dict[str, Path]:
        synthetic = self.root / "synthetic"
        if not synthetic.is_dir():
            raise FileNotFoundError(f"data.root: {synthetic} is missing; expected {LAYOUT}")
        levels = {}
        for folder in sorted(d for d in synthetic.iterdir() if d.is_dir() and not d.name.startswith(".")):
            parse_level(folder.name, f"data.root ({synthetic})")
            levels[folder.name] = folder
        if not levels:
            raise ValueError(f"data.root: {synthetic} holds no level folders L<fg>_L<bg>; expected {LAYOUT}")
        return levels

    def _level_items(self, level: str, composite: str, option: str) -> list[SpinMLItem]:
        folder = self._levels[level]
        has_segments = (folder / "foreground").is_dir()
        if composite == "segments" or (composite == "auto" and has_segments):
            triples = find_segments(folder, None, f"{option} ({level})")
            check_segment_sizes(triples)
            return [
                SpinMLItem(t, label_of(t.foreground, self._pattern, self._class_names), f"{level}/{t.name}")
                for t in triples
            ]
        clean = folder / "clean"
        if not clean.is_dir():
            raise FileNotFoundError(
                f"{option}: {folder} has neither foreground/background/mask segments nor clean/ (data.composite="
                f"{composite}); expected {LAYOUT}"
            )
        files = image_files(clean)
        if not files:
            raise ValueError(f"{option}: {clean} holds no images")
        return [SpinMLItem(f, label_of(f, self._pattern, self._class_names), f"{level}/{f.name}") for f in files]

    def _test_items(self) -> list[SpinMLItem]:
        raw = self.root / "real" / "raw"
        files = image_files(raw)
        if not files:
            raise ValueError(f"data.root: {raw} holds no images; expected the real test images there")
        items = [SpinMLItem(f, label_of(f, self._pattern, self._class_names), f"real/{f.name}") for f in files]
        if (self.root / "real" / "raw_split").is_dir():
            self.real_segments()  # a raw image without its segments, or segments of another size, stops here
        return items

    def real_segments(self) -> list[Segments]:
        """Segment triples of every ``real/raw`` image (errors name an image without its segments or a size)."""
        raw_files = image_files(self.root / "real" / "raw")
        triples = find_segments(self.root / "real" / "raw_split", [f.name for f in raw_files], "data.root (real)")
        check_segment_sizes(triples)
        for raw, t in zip(raw_files, triples, strict=True):
            with Image.open(raw) as img:
                size = img.size
            with Image.open(t.mask) as img:
                if img.size != size:
                    raise ValueError(
                        f"mask {t.mask} is {img.size[0]}x{img.size[1]} but its image {raw} is {size[0]}x{size[1]}; "
                        "a mask must have its image's size"
                    )
        return triples

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
        return self.hparams.image_size

    @property
    def levels(self) -> list[str]:
        """Level folders found under synthetic/."""
        return sorted(self._levels)

    def items(self, split: Split) -> list[SpinMLItem]:
        """The items of a split, in dataset-index order."""
        return list(self._items[split])

    def example_ids(self, split: Split) -> list[str]:
        """``<level>/<file>#<draw>`` (train/val) or ``real/<file>`` (test) per item, in dataset-index order."""
        return [s.example_id for s in self._items[split]]

    def setup(self, stage: str) -> None:
        """Build the datasets the stage needs."""
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": (self.hparams.predict_split,),
        }
        for split in needed[stage]:
            if not self._items[split]:
                if stage == "fit" and split == "val":
                    continue
                raise ValueError(f"data: the {split} split is empty (val_fraction={self.hparams.val_fraction})")
            self._datasets[split] = SpinMLDataset(self._items[split], self._transforms[split == "train"])

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_split`` in index order."""
        return self._loader(self.hparams.predict_split, shuffle=False)

    def train_example_ids(self) -> list[str]:
        """Ids of the examples `fit` trains on, in training-set order."""
        return self.example_ids("train")
