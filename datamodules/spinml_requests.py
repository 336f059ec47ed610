"""SegmentRequestDataModule: SpinML generation requests (real image x part x level) and ControlNet training pairs.

The real images are SpinML's ``<root>/real/raw/<name>`` with segments in ``<root>/real/raw_split/{foreground,
background,mask}`` (read with ``datamodules.spinml_layout``; labels from file names). ``level_pairs`` (folder names
``L<fg>_L<bg>``) decide which (part, level) segments are needed: ``L1_L0`` and ``L2_L0`` need the foreground at
L1 and L2 and the background at L0. Each (image, part, level) is one request, generated once, whatever number of
level pairs uses it::

    {"index", "name", "stem", "part": "foreground"|"background", "level": 0|1|2, "label", "prompt", "seed",
     "segment": (3,H,W) float in [-1, 1]   the real segment of that part, resized to ``resolution``
     "guide":   (3,H,W) float in [0, 1]    its Canny map (OpenCV, thresholds 100/200, computed at the segment's
                                           own size and then area-resized: edges first, downscaling after)
     "mask":    (1,H,W) uint8 0/255        the real object mask, resized (nearest)}

``seed`` = SeedSequence([seed, part, crc32(stem)]): it depends on the base seed, the part and the file stem only
(not on the level, the batch, the device count or which requests a rerun skips), so a foreground at L0 and L1
starts from the same noise. Prompts: ``foreground_template`` (with ``{class_name}``) / ``background_template``
(``{class_name}`` optional).

``train_dataloader`` (for ``SegmentGeneration`` fits: ``finetune: controlnet``, or a full / LoRA fine-tune on the
user's segments as SpinML's DreamBooth step) yields the real segments of ``train_parts`` with their Canny maps and
prompts: ``{"pixel_values", "guide", "prompt", "loss_mask"}`` (``loss_mask`` with ``mask_background_loss``). A
model trained on the user's own segments has seen them; train on public images where the threat model requires.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.folders import load_rgb
from datamodules.spinml_layout import (
    DEFAULT_LABEL_PATTERN,
    HUSKY_CLASSES,
    compile_label_pattern,
    find_segments,
    image_files,
    label_of,
    load_mask,
    parse_level,
)

SEGMENT_PARTS = ("foreground", "background")


def check_template(option: str, template: str, needs_class: bool) -> None:
    """A prompt template uses only ``{class_name}`` (a foreground's must: the object is the class; a background may
    leave it out, when backgrounds do not depend on the class)."""
    from string import Formatter

    try:
        fields = {field for _, field, _, _ in Formatter().parse(template) if field is not None}
    except ValueError as err:
        raise ValueError(f"data.{option}: {template!r} is not a valid template ({err})") from None
    if fields - {"class_name"} or (needs_class and "class_name" not in fields):
        expected = "a '{class_name}' placeholder" if needs_class else "no placeholder other than '{class_name}'"
        raise ValueError(f"data.{option}: expected {expected}; found {template!r}")


def request_seed(base_seed: int, part: str, stem: str) -> int:
    """Noise seed of one (part, image): independent of the level, so levels differ by their guidance only."""
    key = [int(base_seed), SEGMENT_PARTS.index(part), zlib.crc32(stem.encode("utf-8"))]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def segment_tensors(segment: Path, mask: Path, resolution: int) -> dict[str, torch.Tensor]:
    """The real segment in [-1, 1], its Canny guide in [0, 1] and the mask (0/255), all ``resolution`` square."""
    from privacy.image_leakage import canny_guide

    rgb = load_rgb(segment)
    size = (resolution, resolution)
    edges = canny_guide(np.array(rgb))[:, :, 0]
    guide = np.asarray(Image.fromarray(edges).resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0
    pixels = np.asarray(rgb.resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 127.5 - 1.0
    m = np.asarray(Image.fromarray(load_mask(mask)).resize(size, Image.Resampling.NEAREST))
    return {
        "segment": torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
        "guide": torch.from_numpy(guide)[None].expand(3, -1, -1).contiguous(),
        "mask": torch.from_numpy(np.where(m > 127, 255, 0).astype(np.uint8))[None],
    }


class _Requests(Dataset):
    def __init__(self, items: list[dict[str, Any]], files: dict[str, Any], resolution: int) -> None:
        self.items, self.files, self.resolution = items, files, resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        triple = self.files[item["name"]]
        tensors = segment_tensors(getattr(triple, item["part"]), triple.mask, self.resolution)
        return {**{k: v for k, v in item.items()}, **tensors}


def background_loss_mask(mask: Path, resolution: int) -> torch.Tensor:
    """(1,H,W) float: 1 on the background, 0 on every pixel the object touches after resizing to ``resolution``
    (box-resized coverage > 0: the cut-out hole and its blended rim are not background content to learn)."""
    m = Image.fromarray(load_mask(mask)).resize((resolution, resolution), Image.Resampling.BOX)
    return torch.from_numpy((np.asarray(m) == 0).astype(np.float32))[None]


class _Pairs(Dataset):
    def __init__(
        self, items: list[dict[str, Any]], files: dict[str, Any], resolution: int, mask_background: bool
    ) -> None:
        self.requests = _Requests(items, files, resolution)
        self.mask_background = mask_background

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.requests[i]
        pair = {"pixel_values": r["segment"], "guide": r["guide"], "prompt": r["prompt"]}
        if self.mask_background:
            size = r["segment"].shape[-1]
            if r["part"] == "background":
                pair["loss_mask"] = background_loss_mask(self.requests.files[r["name"]].mask, size)
            else:
                pair["loss_mask"] = torch.ones(1, size, size)
        return pair


class SegmentRequestDataModule(LightningDataModule):
    """Generation requests for SpinML's levels from a real ``raw_split`` layout (predict), ControlNet pairs (fit).

    Args:
        root: dataset folder holding ``real/raw`` and ``real/raw_split/{foreground,background,mask}``.
        level_pairs: level folders to produce, ``L<fg>_L<bg>`` with levels 0, 1, 2 (default SpinML's released
            L0_L0, L1_L0, L2_L0).
        class_names: class names in label order; default SpinML's husky map.
        label_pattern: regex whose group ``label`` (or only group) is the class name in a file stem.
        foreground_template: prompt of the object, with ``{class_name}``.
        background_template: prompt of the background; ``{class_name}`` optional (class-free backgrounds).
        resolution: square side of generated images (the generator's image size, e.g. 28 for the CPU model).
        seed: base seed of every request's noise.
        train_parts: which parts' real segments train a ControlNet or fine-tune the generator (fit).
        mask_background_loss: in training, give background segments a ``loss_mask`` that leaves out the object's
            cut-out region (and its rim), so the generator does not learn to draw the hole; foregrounds keep the
            whole frame (the object on black is what a foreground is).
        batch_size: requests per batch (changes no image).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        root: str,
        level_pairs: list[str] | None = None,
        class_names: list[str] | None = None,
        label_pattern: str = DEFAULT_LABEL_PATTERN,
        foreground_template: str = "a photo of a {class_name}",
        background_template: str = "a photo of the place where a {class_name} is, without it",
        resolution: int = 64,
        seed: int = 0,
        train_parts: list[str] | None = None,
        mask_background_loss: bool = True,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        pairs = list(level_pairs or ["L0_L0", "L1_L0", "L2_L0"])
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"data.level_pairs: {pairs} repeats a folder")
        self.level_pairs = [parse_level(p, "data.level_pairs") for p in pairs]
        bad = [p for p, lv in zip(pairs, self.level_pairs) if any(v not in (0, 1, 2) for v in lv)]
        if bad:
            raise ValueError(f"data.level_pairs: {bad} use levels outside 0, 1, 2")
        for option, template in (
            ("foreground_template", foreground_template),
            ("background_template", background_template),
        ):
            check_template(option, template, needs_class=option == "foreground_template")
        if resolution < 8 or batch_size < 1:
            raise ValueError(f"data.resolution {resolution} / batch_size {batch_size}: expected >= 8 / >= 1")
        self.train_parts = list(train_parts or SEGMENT_PARTS)
        if not self.train_parts or any(p not in SEGMENT_PARTS for p in self.train_parts):
            raise ValueError(f"data.train_parts: expected a subset of {list(SEGMENT_PARTS)}; found {train_parts}")
        self.class_names = list(class_names or HUSKY_CLASSES)
        self.num_classes = len(self.class_names)
        real = Path(root).expanduser() / "real"
        if not (real / "raw").is_dir():
            raise FileNotFoundError(f"data.root: {real / 'raw'} is missing; expected the real images there")
        names = [f.name for f in image_files(real / "raw")]
        if not names:
            raise ValueError(f"data.root: {real / 'raw'} holds no images")
        triples = find_segments(real / "raw_split", names, "data.root")
        pattern = compile_label_pattern(label_pattern)
        self.files = {t.name: t for t in triples}
        labels = {t.name: label_of(t.foreground, pattern, self.class_names) for t in triples}
        templates = {"foreground": foreground_template, "background": background_template}
        needed = sorted(
            {("foreground", f) for f, _ in self.level_pairs} | {("background", b) for _, b in self.level_pairs}
        )
        self.items: list[dict[str, Any]] = []
        for part, level in needed:
            for t in triples:
                stem = Path(t.name).stem
                self.items.append(
                    {
                        "index": len(self.items),
                        "name": t.name,
                        "stem": stem,
                        "part": part,
                        "level": level,
                        "label": labels[t.name],
                        "seed": request_seed(seed, part, stem),
                        "prompt": templates[part].format(class_name=self.class_names[labels[t.name]]),
                    }
                )
        self._skipped: set[int] = set()

    # ------------------------------------------------------------------ requests
    @property
    def pair_names(self) -> list[str]:
        """The level folder names, e.g. ['L0_L0', 'L1_L0']."""
        return [f"L{f}_L{b}" for f, b in self.level_pairs]

    def skip(self, indices: set[int] | list[int]) -> None:
        """Leave these requests (already written) out of the predict loader."""
        self._skipped = {int(i) for i in indices}

    def pending(self) -> list[dict[str, Any]]:
        """Requests not skipped, in index order (grouped by part and level, so batches mostly hold one level)."""
        return [item for item in self.items if item["index"] not in self._skipped]

    def schedule_sha256(self) -> str:
        """Hash of every request (name, part, level, prompt, seed) and of the real segments' file names."""
        rows = [[i["name"], i["part"], i["level"], i["prompt"], i["seed"]] for i in self.items]
        return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()

    def request_config(self) -> dict[str, Any]:
        """What the requests contribute to the images (recorded by the writer)."""
        from privacy.image_leakage import CANNY_THRESHOLDS

        hp = self.hparams
        return {
            "real_root": str(Path(hp.root).expanduser().resolve()),
            "level_pairs": self.pair_names,
            "class_names": self.class_names,
            "foreground_template": hp.foreground_template,
            "background_template": hp.background_template,
            "resolution": int(hp.resolution),
            "base_seed": int(hp.seed),
            "canny_thresholds": list(CANNY_THRESHOLDS),
            "num_requests": len(self.items),
            "schedule_sha256": self.schedule_sha256(),
        }

    # ------------------------------------------------------------------ loaders
    def predict_dataloader(self) -> DataLoader:
        """The pending requests in index order (Lightning shards them over ranks without repeats)."""
        return DataLoader(
            _Requests(self.pending(), self.files, self.hparams.resolution),
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """(real segment, Canny map, prompt[, loss mask]) of ``train_parts``, shuffled: ControlNet or generator fits."""
        items = []
        for part in self.train_parts:
            for name in self.files:
                stem = Path(name).stem
                label = next(i["label"] for i in self.items if i["name"] == name)
                template = self.hparams[f"{part}_template"]
                items.append(
                    {
                        "index": len(items),
                        "name": name,
                        "stem": stem,
                        "part": part,
                        "level": 1,
                        "label": label,
                        "seed": 0,
                        "prompt": template.format(class_name=self.class_names[label]),
                    }
                )
        return DataLoader(
            _Pairs(items, self.files, self.hparams.resolution, self.hparams.mask_background_loss),
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            drop_last=False,
        )
