"""CaptionWriter: a Captioner's captions as ``captions.jsonl`` plus TCKR's two prompt files and a manifest."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from callbacks.features import _class_path, _hparams, _splits
from callbacks.predictions import merge_rank_shards, per_loader
from privacy.membership import ids_hash
from tools.files import file_sha256, read_output_manifest, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

CAPTIONS = "captions.jsonl"
PROMPTS_TXT = "prompts_classname_caption.txt"  # TCKR's <ds>_blip2_finetuning.txt: "classname: caption" per image
PROMPTS_JSON = "prompts_by_class.json"  # TCKR's <ds>_blip2_pipeline.json: {class: [captions...]}
MANIFEST = "captions_manifest.json"
OUTPUTS = (CAPTIONS, PROMPTS_TXT, PROMPTS_JSON)


class CaptionWriter(BasePredictionWriter):
    """Write every predicted image's caption exactly once, in split then dataset-index order.

    Files, in ``output_dir`` (default the run folder):

    - ``captions.jsonl``: one JSON object per image: ``id`` (the data module's example id), ``split``,
      ``path``, ``label``, ``class``, ``caption`` and ``tokens`` (generated tokens; 0 for a template);
    - ``prompts_classname_caption.txt``: TCKR's fine-tuning prompts, one line "``<class>: <caption>``" per
      image in the same order;
    - ``prompts_by_class.json``: TCKR's generation prompts, ``{class: [captions...]}`` for every class in
      label order (a class without images gets an empty list);
    - ``captions_manifest.json``: model folder and fingerprint or template, prompt, decoding settings,
      class names, per-split counts and id hashes, file hashes, data hyperparameters, seed, time.

    Under DDP each rank writes a shard and rank zero merges them. A rerun whose manifest describes the same
    captioning (model, decoding, splits' ids) skips generation and leaves the files as they are; any
    difference is a FileExistsError, so other captions are never overwritten.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        """Args:
        output_dir: folder for the caption files; default the run folder.
        """
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self._identity: dict[str, Any] = {}
        self._skip = False

    def folder(self, trainer: Trainer) -> Path:
        """``output_dir``, or the run folder."""
        return Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check model, data and the output folder before predicting (every rank, same answer)."""
        if str(getattr(stage, "value", stage)) != "predict":
            return
        if not hasattr(pl_module, "identity") or not hasattr(pl_module, "skip_generation"):
            raise ValueError(f"CaptionWriter needs model Captioner; got {type(pl_module).__name__}")
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "example_ids") or not hasattr(datamodule, "samples"):
            raise ValueError("CaptionWriter needs a data module with example_ids and samples (ImageFolderDataModule)")
        self._identity = {
            **pl_module.identity(),
            "class_names": list(datamodule.class_names),
            "splits": {s: ids_hash(datamodule.example_ids(s)) for s in _splits(datamodule)},
        }
        self._skip = check_rerun(self.folder(trainer), self._identity)
        pl_module.skip_generation = self._skip
        if self._skip:
            log.warning("captions: %s already holds these captions; skipping generation", self.folder(trainer))

    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Merge each split's shards on rank zero, then write the caption files and the manifest."""
        if self._skip:
            return
        datamodule = trainer.datamodule
        splits = _splits(datamodule)
        loaders = per_loader(predictions)
        if len(loaders) != len(splits):
            raise RuntimeError(f"CaptionWriter got {len(loaders)} predict loaders for the splits {splits}")
        folder = self.folder(trainer)
        class_names = list(datamodule.class_names)
        records: list[dict[str, Any]] = []
        counts = {}
        for split, batches in zip(splits, loaders):
            merged = merge_rank_shards(trainer, folder, f"captions_{split}.npz", _stack(batches))
            if merged is not None:
                split_records = _records(split, merged, datamodule.samples(split), class_names, folder)
                counts[split] = {"count": len(split_records), "ids_hash": self._identity["splits"][split]}
                records += split_records
        if trainer.is_global_zero:
            files = write_caption_files(folder, records, class_names)
            manifest = {
                **self._identity,
                "splits": counts,
                "files": {name: file_sha256(path) for name, path in files.items()},
                "data": {"class_path": _class_path(datamodule), "hparams": _hparams(datamodule)},
                "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_json_atomic(folder / MANIFEST, manifest)
        trainer.strategy.barrier()


def write_caption_files(folder: Path, records: list[dict[str, Any]], class_names: list[str]) -> dict[str, Path]:
    """captions.jsonl and TCKR's two prompt files, each written atomically; returns {name: path}."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    prompts = "".join(f"{r['class']}: {r['caption']}\n" for r in records)
    grouped: dict[str, list[str]] = {name: [] for name in class_names}
    for r in records:
        grouped[r["class"]].append(r["caption"])
    return {
        CAPTIONS: write_text_atomic(folder / CAPTIONS, lines),
        PROMPTS_TXT: write_text_atomic(folder / PROMPTS_TXT, prompts),
        PROMPTS_JSON: write_json_atomic(folder / PROMPTS_JSON, grouped),
    }


def check_rerun(folder: Path, identity: dict[str, Any]) -> bool:
    """True when the folder already holds these captions (skip); False for a fresh folder.

    Raises FileExistsError naming the folder and what differs otherwise, or when caption files lie there
    without a manifest.
    """
    present = [name for name in OUTPUTS if (folder / name).is_file()]
    old = read_output_manifest(folder / MANIFEST, present, "captions")
    if old is None:
        return False
    differs = [
        f"{k} {old.get(k)!r} -> {v!r}"
        for k, v in identity.items()
        if k not in ("splits", "class_names") and old.get(k) != v
    ]
    if old.get("class_names") != identity["class_names"]:
        differs.append("class names")
    old_splits = {s: e.get("ids_hash") for s, e in old.get("splits", {}).items()}
    if old_splits != identity["splits"]:
        differs.append(f"splits or their example ids ({sorted(old_splits)} -> {sorted(identity['splits'])})")
    if differs:
        raise FileExistsError(
            f"{folder} already holds captions of another run ({'; '.join(differs)}); they are never overwritten: "
            "choose another --run.name or CaptionWriter output_dir"
        )
    missing = [name for name in OUTPUTS if name not in present]
    if missing:
        raise FileExistsError(
            f"{folder}: {MANIFEST} is there but {', '.join(missing)} is missing; delete the folder's caption files "
            "and rerun"
        )
    return True


def _stack(batches: Sequence[Any]) -> dict[str, np.ndarray]:
    """One rank's predict outputs as arrays (captions as a unicode array, so shards need no pickle)."""
    if not batches or not isinstance(batches[0], dict) or "caption" not in batches[0]:
        raise ValueError("CaptionWriter needs predict_step to return a dict with 'caption' and 'index' entries")
    captions = [c for b in batches for c in b["caption"]]
    return {
        "index": np.concatenate([b["index"].detach().cpu().numpy() for b in batches]).astype(np.int64),
        "label": np.concatenate([b["label"].detach().cpu().numpy() for b in batches]).astype(np.int64),
        "tokens": np.concatenate([b["tokens"].detach().cpu().numpy() for b in batches]).astype(np.int64),
        "caption": np.asarray(captions, dtype=str) if captions else np.zeros(0, dtype="<U1"),
    }


def _records(
    split: str, merged: dict[str, np.ndarray], samples: list[Any], class_names: list[str], folder: Path
) -> list[dict]:
    """One record per example; ``path`` relative to the captions folder (how ``read_captions`` resolves it)."""
    base = Path(folder).resolve()
    index = merged["index"]
    if not np.array_equal(index, np.arange(len(samples))):
        raise RuntimeError(f"CaptionWriter: predictions cover {len(index)} of the {len(samples)} {split} examples")
    records = []
    for i, sample in enumerate(samples):
        label = int(merged["label"][i])
        if label != sample.label or not 0 <= label < len(class_names):
            raise ValueError(
                f"CaptionWriter: {split} example {sample.example_id} has label {label}, expected {sample.label}"
            )
        records.append(
            {
                "id": sample.example_id,
                "split": split,
                "path": os.path.relpath(Path(sample.path).resolve(), base),
                "label": label,
                "class": class_names[label],
                "caption": str(merged["caption"][i]),
                "tokens": int(merged["tokens"][i]),
            }
        )
    return records
