"""CaptionedImageDataModule: images paired with their captions (``captions.jsonl``) for text-to-image training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset


def read_captions(captions: str | Path, split: str | None = "train") -> list[dict[str, Any]]:
    """Records of a captions.jsonl (id, path, class, caption; optional split/label), image paths resolved.

    Relative image paths are resolved against the captions file's folder. Only records of ``split`` are kept when
    records carry a split (None keeps all). Every image must exist.
    """
    path = Path(captions)
    if not path.is_file():
        raise ValueError(f"captions: {path} does not exist; expected a captions.jsonl written by the captioner")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"captions: {path} line {number} is not JSON ({err})") from None
        missing = [k for k in ("id", "path", "class", "caption") if k not in record]
        if missing:
            raise ValueError(f"captions: {path} line {number} lacks {', '.join(missing)}; found {sorted(record)}")
        if split is not None and record.get("split", split) != split:
            continue
        image = Path(record["path"])
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise ValueError(
                f"captions: {path} line {number} (id {record['id']}) captions {image}, which does not exist"
            )
        records.append({**record, "path": str(image)})
    if not records:
        raise ValueError(f"captions: {path} has no records" + (f" of split {split!r}" if split else ""))
    return records


def read_id_list(path: str | Path, option: str) -> list[str]:
    """Ids listed one per line in ``path`` (blank lines ignored); an error naming ``option`` when unusable."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{option}: {file} does not exist; expected a file of example ids, one per line")
    ids = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{option}: {file} lists no ids")
    return ids


def select_records(
    records: list[dict[str, Any]], captions: str | Path, include_ids: str | None, exclude_ids: str | None
) -> list[dict[str, Any]]:
    """The caption records kept by an include list and/or an exclude list of example ids."""
    if include_ids is not None:
        wanted = read_id_list(include_ids, "data.include_ids")
        known = {r["id"] for r in records}
        missing = [i for i in wanted if i not in known]
        if missing:
            raise ValueError(
                f"data.include_ids: {len(missing)} of the {len(wanted)} ids in {include_ids} have no caption in "
                f"{captions} (e.g. {missing[:3]}); caption the same images (and split) the ids come from"
            )
        keep = set(wanted)
        records = [r for r in records if r["id"] in keep]
    if exclude_ids is not None:
        drop = set(read_id_list(exclude_ids, "data.exclude_ids"))
        known = {r["id"] for r in records}
        if not drop & known:
            raise ValueError(
                f"data.exclude_ids: none of the {len(drop)} ids in {exclude_ids} has a caption in {captions}; "
                "the ids do not come from these images (nothing would be excluded)"
            )
        records = [r for r in records if r["id"] not in drop]
    if not records:
        raise ValueError(f"captions: no image of {captions} is left after data.include_ids / data.exclude_ids")
    return records


class CaptionedImageDataset(Dataset):
    """Images in [-1, 1] with their prompts."""

    def __init__(self, records: list[dict[str, Any]], prompts: list[str], transform: Any) -> None:
        self.records = records
        self.prompts = prompts
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(self.records[i]["path"]) as img:
            pixels = self.transform(img.convert("RGB"))
        return {"pixel_values": pixels, "prompt": self.prompts[i], "index": i}


class CaptionedImageDataModule(LightningDataModule):
    """Pairs images with their captions; batches are {pixel_values (B,3,H,W) in [-1, 1], prompt, index}."""

    def __init__(
        self,
        captions: str,
        prompt_type: Literal["classname_caption", "caption", "template"] = "classname_caption",
        template: str = "a photo of a {class_name}",
        split: str | None = "train",
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = True,
        batch_size: int = 4,
        num_workers: int = 0,
        include_ids: str | None = None,
        exclude_ids: str | None = None,
    ) -> None:
        """Read and check the captions file.

        Args:
            captions: captions.jsonl (one JSON object per image: id, path, class, caption; optional split, label).
            prompt_type: 'classname_caption' ("<class>: <caption>", TCKR's fine-tuning prompts), 'caption' or
                'template' (``template`` filled with the class name).
            template: prompt template for prompt_type 'template'; ``{class_name}`` is replaced.
            split: records of this split only (when records carry one); None keeps all.
            resolution: square training resolution in pixels (shorter side resized with Lanczos, then cropped).
            center_crop: centre crop; otherwise a random crop.
            random_flip: random horizontal flip.
            batch_size: images per batch (per device).
            num_workers: data-loading worker processes.
            include_ids: keep only the images whose id is listed in this file (one id per line, e.g. a teacher run's
                ``trained_ids.txt``: fine-tune on exactly the teacher's private images). Every listed id must have
                a caption.
            exclude_ids: drop the images listed in this file (e.g. pretrain a base model on public images disjoint
                from a teacher's ``trained_ids.txt``).
        """
        super().__init__()
        self.save_hyperparameters()
        if prompt_type == "template" and "{class_name}" not in template:
            raise ValueError(f"template {template!r} has no {{class_name}} placeholder")
        self.records = select_records(read_captions(captions, split), captions, include_ids, exclude_ids)
        labelled = {r["class"]: r["label"] for r in self.records if "label" in r}
        if len(labelled) == len({r["class"] for r in self.records}):
            self.class_names = [c for c, _ in sorted(labelled.items(), key=lambda kv: kv[1])]
        else:
            self.class_names = sorted({r["class"] for r in self.records})
        self.num_classes = len(self.class_names)
        self.prompts = [self._prompt(r) for r in self.records]

    def _prompt(self, record: dict[str, Any]) -> str:
        kind = self.hparams.prompt_type
        if kind == "caption":
            return str(record["caption"])
        if kind == "template":
            return self.hparams.template.format(class_name=record["class"])
        return f"{record['class']}: {record['caption']}"

    def transform(self) -> Any:
        """Resize (Lanczos), crop and optionally flip; tensor in [-1, 1]."""
        from torchvision import transforms as T

        size = self.hparams.resolution
        steps = [
            T.Resize(size, interpolation=T.InterpolationMode.LANCZOS),
            T.CenterCrop(size) if self.hparams.center_crop else T.RandomCrop(size),
        ]
        if self.hparams.random_flip:
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize([0.5], [0.5])]
        return T.Compose(steps)

    def train_example_ids(self) -> list[str]:
        """Ids of the training images in dataset order (recorded by fit as ``trained_ids.txt``)."""
        return [str(r["id"]) for r in self.records]

    def setup(self, stage: str | None = None) -> None:
        """Build the training dataset."""
        self.train_dataset = CaptionedImageDataset(self.records, self.prompts, self.transform())

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of images and prompts."""
        return DataLoader(
            self.train_dataset,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            drop_last=len(self.train_dataset) >= self.hparams.batch_size,
        )
