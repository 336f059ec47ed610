"""SyntheticImageWriter: a text-to-image model's predictions as an image-folder dataset with a manifest.

**predict_step contract.** A generation module (``TextToImageDiffusion``) run on ``PromptDataModule`` batches
(``{"index": LongTensor (B,), "prompt": list[str], "label": LongTensor (B,), "seed": LongTensor (B,)}``) returns::

    {"index": LongTensor (B,),            # echoed from the batch
     "images": uint8 tensor (B, 3, H, W)  # or float in [0, 1]; image i generated from seed[i] alone
     "prompt": list[str], "label": LongTensor (B,), "seed": LongTensor (B,)}  # echoed from the batch

and may define ``generation_config() -> dict`` with JSON values describing what changes the images
(``guidance_scale``, ``num_inference_steps``, ``scheduler``, ``height``, ``width``, ``base_model``,
``adapter_sha256``, ...). Without it the writer takes those keys from the module's hparams where present.

**Output** (``<output_dir>``, default ``<run folder>/synthetic``)::

    <class_name>/<index:06d>.png    one PNG per scheduled image, class folders = the real dataset's class_names
    generation.json                 configuration: module config, base seed, prompts file sha256, schedule
                                    sha256, N, class names; "complete" once every index is written
    manifest.jsonl                  one row per image, sorted by index: index, file, prompt, class, label,
                                    seed, guidance, steps, adapter_sha256

Every PNG is written atomically, so a killed run leaves only whole images. A rerun with the same
configuration skips the images already there (it tells the data module to leave them out) and writes the
rest, which gives the same files as an uninterrupted run because each image depends on its (base seed, index)
only. A folder holding another configuration's images (or images without a ``generation.json``) is refused
with an error naming the differing keys; nothing is overwritten. Under DDP Lightning shards the pending
indices over ranks without repeats; each rank writes its own images and rank zero writes the manifest from
the schedule once every image file exists.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from tools.files import json_plain, write_bytes_atomic, write_json_atomic, write_text_atomic

CONFIG_FILE = "generation.json"
MANIFEST_FILE = "manifest.jsonl"
# hparams read when the module has no generation_config().
MODULE_KEYS = (
    "base_model",
    "guidance_scale",
    "num_inference_steps",
    "scheduler",
    "height",
    "width",
    "resolution",
    "image_size",
    "adapter",
    "adapter_sha256",
    "precision",
)
# generation.json entries that describe the run rather than the images.
NOT_IDENTITY = ("created", "complete", "written")


class SyntheticImageWriter(BasePredictionWriter):
    """Write generated images as ``<output_dir>/<class_name>/<index:06d>.png`` plus ``manifest.jsonl``.

    See the module docstring for the predict_step contract, the files and the rerun rules.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        """Args:
        output_dir: folder of the synthetic dataset; default ``<run folder>/synthetic``.
        """
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._config: dict[str, Any] = {}
        self._start = 0.0
        self._written = 0

    def folder(self, trainer: Trainer) -> Path:
        """The dataset folder."""
        return Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir) / "synthetic"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the folder against this configuration, skip finished indices, record the configuration."""
        if str(getattr(stage, "value", stage)) != "predict":
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "items") or not hasattr(datamodule, "skip"):
            raise ValueError("SyntheticImageWriter needs a PromptDataModule (data.class_path: PromptDataModule)")
        folder = self.folder(trainer)
        self._config = generation_config(pl_module, datamodule)
        check_folder(folder, self._config)
        trainer.strategy.barrier()  # every rank has looked before any rank writes
        datamodule.skip(datamodule.existing_indices(folder))
        trainer.predict_loop.return_predictions = False  # images go to disk, not into memory
        if trainer.is_global_zero and not (folder / CONFIG_FILE).is_file():
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(folder / CONFIG_FILE, {**self._config, "complete": False, "created": created})
        trainer.strategy.barrier()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the images/s clock."""
        self._start = time.perf_counter()
        self._written = 0

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
        """Write this batch's images (each checked against the schedule) and show images/s."""
        datamodule = trainer.datamodule
        folder = self.folder(trainer)
        indices, images = _check_prediction(prediction)
        for index, image in zip(indices, images):
            item = datamodule.items[index] if 0 <= index < len(datamodule.items) else None
            if item is None:
                raise ValueError(f"SyntheticImageWriter: predicted index {index} is outside the schedule")
            for key in ("prompt", "label", "seed"):
                got = _at(prediction[key], indices.index(index)) if key in prediction else item[key]
                if got != item[key]:
                    raise ValueError(
                        f"SyntheticImageWriter: image {index} has {key} {got!r}; "
                        f"the schedule says {item[key]!r} (predict_step must echo the batch)"
                    )
            pil = Image.fromarray(image)
            write_bytes_atomic(folder / datamodule.relative_path(index), lambda handle, p=pil: p.save(handle, "PNG"))
        self._written += len(indices)
        rate = self._written / max(time.perf_counter() - self._start, 1e-9)
        bar = getattr(trainer.progress_bar_callback, "predict_progress_bar", None)
        if bar is not None and hasattr(bar, "set_postfix"):
            bar.set_postfix({"images/s": f"{rate:.2f}"}, refresh=False)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After every rank is done: rank zero checks that every index exists and writes the manifest."""
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            folder = self.folder(trainer)
            missing = [
                i["index"] for i in datamodule.items if not (folder / datamodule.relative_path(i["index"])).is_file()
            ]
            if missing:
                raise RuntimeError(
                    f"SyntheticImageWriter: {len(missing)} of {len(datamodule.items)} images missing in {folder} "
                    f"after generation (first: {missing[:5]}); rerun the same command to write them"
                )
            cfg = self._config
            rows = [
                {
                    "index": item["index"],
                    "file": datamodule.relative_path(item["index"]),
                    "prompt": item["prompt"],
                    "class": datamodule.class_names[item["label"]],
                    "label": item["label"],
                    "seed": item["seed"],
                    "guidance": cfg.get("guidance_scale"),
                    "steps": cfg.get("num_inference_steps"),
                    "adapter_sha256": cfg.get("adapter_sha256"),
                }
                for item in datamodule.items
            ]
            write_text_atomic(folder / MANIFEST_FILE, "".join(json.dumps(r) + "\n" for r in rows))
            old = json.loads((folder / CONFIG_FILE).read_text())
            write_json_atomic(folder / CONFIG_FILE, {**old, **cfg, "complete": True, "written": len(rows)})
        trainer.strategy.barrier()


def generation_config(pl_module: LightningModule, datamodule: Any) -> dict[str, Any]:
    """Everything that decides the images: the module's generation settings and the prompt schedule."""
    if hasattr(pl_module, "generation_config"):
        module = dict(pl_module.generation_config())
    else:
        hp = dict(getattr(pl_module, "hparams", {}))
        module = {k: json_plain(hp[k]) for k in MODULE_KEYS if k in hp}
    hp = datamodule.hparams
    return {
        **{k: json_plain(v) for k, v in module.items()},
        "model": f"{type(pl_module).__module__}.{type(pl_module).__name__}",
        "base_seed": int(hp.seed),
        "prompts_sha256": datamodule.captions_sha256,
        "prompt_type": hp.prompt_type,
        "template": hp.template if hp.prompt_type == "template" else None,
        "cardinality": float(hp.cardinality),
        "real_train_size": datamodule.real_train_size,
        "num_images": len(datamodule.items),
        "class_names": list(datamodule.class_names),
        "schedule_sha256": datamodule.schedule_sha256(),
    }


def check_folder(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a folder that holds images of another configuration (or images of unknown origin)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        stray = [p for p in folder.rglob("*.png")][:3] if folder.is_dir() else []
        if stray:
            raise FileExistsError(
                f"{folder} holds images ({', '.join(str(p.relative_to(folder)) for p in stray)}, ...) but no "
                f"{CONFIG_FILE}, so what produced them is unknown; they are never overwritten: choose another "
                "output_dir or --run.name"
            )
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FileExistsError(f"{path} is not valid JSON ({err}); refusing to write images there") from err
    keys = sorted((set(old) | set(config)) - set(NOT_IDENTITY))
    differs = [f"{k} {old.get(k)!r} -> {config.get(k)!r}" for k in keys if old.get(k) != config.get(k)]
    if differs:
        raise FileExistsError(
            f"{folder} holds synthetic images of another configuration (differs: {'; '.join(differs)}); they are "
            "never overwritten: choose another output_dir or --run.name"
        )


def _check_prediction(prediction: Any) -> tuple[list[int], np.ndarray]:
    if not isinstance(prediction, dict) or "index" not in prediction or "images" not in prediction:
        raise ValueError(
            "SyntheticImageWriter: predict_step must return a dict with 'index' (B,) and 'images' (B, 3, H, W); "
            f"got {type(prediction).__name__}"
        )
    indices = [int(i) for i in torch.as_tensor(prediction["index"]).flatten().tolist()]
    images = torch.as_tensor(prediction["images"]).detach().cpu()
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(indices):
        raise ValueError(
            f"SyntheticImageWriter: expected images (B={len(indices)}, 3, H, W); got shape {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8:
        images = images.float()
        if not torch.isfinite(images).all():
            raise ValueError("SyntheticImageWriter: predicted images hold NaN or inf")
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return indices, images.permute(0, 2, 3, 1).contiguous().numpy()


def _at(values: Any, i: int) -> Any:
    value = values[i]
    return value.item() if hasattr(value, "item") else value
