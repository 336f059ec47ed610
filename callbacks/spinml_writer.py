"""SegmentLevelWriter: SpinML's synthetic level folders from ``SegmentGeneration`` predictions.

``SyntheticImageWriter`` writes one image per prompt into class folders; SpinML needs segment triples per level
pair, so this writer shares its rules (atomic files, resumable, refuses another configuration's folder, DDP-safe)
with its own layout. Each (part, level, image) is generated once and stored under a hidden folder that
``SpinMLDataModule`` ignores; the level pairs are then assembled from those files by hard links (copies where
links are impossible)::

    <output_dir>/.segments/{foreground,background,mask}/L<k>/<stem>.png   each generated segment once
    <output_dir>/L<fg>_L<bg>/{foreground,background,mask}/<stem>.png       SpinML's README layout (links)
    <output_dir>/generation.json     model (base, LoRA, ControlNet hashes), strength, Canny thresholds,
                                     templates, seeds, mask source; "complete" once every pair is assembled
    <output_dir>/manifest.jsonl      one row per (level pair, image): files, levels, prompts, seeds, mask origin

Foreground masks: at L1/L2 the real guiding mask (the generated object follows the real one); at L0 a mask of
the generated image from ``mask_source`` (``tools.segment``'s GrabCut or box-GMM, part 2's weight-free sources).
A written foreground is the generated image with everything outside its mask zeroed, like the real
``raw_split/foreground`` segments; backgrounds are written whole. Under DDP each rank writes its own requests; rank
zero assembles the pairs and writes the manifest once every segment exists.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from callbacks.synthetic_images import CONFIG_FILE, MANIFEST_FILE, check_folder
from tools.files import atomic_path, json_plain, write_bytes_atomic, write_json_atomic, write_text_atomic

SEGMENTS = ".segments"


class SegmentLevelWriter(BasePredictionWriter):
    """Write generated segments and assemble ``L<fg>_L<bg>/{foreground,background,mask}`` (module docstring).

    Args:
        output_dir: the synthetic folder; default ``<run folder>/synthetic``.
        mask_source: how L0 foregrounds get their mask: 'grabcut' (OpenCV), 'box-gmm' (numpy/scikit-learn) or
            'otsu' (bright object on a plain dark background, as the CPU generator's animal-mnist-like images).
        box_margin: share of each side outside the initial object box of the mask source.
        mask_iterations: iterations of the mask source.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        mask_source: Literal["grabcut", "box-gmm", "otsu"] = "grabcut",
        box_margin: float = 0.1,
        mask_iterations: int = 5,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.mask_source = mask_source
        self.box_margin = box_margin
        self.mask_iterations = mask_iterations
        self._config: dict[str, Any] = {}

    def folder(self, trainer: Trainer) -> Path:
        """The synthetic folder."""
        return Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir) / "synthetic"

    @staticmethod
    def segment_path(folder: Path, part: str, level: int, stem: str) -> Path:
        """Where one generated segment (or a foreground's mask, part 'mask') lies."""
        return folder / SEGMENTS / part / f"L{level}" / f"{stem}.png"

    def _done(self, folder: Path, item: dict[str, Any]) -> bool:
        image = self.segment_path(folder, item["part"], item["level"], item["stem"])
        if item["part"] == "background":
            return image.is_file()
        return image.is_file() and self.segment_path(folder, "mask", item["level"], item["stem"]).is_file()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the folder against this configuration, skip finished requests, record the configuration."""
        if str(getattr(stage, "value", stage)) != "predict":
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "request_config"):
            raise ValueError("SegmentLevelWriter needs a SegmentRequestDataModule (data.class_path)")
        if not hasattr(pl_module, "check_level_ready"):
            raise ValueError("SegmentLevelWriter needs a SegmentGeneration model (model.class_path)")
        for level in sorted({item["level"] for item in dm.items}):  # refuse before writing anything
            pl_module.check_level_ready(level)
        folder = self.folder(trainer)
        self._config = {
            **{k: json_plain(v) for k, v in pl_module.generation_config().items()},
            **dm.request_config(),
            "model": f"{type(pl_module).__module__}.{type(pl_module).__name__}",
            "mask_source": self.mask_source,
            "mask_box_margin": float(self.box_margin),
            "mask_iterations": int(self.mask_iterations),
        }
        check_folder(folder, self._config)
        trainer.strategy.barrier()
        dm.skip({item["index"] for item in dm.items if self._done(folder, item)})
        trainer.predict_loop.return_predictions = False
        if trainer.is_global_zero and not (folder / CONFIG_FILE).is_file():
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(folder / CONFIG_FILE, {**self._config, "complete": False, "created": created})
        trainer.strategy.barrier()

    def l0_mask(self, rgb: np.ndarray) -> np.ndarray:
        """0/255 uint8 mask of a generated L0 foreground from the configured mask source."""
        from tools.segment import box_gmm_mask, grabcut_mask, otsu_mask

        if self.mask_source == "otsu":
            mask = otsu_mask(rgb)
        elif self.mask_source == "grabcut":
            mask = grabcut_mask(rgb, self.box_margin, self.mask_iterations)
        else:
            mask = box_gmm_mask(rgb, self.box_margin, self.mask_iterations)
        return np.where(mask, 255, 0).astype(np.uint8)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write each generated segment (checked against its request) and, for foregrounds, its mask."""
        dm = trainer.datamodule
        folder = self.folder(trainer)
        indices = [int(i) for i in torch.as_tensor(prediction["index"]).tolist()]
        images = torch.as_tensor(prediction["images"])
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != len(indices):
            raise ValueError(
                f"SegmentLevelWriter: expected uint8 images (B, 3, H, W); got {images.dtype} {tuple(images.shape)}"
            )
        masks = torch.as_tensor(prediction["mask"])
        levels = [int(v) for v in torch.as_tensor(prediction["level"]).tolist()]
        for row, index in enumerate(indices):
            item = dm.items[index] if 0 <= index < len(dm.items) else None
            if item is None or item["level"] != levels[row] or item["part"] != prediction["part"][row]:
                raise ValueError(f"SegmentLevelWriter: prediction {index} does not match its request {item}")
            rgb = images[row].permute(1, 2, 0).numpy()
            if item["part"] == "foreground":
                mask = masks[row, 0].numpy() if item["level"] > 0 else self.l0_mask(rgb)
                rgb = np.where(mask[:, :, None] > 127, rgb, 0).astype(np.uint8)
                self._png(self.segment_path(folder, "mask", item["level"], item["stem"]), mask)
            self._png(self.segment_path(folder, item["part"], item["level"], item["stem"]), rgb)

    @staticmethod
    def _png(path: Path, pixels: np.ndarray) -> None:
        image = Image.fromarray(np.ascontiguousarray(pixels))
        write_bytes_atomic(path, lambda handle: image.save(handle, "PNG"))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Rank zero: check every segment exists, assemble the level pairs, write the manifest."""
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.assemble(self.folder(trainer), trainer.datamodule)
        trainer.strategy.barrier()

    def assemble(self, folder: Path, dm: Any) -> None:
        """Link the generated segments into the level folders and write manifest.jsonl and generation.json."""
        missing = [i["index"] for i in dm.items if not self._done(folder, i)]
        if missing:
            raise RuntimeError(
                f"SegmentLevelWriter: {len(missing)} of {len(dm.items)} segments missing in {folder / SEGMENTS} "
                f"(first requests: {missing[:5]}); rerun the same command to write them"
            )
        by_key = {(i["part"], i["level"], i["stem"]): i for i in dm.items}
        rows = []
        for (fg, bg), pair in zip(dm.level_pairs, dm.pair_names):
            for name in sorted(dm.files):
                stem = Path(name).stem
                f_item, b_item = by_key[("foreground", fg, stem)], by_key[("background", bg, stem)]
                sources = {
                    "foreground": self.segment_path(folder, "foreground", fg, stem),
                    "background": self.segment_path(folder, "background", bg, stem),
                    "mask": self.segment_path(folder, "mask", fg, stem),
                }
                for part, source in sources.items():
                    _link(source, folder / pair / part / f"{stem}.png")
                rows.append(
                    {
                        "pair": pair,
                        "name": name,
                        "file": f"{stem}.png",
                        "label": f_item["label"],
                        "class": dm.class_names[f_item["label"]],
                        "foreground_level": fg,
                        "background_level": bg,
                        "foreground_prompt": f_item["prompt"],
                        "background_prompt": b_item["prompt"],
                        "foreground_seed": f_item["seed"],
                        "background_seed": b_item["seed"],
                        "mask": "real guiding mask" if fg > 0 else f"{self.mask_source} of the generated foreground",
                        "mask_fraction": round(float((np.asarray(Image.open(sources["mask"])) > 127).mean()), 4),
                        "strength": self._config.get("strength") if 2 in (fg, bg) else None,
                        "canny_thresholds": self._config.get("canny_thresholds") if 1 in (fg, bg) else None,
                    }
                )
        write_text_atomic(folder / MANIFEST_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        old = json.loads((folder / CONFIG_FILE).read_text())
        write_json_atomic(folder / CONFIG_FILE, {**old, **self._config, "complete": True, "written": len(rows)})
        empty = sorted({f"L{r['foreground_level']}/{r['file']}" for r in rows if r["mask_fraction"] == 0})
        if empty:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"SegmentLevelWriter: {len(empty)} generated foregrounds have an empty mask (e.g. {empty[:3]}): their "
                f"composites show the background only; see mask_fraction in {folder / MANIFEST_FILE}"
            )


def _link(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy across file systems), replaced atomically."""
    if target.is_file() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
