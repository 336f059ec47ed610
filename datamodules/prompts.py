"""PromptDataModule: TCKR's prompt schedule for generating a synthetic image dataset (``synthpriv predict``).

The schedule (TCKR, seeds.md §3.2) for N images over C classes:

* N = round(cardinality × |real train|), rounded to the nearest integer with halves rounded up
  (``floor(x + 0.5)``); N must come out ≥ 1;
* each class (in ``class_names`` order) gets ⌊N/C⌋ prompts, cycling through that class's captions in file order;
* the remaining N mod C prompts go round robin to the first classes in ``class_names`` order, each taking the
  next caption of its cycle (e.g. N = 10, C = 3: 3 per class, plus one more for the first class);
* the list is shuffled with ``seed``; an item's position after the shuffle is its ``index``.

Each item is ``{"index": int, "prompt": str, "label": int, "seed": int}``; ``label`` indexes ``class_names``
and ``seed`` = ``numpy.random.SeedSequence([seed, index]).generate_state(1)[0]`` (a uint32), so an image depends
only on (base seed, index), never on the batch size, the number of devices or which indices a rerun skips.

``skip(indices)`` drops finished indices from the predict loader (``SyntheticImageWriter`` calls it with the
images already in its folder), so a rerun after a kill generates exactly the missing images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from tools.files import file_sha256

PromptType = Literal["classname_caption", "caption", "template"]
CAPTION_FORMATS = (
    "captions.jsonl (one JSON object a line with 'class' and 'caption'), a JSON file {class: [captions]} or a "
    "text file of '<class>: <caption>' lines"
)


def item_seed(base_seed: int, index: int) -> int:
    """The generation seed of image ``index``: depends on (base seed, index) only."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def schedule_size(cardinality: float, real_train_size: int) -> int:
    """N = cardinality × |real train|, rounded to the nearest integer, halves up."""
    if not cardinality > 0 or not math.isfinite(cardinality):
        raise ValueError(
            f"cardinality: expected a positive number (N = cardinality × |real train|); found {cardinality}"
        )
    if real_train_size <= 0:
        raise ValueError(
            f"real_train_size: expected a positive number of real training images; found {real_train_size}"
        )
    n = math.floor(cardinality * real_train_size + 0.5)
    if n < 1:
        raise ValueError(
            f"cardinality {cardinality} × {real_train_size} real training images rounds to {n} synthetic images; "
            "expected at least 1"
        )
    return n


def build_schedule(captions: dict[str, list[str]], class_names: list[str], n: int, seed: int) -> list[tuple[int, str]]:
    """TCKR's schedule as (label, caption) pairs in shuffled order (see the module docstring)."""
    per_class, extra = divmod(n, len(class_names))
    pairs = []
    for label, name in enumerate(class_names):
        caps = captions[name]
        count = per_class + (1 if label < extra else 0)
        pairs.extend((label, caps[j % len(caps)]) for j in range(count))
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order]


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """{class: [captions in file order]} from a captions.jsonl, a grouped JSON or a '<class>: <caption>' file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"captions: file {path} does not exist; expected {CAPTION_FORMATS}")
    grouped: dict[str, list[str]] = {}
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"captions: {path} is not valid JSON ({err}); expected {CAPTION_FORMATS}") from err
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"captions: {path} holds {type(data).__name__}; expected {{class: [captions]}}")
        grouped = {str(k): [str(c) for c in v] for k, v in data.items()}
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                    name, caption = str(row["class"]), str(row["caption"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(
                        f"captions: {path} line {number} is not a JSON object with 'class' and 'caption' ({err!r})"
                    ) from err
            else:
                name, sep, caption = line.partition(":")
                if not sep:
                    raise ValueError(f"captions: {path} line {number} has no '<class>: <caption>' form: {line!r}")
                name, caption = name.strip(), caption.strip()
            grouped.setdefault(name, []).append(caption)
    empty = sorted(k for k, v in grouped.items() if not v)
    if not grouped or empty:
        raise ValueError(f"captions: {path} has no captions{' for ' + str(empty) if empty else ''}")
    return grouped


class _Prompts(Dataset):
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class PromptDataModule(LightningDataModule):
    """Prompts for text-to-image generation, scheduled as in TCKR (predict only).

    Args:
        captions: captions file: the Captioner's ``captions.jsonl`` (fields id, path, class, caption), a JSON
            file ``{class: [captions]}`` or a text file of ``<class>: <caption>`` lines. Optional only with
            ``prompt_type: template``.
        class_names: the real dataset's class names in label order. Default: the class folders of
            ``real_train_root`` (sorted), else the captions' classes sorted. The captions must cover exactly
            these classes.
        real_train_size: number of real training images (|real train|); or give ``real_train_root``.
        real_train_root: class-folder tree of the real training images, counted for |real train| and used
            to check the class names.
        real_train_ids: a file of the real training images' ids, one per line (a teacher run's
            ``trained_ids.txt``), counted for |real train| when the teacher trained on part of a folder.
        cardinality: synthetic images per real training image (TCKR: 0.1 to 20); N = round(cardinality ×
            |real train|), halves up.
        prompt_type: ``classname_caption`` ("<class>: <caption>", TCKR), ``caption`` (the caption alone) or
            ``template`` (``template`` with ``{class_name}`` filled in).
        template: prompt for ``prompt_type: template``.
        seed: base seed of the shuffle and of every image's seed.
        batch_size: prompts per predict batch (does not change any image).
        num_workers: data loader workers.
    """

    def __init__(
        self,
        captions: str | None = None,
        class_names: list[str] | None = None,
        real_train_size: int | None = None,
        real_train_root: str | None = None,
        real_train_ids: str | None = None,
        cardinality: float = 1.0,
        prompt_type: PromptType = "classname_caption",
        template: str = "a photo of a {class_name}",
        seed: int = 0,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive number of prompts a batch; found {batch_size}")
        given = [v is not None for v in (real_train_size, real_train_root, real_train_ids)]
        if sum(given) != 1:
            raise ValueError(
                "PromptDataModule needs exactly one of real_train_size (a number), real_train_root (a class-folder "
                "tree to count) and real_train_ids (a trained_ids.txt to count); found "
                f"real_train_size={real_train_size}, real_train_root={real_train_root}, real_train_ids={real_train_ids}"
            )
        if real_train_ids is not None:
            from datamodules.captioned_images import read_id_list

            real_train_size = len(read_id_list(real_train_ids, "data.real_train_ids"))
        root_classes = None
        if real_train_root is not None:
            from datamodules.folders import scan_class_folders

            tree = scan_class_folders(real_train_root, "real_train_root")
            root_classes = list(tree)
            real_train_size = sum(len(files) for files in tree.values())
        if prompt_type != "template" and captions is None:
            raise ValueError(f"captions: prompt_type {prompt_type!r} needs a captions file ({CAPTION_FORMATS})")
        if prompt_type == "template" and "{class_name}" not in template:
            raise ValueError(f"template: expected a '{{class_name}}' placeholder; found {template!r}")
        grouped = read_captions(captions) if captions is not None else None
        names = list(class_names or root_classes or (sorted(grouped) if grouped else []))
        if not names:
            raise ValueError("class_names: give the real dataset's class names (or real_train_root, or captions)")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names: {names} repeats a name")
        if root_classes is not None and sorted(root_classes) != sorted(names):
            raise ValueError(
                f"class_names {names} differ from the class folders of real_train_root {real_train_root}: "
                f"{root_classes}"
            )
        if grouped is not None and sorted(grouped) != sorted(names):
            missing = [c for c in names if c not in grouped]
            extra = sorted(c for c in grouped if c not in names)
            raise ValueError(
                f"captions {captions} name the classes {sorted(grouped)} but the real dataset's class_names are "
                f"{names} (without captions: {missing}; not in class_names: {extra}); label indices would not agree"
            )
        self.class_names = names
        self.num_classes = len(names)
        self.num_images = schedule_size(float(cardinality), int(real_train_size))
        self.real_train_size = int(real_train_size)
        self.captions_sha256 = file_sha256(Path(captions).expanduser()) if captions is not None else None
        if grouped is None:
            grouped = {name: [""] for name in names}
        self.items = [
            {"index": i, "prompt": self._prompt(names[label], caption), "label": label, "seed": item_seed(seed, i)}
            for i, (label, caption) in enumerate(build_schedule(grouped, names, self.num_images, seed))
        ]
        self._skipped: set[int] = set()

    def _prompt(self, class_name: str, caption: str) -> str:
        kind = self.hparams.prompt_type
        if kind == "classname_caption":
            return f"{class_name}: {caption}"
        if kind == "caption":
            return caption
        return self.hparams.template.format(class_name=class_name)

    def skip(self, indices: set[int] | list[int]) -> None:
        """Leave these indices (finished images) out of the predict loader."""
        self._skipped = {int(i) for i in indices}

    def pending(self) -> list[dict[str, Any]]:
        """The schedule's items not skipped, in index order."""
        return [item for item in self.items if item["index"] not in self._skipped]

    def relative_path(self, index: int) -> str:
        """``<class name>/<index:06d>.png``: where image ``index`` goes in an image-folder dataset."""
        return f"{self.class_names[self.items[index]['label']]}/{index:06d}.png"

    def existing_indices(self, folder: str | Path) -> set[int]:
        """Indices whose image file already lies in ``folder`` (for resuming)."""
        folder = Path(folder)
        return {item["index"] for item in self.items if (folder / self.relative_path(item["index"])).is_file()}

    def schedule_sha256(self) -> str:
        """Hash of the full schedule (index, prompt, label, seed), for manifests."""
        import hashlib

        text = json.dumps([[i["index"], i["prompt"], i["label"], i["seed"]] for i in self.items])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def predict_dataloader(self) -> DataLoader:
        """The pending prompts in index order (Lightning shards them over ranks without repeats)."""
        return DataLoader(
            _Prompts(self.pending()),
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
        )
