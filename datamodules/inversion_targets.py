"""InversionTargetDataModule: the private images a gradient-inversion attack tries to reconstruct.

Targets come from one class-folder tree (a split of an image dataset, ``<root>/<class>/<image>``). Every image
of the tree has a **global index** (its position in class order, then file-name order) and a stable **id**
``f"{index:06d}"``, which name its output files (``<id>_<label>_ori.png`` ...); neither depends on ``count``,
the batch size, the number of devices or which targets a rerun skips.

Each predict item holds the image twice, kept apart as SemSim's pitfall 6 asks (``seeds.md`` §2.8):

* ``original``: resized to ``image_size`` (bicubic, antialiased: the victim's evaluation transform), float in
  [0, 1], NOT augmented: what reconstructions are scored against.
* ``target``: the victim's training transform (``train_transform``: its augmentation, then normalisation by
  ``mean``/``std``), drawn with torch's RNG seeded by ``(seed, index)`` alone, so it is the same on every rerun
  and rank. The attacker observes the gradient of this image (as in the original attack).

``count`` targets are chosen by a seeded stratified order: each class's images are shuffled by ``seed`` and the
classes are interleaved round-robin, so every prefix is balanced across classes; the chosen ones are served in
global-index order. ``skip(ids)`` leaves finished targets out of the predict loader (the writer's resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.folders import Sample, check_same_classes, load_rgb, read_image_size, scan_class_folders
from datamodules.hparams import save_own_hyperparameters
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformPreset, build_transform


def target_id(index: int) -> str:
    """The stable id of the image with this global index (zero-padded: sorts as the integer does)."""
    return f"{int(index):06d}"


def augmentation_seed(seed: int, index: int) -> int:
    """Seed of target ``index``'s augmentation draw (depends on (seed, index) only)."""
    state = np.random.SeedSequence([int(seed), int(index), 0x1A7]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def stratified_order(labels: np.ndarray, seed: int) -> list[int]:
    """Positions ordered so that every prefix is stratified: per-class seeded shuffles, interleaved round-robin."""
    rng = np.random.default_rng(seed)
    per_class = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        per_class.append(list(idx))
    order: list[int] = []
    for rank in range(max(len(p) for p in per_class)):
        order += [int(p[rank]) for p in per_class if rank < len(p)]
    return order


class _Targets(Dataset):
    def __init__(self, module: InversionTargetDataModule, items: list[dict[str, Any]]) -> None:
        self.module, self.items = module, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.module.load_item(self.items[i])


class InversionTargetDataModule(LightningDataModule):
    """Targets of a gradient-inversion attack: originals, augmented normalised targets, labels and stable ids."""

    def __init__(
        self,
        root: str,
        count: int | None = None,
        image_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        train_transform: TransformPreset = "none",
        seed: int = 0,
        class_names: list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        """Scan the folder and fix the targets (no image is decoded here but the first, for its size).

        Args:
            root: class-folder tree of the private images, e.g. a dataset's test split.
            count: number of targets (the first ``count`` of the seeded stratified order); None: every image.
            image_size: side in pixels the victim takes; default the first image's longer side.
            mean: per-channel normalisation mean of the victim's inputs (its training data module's).
            std: per-channel normalisation std of the victim's inputs.
            train_transform: the victim's training augmentation applied to the target before its gradient: none,
                cifar (crop + flip, SemSim's ``crop`` mode) or tckr.
            seed: data seed: the choice of targets and each target's augmentation draw.
            class_names: class names in label order; default the sorted class folders (must match the victim).
            batch_size: targets inverted in parallel per batch.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        if count is not None and count < 1:
            raise ValueError(f"data.count: expected a positive number of targets or null (all); got {count}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size: expected a positive number of targets per batch; got {batch_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"data.mean/std: expected 3 values each, std > 0; got {mean}, {std}")
        scan = scan_class_folders(root, "data.root")
        self._class_names = list(class_names) if class_names is not None else sorted(scan)
        if len(self._class_names) < 2:
            raise ValueError(f"data.root: need at least 2 classes; found {self._class_names} in {root}")
        check_same_classes(self._class_names, sorted(scan), f"data.root ({root})")
        save_own_hyperparameters(self, ignore=["class_names"])
        self.samples = [
            Sample(path, label, f"{name}/{path.name}")
            for label, name in enumerate(self._class_names)
            for path in scan[name]
        ]
        labels = np.array([s.label for s in self.samples])
        order = stratified_order(labels, seed)
        chosen = sorted(order if count is None else order[:count])
        if count is not None and count > len(order):
            raise ValueError(f"data.count: {count} targets asked but {root} holds {len(order)} images")
        self.items = [
            {"id": target_id(i), "index": i, "label": self.samples[i].label, "file": self.samples[i].example_id}
            for i in chosen
        ]
        self._input_size = int(image_size) if image_size is not None else read_image_size(self.samples[0].path)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        size = self._input_size
        self._original = build_transform("none", size, True, None, None, train=False)
        self._target = build_transform(train_transform, size, True, self.mean, self.std, train=True)
        self._skipped: set[str] = set()

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
        """Side in pixels of the targets (linked into the model)."""
        return self._input_size

    def settings(self) -> dict[str, Any]:
        """Everything that decides the targets, as plain JSON (for the writer's manifest)."""
        hp = self.hparams
        return {
            "root": str(Path(hp.root).expanduser().resolve()),
            "count": hp.count,
            "image_size": self._input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "train_transform": hp.train_transform,
            "seed": int(hp.seed),
            "class_names": self.class_names,
            "ids": [item["id"] for item in self.items],
            "files": [item["file"] for item in self.items],
        }

    def load_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """One target: the un-augmented original in [0, 1] and the seeded augmented, normalised target."""
        image = load_rgb(self.samples[item["index"]].path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(self.hparams.seed, item["index"]))
            target = self._target(image)
        return {
            "id": item["id"],
            "index": item["index"],
            "label": item["label"],
            "original": self._original(image),
            "target": target,
        }

    def skip(self, ids: set[str] | list[str]) -> None:
        """Leave these target ids (finished reconstructions) out of the predict loader."""
        self._skipped = {str(i) for i in ids}

    def pending(self) -> list[dict[str, Any]]:
        """The chosen targets not skipped, in global-index order."""
        return [item for item in self.items if item["id"] not in self._skipped]

    def predict_dataloader(self) -> DataLoader:
        """Pending targets in index order (Lightning shards them over ranks)."""
        return DataLoader(
            _Targets(self, self.pending()),
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
        )
