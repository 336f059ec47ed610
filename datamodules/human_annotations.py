"""HumanAnnotationDataModule: SemSim's human-annotation bundle (``seeds.md`` §2.4-2.5), read as it is shipped.

Layout of ``root`` (the bundle's ``human_anno_id/train_with_ori``)::

    N/        the original ``<...>_ori.png`` and the reconstructions of it that people judged RECOGNISABLE
    -N/       reconstructions of original N judged UNRECOGNISABLE
    others/   fallback negatives for a group that has no -N folder

Group N is paired with the folder named ``-N`` by its id (the text after the minus sign), never by sort order.
The original is the one file of N whose stem ends in ``_ori``. The data are split **by original** (a whole group
goes to one split) into train / val / test with seeded fractions; the original code validated on its training
data. Decisions: a group with no recognisable reconstruction is skipped with a logged count (it gives neither a
paper triplet nor a pairwise comparison; ids in ``skipped_groups``), and so is a group with no -N when there is
no ``others/`` folder; other folders are ignored with a warning. A group without its original, a -N folder
without N, or a bundle with no negatives at all (no -N anywhere and no ``others/``) is an error.

Training items are triplets ``{anchor, positive, negative}``, each image augmented independently
(Resize -> RandomCrop(pad 1/8) -> flip -> CIFAR-100 normalisation):
  paper (default): one item per recognisable reconstruction; anchor = the original, positive = that
      reconstruction, negative = a random unrecognisable reconstruction of the same original (``others/`` when
      the group has no -N).
  original_code: the original code's sampling, for compatibility: one item per image of N and -N; from N:
      anchor = the image (original or recognisable), positive = a random image of N (possibly itself),
      negative = from -N (or ``others/``); from -N: anchor = the image, positive = a random image of -N,
      negative = a random image of N, the original included (the code's exclusion never fires).
Val / test / predict items are pairs ``{original, reconstruction, recognisable, group, index}`` for every
reconstruction of every group in the split (``others/`` is not evaluated); ``pair_records`` gives their files.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.folders import IMAGE_EXTENSIONS, load_rgb
from datamodules.hparams import save_own_hyperparameters
from datamodules.split_loaders import SplitLoaders
from datamodules.transforms import build_transform

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test"]
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
LAYOUT = (
    "<root>/N/ (original <...>_ori.png + recognisable reconstructions), <root>/-N/ (unrecognisable), <root>/others/"
)
_GROUP = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class Group:
    """One original with its recognisable (N/) and unrecognisable (-N/) reconstructions."""

    group_id: int
    original: Path
    positives: tuple[Path, ...]
    negatives: tuple[Path, ...]


def _images(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
    )


def scan_annotations(root: str | Path, option: str = "data.root") -> tuple[list[Group], list[Path], list[int]]:
    """Read the bundle; return (usable groups sorted by id, others/ images, skipped group ids) or raise."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file"
        raise FileNotFoundError(f"{option}: folder {root} {what}; expected the bundle's train_with_ori: {LAYOUT}")
    positive_dirs: dict[str, Path] = {}
    negative_dirs: dict[str, Path] = {}
    ignored = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _GROUP.match(d.name):
            (negative_dirs if d.name.startswith("-") else positive_dirs)[d.name.lstrip("-")] = d
        elif d.name != "others":
            ignored.append(d.name)
    if ignored:
        log.warning("%s: ignored %d folder(s) that are neither N, -N nor others: %s", option, len(ignored), ignored[:5])
    others = _images(root / "others") if (root / "others").is_dir() else []
    if not positive_dirs:
        raise ValueError(f"{option}: {root} has no group folders N/; expected {LAYOUT}")
    orphans = sorted(set(negative_dirs) - set(positive_dirs), key=int)
    if orphans:
        raise ValueError(
            f"{option}: folder(s) {', '.join('-' + o for o in orphans[:5])} in {root} hold reconstructions without "
            f"their original: no matching N/ folder (group ids pair -N with N)"
        )
    if not negative_dirs and not others:
        raise ValueError(
            f"{option}: {root} has no negatives: no -N/ folder (unrecognisable reconstructions) for any of its "
            f"{len(positive_dirs)} groups and no others/ folder; a triplet needs a negative ({LAYOUT})"
        )
    groups, skipped = [], []
    for key in sorted(positive_dirs, key=int):
        files = _images(positive_dirs[key])
        originals = [f for f in files if f.stem.endswith("_ori")]
        if len(originals) != 1:
            found = "none" if not originals else ", ".join(f.name for f in originals)
            raise ValueError(
                f"{option}: group {positive_dirs[key]} must hold exactly one original named <...>_ori.<ext>; "
                f"found {found}"
            )
        positives = tuple(f for f in files if f != originals[0])
        negatives = tuple(_images(negative_dirs[key])) if key in negative_dirs else ()
        if not positives or (not negatives and not others):
            skipped.append(int(key))
            continue
        groups.append(Group(int(key), originals[0], positives, negatives))
    if skipped:
        log.warning(
            "%s: skipped %d of %d group(s) with no recognisable reconstruction or no negative (ids %s)",
            option, len(skipped), len(positive_dirs), skipped[:10],
        )  # fmt: skip
    if not groups:
        raise ValueError(f"{option}: none of the {len(positive_dirs)} groups in {root} has both a recognisable "
                         "reconstruction in N/ and a negative (-N/ or others/)")  # fmt: skip
    return groups, others, skipped


def split_groups(ids: list[int], val_fraction: float, test_fraction: float, seed: int) -> dict[Split, list[int]]:
    """Seeded split of group ids (originals) into disjoint train / val / test lists (each sorted)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n = len(ids)
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    n_test = max(n_test, 1) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(
            f"data.val_fraction/test_fraction: {val_fraction} + {test_fraction} of {n} originals leaves no "
            "original for training; lower the fractions or add groups"
        )
    picked = [ids[i] for i in order]
    return {
        "val": sorted(picked[:n_val]),
        "test": sorted(picked[n_val : n_val + n_test]),
        "train": sorted(picked[n_val + n_test :]),
    }


class TripletDataset(Dataset):
    """Triplets of transformed images; the random choices use torch's RNG (seeded per worker by Lightning)."""

    def __init__(self, groups: list[Group], others: list[Path], sampling: str, transform: Any) -> None:
        self.groups, self.others, self.sampling, self.transform = groups, others, sampling, transform
        self.items: list[tuple[int, Path, bool]] = []  # (group position, anchor or positive, from N?)
        for g, group in enumerate(groups):
            if sampling == "paper":
                self.items += [(g, p, True) for p in group.positives]
            else:
                self.items += [(g, p, True) for p in (group.original, *group.positives)]
                self.items += [(g, p, False) for p in group.negatives]

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _pick(files: tuple[Path, ...] | list[Path]) -> Path:
        return files[int(torch.randint(len(files), ()))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g, path, in_n = self.items[index]
        group = self.groups[g]
        negatives = group.negatives or self.others
        if self.sampling == "paper":
            anchor, positive, negative = group.original, path, self._pick(negatives)
        elif in_n:
            anchor, positive, negative = path, self._pick((group.original, *group.positives)), self._pick(negatives)
        else:
            anchor, positive, negative = (
                path,
                self._pick(group.negatives),
                self._pick((group.original, *group.positives)),
            )
        load = lambda p: self.transform(load_rgb(p))  # noqa: E731
        return {"anchor": load(anchor), "positive": load(positive), "negative": load(negative)}


class PairDataset(Dataset):
    """(original, reconstruction) pairs with the human label and the group id."""

    def __init__(self, records: list[tuple[int, Path, Path, bool]], transform: Any) -> None:
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        group, original, reconstruction, recognisable = self.records[index]
        return {
            "original": self.transform(load_rgb(original)),
            "reconstruction": self.transform(load_rgb(reconstruction)),
            "recognisable": torch.tensor(recognisable),
            "group": torch.tensor(group),
            "index": torch.tensor(index),
        }


class HumanAnnotationDataModule(SplitLoaders, LightningDataModule):
    """SemSim's human judgements as triplets (train) and labelled pairs (val / test / predict)."""

    def __init__(
        self,
        root: str,
        sampling: Literal["paper", "original_code"] = "paper",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        image_size: int = 32,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        """Scan the bundle and split it by original (no image is decoded here).

        Args:
            root: the bundle's ``human_anno_id/train_with_ori`` folder (N/, -N/, others/).
            sampling: 'paper' (anchor = original) or 'original_code' (the original code's triplets; see module
                docstring).
            val_fraction: share of originals (groups) held out for validation.
            test_fraction: share of originals held out for testing.
            split_seed: seed of the group split (the data seed; the training seed is seed_everything).
            image_size: side every image is resized to (pairs of different sizes become comparable); 32 as SemSim.
            batch_size: triplets (train) per batch; SemSim: 64.
            eval_batch_size: pairs per evaluation batch; default batch_size.
            num_workers: data-loader workers.
            predict_split: the split `predict` scores.
        """
        super().__init__()
        save_own_hyperparameters(self, ignore=[])
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.{name} must be in [0, 1); got {value}")
        if image_size < 1:
            raise ValueError(f"data.image_size must be positive; got {image_size}")
        self.groups, self.others, self.skipped_groups = scan_annotations(root)
        self.split_ids = split_groups([g.group_id for g in self.groups], val_fraction, test_fraction, split_seed)
        self._datasets: dict[str, Dataset] = {}

    def split_groups(self, split: Split) -> list[Group]:
        """Groups (originals) of a split, by id."""
        ids = set(self.split_ids[split])
        return [g for g in self.groups if g.group_id in ids]

    def pair_records(self, split: Split) -> list[tuple[int, Path, Path, bool]]:
        """(group id, original file, reconstruction file, recognisable) of a split, in dataset-index order."""
        records = []
        for g in self.split_groups(split):
            records += [(g.group_id, g.original, p, True) for p in g.positives]
            records += [(g.group_id, g.original, n, False) for n in g.negatives]
        return records

    def _transform(self, train: bool) -> Any:
        size = self.hparams.image_size
        return build_transform("cifar", size, resize=True, mean=CIFAR100_MEAN, std=CIFAR100_STD, train=train)

    def setup(self, stage: str) -> None:
        """Build the datasets this stage needs."""
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": (self.hparams.predict_split,),
        }
        for split in needed[stage]:
            if split in self._datasets:
                continue
            if not self.split_ids[split]:
                if stage == "fit" and split == "val":
                    continue  # val_fraction 0: training without validation
                raise ValueError(f"data: the {split} split holds no original; raise data.{split}_fraction above 0")
            if split == "train":
                groups = self.split_groups("train")
                self._datasets[split] = TripletDataset(
                    groups, self.others, self.hparams.sampling, self._transform(True)
                )
            else:
                self._datasets[split] = PairDataset(self.pair_records(split), self._transform(False))

    def predict_dataloader(self) -> DataLoader:
        """Pairs of ``predict_split`` in ``pair_records`` order."""
        return self._loader(self.hparams.predict_split, shuffle=False)
