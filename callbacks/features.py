"""FeatureWriter: a FeatureExtractor's embeddings as ``<output_dir>/<tag>/{train,val,test}.npz`` + ``manifest.json``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from callbacks.predictions import merge_rank_shards, per_loader, stack_outputs
from privacy.membership import ids_hash
from tools.files import file_sha256, json_plain, read_output_manifest, write_bytes_atomic, write_json_atomic

MANIFEST = "manifest.json"
# What makes two extractions the same: a rerun may rewrite a folder only when all of these agree.
IDENTITY_KEYS = ("backbone", "weights_sha256", "resolution", "input_size")


class FeatureWriter(BasePredictionWriter):
    """Write one npz per predicted split, each example exactly once in dataset-index order, plus a manifest.

    Each npz holds ``embeddings`` (N, D) float32, ``labels`` (N,) int64 and ``ids`` (N,) str (the data module's
    ``example_ids``). Under DDP each rank writes a shard and rank zero merges them (``merge_rank_shards``).
    ``manifest.json`` records the backbone, weights file and sha256, resolution, feature size, class names,
    per-split counts and hashes, the data module's hyperparameters, the seed and the creation time.

    A rerun into a folder whose manifest describes the same extraction (backbone, weights sha256, resolution,
    input size, split ids) rewrites it; any difference is a FileExistsError, so other features are never
    overwritten.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        """Args:
        output_dir: parent folder of the ``<extractor tag>/`` folder; default the run folder.
        """
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self._identity: dict[str, Any] = {}
        self._split_hashes: dict[str, str] = {}
        self._previous: dict[str, Any] | None = None
        self._model: dict[str, Any] = {}

    def folder(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        """``<output_dir or run folder>/<extractor tag>``."""
        base = Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir)
        return base / pl_module.tag

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check model, data and the output folder before predicting (every rank, same answer).

        Runs before the run folder's config is saved, so a refused rerun leaves nothing behind.
        """
        if str(getattr(stage, "value", stage)) != "predict":
            return
        if not hasattr(pl_module, "tag") or not hasattr(pl_module, "weight_files"):
            raise ValueError(f"FeatureWriter needs model FeatureExtractor; got {type(pl_module).__name__}")
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "example_ids"):
            raise ValueError("FeatureWriter needs a data module with example_ids (e.g. ImageFolderDataModule)")
        hp = pl_module.hparams
        files = pl_module.weight_files
        self._identity = {
            "backbone": hp.backbone,
            "weights_sha256": pl_module.weights_sha256(),
            "resolution": hp.resolution,
            "input_size": getattr(datamodule, "input_size", hp.image_size),
        }
        self._split_hashes = {s: ids_hash(datamodule.example_ids(s)) for s in _splits(datamodule)}
        self._previous = check_rerun(self.folder(trainer, pl_module), self._identity, self._split_hashes)
        self._model = {
            "backbone": hp.backbone,
            "tag": pl_module.tag,
            "weights": hp.weights,
            "weights_file": str(files[0]) if files else None,
            "weights_sha256": self._identity["weights_sha256"],
            "resolution": hp.resolution,
            "input_size": self._identity["input_size"],
            "feature_dim": pl_module.feature_dim,
            "mean": [round(v, 6) for v in pl_module.mean.flatten().tolist()],  # float32 buffers: drop the noise
            "std": [round(v, 6) for v in pl_module.std.flatten().tolist()],
        }

    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Merge each split's shards on rank zero, write its npz, then the manifest."""
        datamodule = trainer.datamodule
        splits = _splits(datamodule)
        loaders = per_loader(predictions)
        if len(loaders) != len(splits):
            raise RuntimeError(f"FeatureWriter got {len(loaders)} predict loaders for the splits {splits}")
        folder = self.folder(trainer, pl_module)
        class_names = list(getattr(datamodule, "class_names", None) or pl_module.hparams.class_names or [])
        entries = {}
        for split, batches in zip(splits, loaders):
            merged = merge_rank_shards(trainer, folder, f"{split}.npz", stack_outputs(batches, "FeatureWriter"))
            if merged is not None:
                entries[split] = _write_split(folder, split, merged, datamodule.example_ids(split), len(class_names))
        if trainer.is_global_zero:
            previous = (self._previous or {}).get("splits", {})
            manifest = {
                **self._model,
                "class_names": class_names,
                "splits": {**previous, **entries},  # splits of an earlier identical run not rerun now are kept
                "data": {"class_path": _class_path(datamodule), "hparams": _hparams(datamodule)},
                "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_json_atomic(folder / MANIFEST, manifest)
        trainer.strategy.barrier()


def check_rerun(folder: Path, identity: dict[str, Any], split_hashes: dict[str, str]) -> dict[str, Any] | None:
    """The folder's earlier manifest when it describes the same extraction; None for a fresh folder.

    Raises FileExistsError naming the folder and what differs otherwise (or when feature files lie there
    without a manifest).
    """
    stray = sorted(p.name for p in folder.glob("*.npz")) if folder.is_dir() else []
    old = read_output_manifest(folder / MANIFEST, stray, "features")
    if old is None:
        return None
    differs = [f"{k} {old.get(k)!r} -> {identity[k]!r}" for k in IDENTITY_KEYS if old.get(k) != identity[k]]
    for split, digest in split_hashes.items():
        before = old.get("splits", {}).get(split, {}).get("ids_hash")
        if before is not None and before != digest:
            differs.append(f"{split} example ids")
    if differs:
        raise FileExistsError(
            f"{folder} already holds features of another extraction ({'; '.join(differs)}); they are never "
            "overwritten: choose another --run.name or FeatureWriter output_dir"
        )
    return old


def _write_split(folder: Path, split: str, merged: dict[str, np.ndarray], ids: list[str], classes: int) -> dict:
    index = merged["index"]
    if not np.array_equal(index, np.arange(len(ids))):
        raise RuntimeError(f"FeatureWriter: predictions cover {len(index)} of the {len(ids)} {split} examples")
    labels = merged["label"].astype(np.int64)
    if classes and ((labels < 0) | (labels >= classes)).any():
        raise ValueError(f"FeatureWriter: {split} labels {sorted(set(labels.tolist()))} outside [0, {classes})")
    arrays = {
        "embeddings": merged["embeddings"].astype(np.float32),
        "labels": labels,
        "ids": np.asarray(ids, dtype=str),
    }
    path = write_bytes_atomic(folder / f"{split}.npz", lambda handle: np.savez(handle, **arrays))
    return {"file": path.name, "count": len(ids), "sha256": file_sha256(path), "ids_hash": ids_hash(ids)}


def _splits(datamodule: Any) -> list[str]:
    return list(getattr(datamodule, "predict_splits", None) or [datamodule.hparams.predict_split])


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def _hparams(datamodule: Any) -> dict[str, Any]:
    """The data module's own arguments (LightningCLI's private ``_`` entries left out)."""
    return {k: json_plain(v) for k, v in dict(datamodule.hparams).items() if not str(k).startswith("_")}
