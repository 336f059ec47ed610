"""PredictionWriter: stores predict_step outputs with their example ids, one row per example, under DDP too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from tools.files import write_bytes_atomic


class PredictionWriter(BasePredictionWriter):
    """Write ``<output_dir>/predictions.npz`` with ``ids``, ``index`` and every tensor key of predict_step.

    Each rank writes its own shard; after a barrier rank zero merges them in dataset order, dropping the
    duplicates that DistributedSampler adds for even shards, and removes the shards.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions.npz") -> None:
        """Args:
        output_dir: folder for the file; default ``<run folder>/predict``.
        filename: name of the merged file.
        """
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.filename = filename

    def _folder(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.default_root_dir) / "predict"

    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Write this rank's shard, then merge on rank zero."""
        loaders = per_loader(predictions)
        if len(loaders) > 1:
            raise ValueError(
                f"{type(self).__name__} writes one split but predict ran {len(loaders)} loaders; set "
                "data.predict_split to one split (FeatureWriter writes every split)"
            )
        if not loaders or not loaders[0]:
            return
        folder = self._folder(trainer)
        merged = merge_rank_shards(trainer, folder, self.filename, stack_outputs(loaders[0], type(self).__name__))
        if merged is not None:
            merged = self.finalise(trainer, folder, merged)
            write_bytes_atomic(folder / self.filename, lambda handle: np.savez(handle, **merged))
        trainer.strategy.barrier()

    def finalise(self, trainer: Trainer, folder: Path, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the example ids to the merged arrays (subclasses reshape or add more)."""
        ids = _example_ids(trainer)
        if ids is not None:
            merged["ids"] = np.asarray([ids[i] for i in merged["index"]])
        return merged


def per_loader(predictions: Sequence[Any]) -> list[list[Any]]:
    """Lightning's epoch predictions as one list of batch outputs per predict loader."""
    if predictions and isinstance(predictions[0], list):
        return [list(p) for p in predictions]  # several loaders
    return [list(predictions)]


def stack_outputs(batches: Sequence[Any], writer: str) -> dict[str, np.ndarray]:
    """Concatenate every tensor entry of predict_step's dict outputs (which must carry ``index``)."""
    if not isinstance(batches[0], dict) or "index" not in batches[0]:
        raise ValueError(f"{writer} needs predict_step to return a dict with an 'index' entry")
    return {
        key: torch.cat([b[key].detach().cpu() for b in batches]).numpy()
        for key, value in batches[0].items()
        if isinstance(value, torch.Tensor)
    }


def merge_rank_shards(
    trainer: Trainer, folder: Path, name: str, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """Gather every rank's arrays: rank zero gets them in dataset-index order, other ranks None.

    Each rank writes a hidden shard beside ``name``; after a barrier rank zero concatenates them, drops the
    duplicates that DistributedSampler adds for even shards (same ``index``) and deletes the shards. The
    caller writes its files and then calls ``trainer.strategy.barrier()`` so no rank runs ahead.
    """
    shard = folder / f".{name}.rank{trainer.global_rank}.npz"
    write_bytes_atomic(shard, lambda handle: np.savez(handle, **arrays))
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    shards = [folder / f".{name}.rank{r}.npz" for r in range(trainer.world_size)]
    parts = []
    for path in shards:
        with np.load(path) as data:
            parts.append({k: data[k] for k in data.files})
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["index"], return_index=True)
    for path in shards:
        path.unlink(missing_ok=True)
    return {k: v[first] for k, v in merged.items()}  # sorted by index, duplicates dropped


def _example_ids(trainer: Trainer, loader: int = 0) -> list[str] | None:
    """Ids of the split behind predict loader ``loader`` (data modules without ids: None)."""
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "example_ids"):
        return None
    splits = getattr(datamodule, "predict_splits", None)
    return datamodule.example_ids(splits[loader] if splits else datamodule.hparams.predict_split)
