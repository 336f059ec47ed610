"""InversionWriter: gradient-inversion results as image files, per-image metrics and a manifest.

**Input.** ``GradientInversion.predict_step`` on ``InversionTargetDataModule`` batches (see those modules).

**Output** (``<output_dir>``, default ``<run folder>/inversion``)::

    <id>_<label>_ori.png       the un-augmented original (what metrics compare against; SemSim pitfall 6)
    <id>_<label>_target.png    the augmented target whose gradient was observed, denormalised to [0, 1]
    <id>_<label>_rec.png       the reconstruction
    rows/<id>_<label>.json     one target's metrics row, written after its three PNGs (its "done" mark)
    metrics.jsonl              every row, sorted by global index, merged by rank zero at the end
    manifest.json              victim checkpoint sha256 and hyperparameters, preset + overrides, seed, defence,
                               data settings (root, count, size, mean/std, transform, data seed, ids);
                               "complete" once every target is written

``<id>`` is the target's zero-padded global index and ``<label>`` its class index, so files pair by name
(SemSim pitfall 8), never by listing order. Every file is written atomically. A rerun with the same
configuration skips finished targets (three PNGs and the row present) and writes the rest, which gives the
files of an uninterrupted run since each target depends on (seed, index) only. A folder holding another
configuration (or PNGs without a manifest) is refused, naming what differs; nothing is overwritten.

**DDP.** Lightning shards the pending targets over ranks; each rank writes its own targets' files (distinct
names, so no collisions), and rank zero merges ``rows/`` into ``metrics.jsonl`` after a barrier. A target the
DistributedSampler pads onto a second rank is inverted twice, in different batches, so its two results agree only
up to float32 kernel differences; each file is whole, but its PNGs and row may come from either copy.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from tools.files import file_sha256, json_plain, write_bytes_atomic, write_json_atomic, write_text_atomic

MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
ROWS_DIR = "rows"
KINDS = ("ori", "target", "rec")
NOT_IDENTITY = ("created", "complete", "written", "victim_checkpoint_path")


def stem(target_id: str, label: int) -> str:
    """``<id>_<label>``: the shared prefix of one target's files."""
    return f"{target_id}_{int(label)}"


def finished(folder: Path, target_id: str, label: int) -> bool:
    """True when all three PNGs and the metrics row of this target exist."""
    s = stem(target_id, label)
    return all((folder / f"{s}_{k}.png").is_file() for k in KINDS) and (folder / ROWS_DIR / f"{s}.json").is_file()


class InversionWriter(BasePredictionWriter):
    """Write reconstructions, originals, targets, per-image metrics and a manifest (see the module docstring)."""

    def __init__(self, output_dir: str | None = None) -> None:
        """Args:
        output_dir: results folder; default ``<run folder>/inversion``.
        """
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._config: dict[str, Any] = {}
        self._start, self._written = 0.0, 0

    def folder(self, trainer: Trainer) -> Path:
        """The results folder."""
        return Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir) / "inversion"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the folder against this configuration, skip finished targets, record the configuration."""
        if str(getattr(stage, "value", stage)) != "predict":
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "skip") or not hasattr(datamodule, "settings"):
            raise ValueError("InversionWriter needs InversionTargetDataModule (data.class_path)")
        if not hasattr(pl_module, "attack_settings"):
            raise ValueError("InversionWriter needs the GradientInversion module (model.class_path)")
        folder = self.folder(trainer)
        if hasattr(pl_module, "check_targets"):
            pl_module.check_targets(datamodule)  # before anything is written
        self._config = inversion_config(pl_module, datamodule)
        fresh = check_folder(folder, self._config)
        trainer.strategy.barrier()  # every rank has looked before any rank writes
        datamodule.skip([i["id"] for i in datamodule.items if finished(folder, i["id"], i["label"])])
        trainer.predict_loop.return_predictions = False
        if trainer.is_global_zero and fresh:
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(folder / MANIFEST_FILE, {**self._config, "complete": False, "created": created})
        trainer.strategy.barrier()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the images/s clock."""
        self._start, self._written = time.perf_counter(), 0

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
        """Write each target's three PNGs, then its metrics row; show images/s."""
        folder = self.folder(trainer)
        items = {i["id"]: i for i in trainer.datamodule.items}
        ids = [str(i) for i in prediction["id"]]
        labels = [int(v) for v in prediction["label"]]
        images = {k: _uint8(prediction[key]) for k, key in zip(KINDS, ("original", "target", "reconstruction"))}
        metrics = {k: v.detach().cpu().tolist() for k, v in prediction["metrics"].items()}
        for b, (target_id, label) in enumerate(zip(ids, labels)):
            item = items.get(target_id)
            if item is None or item["label"] != label:
                raise ValueError(f"InversionWriter: target {target_id} (label {label}) is not in the target list")
            s = stem(target_id, label)
            for kind in KINDS:
                pil = Image.fromarray(images[kind][b])
                write_bytes_atomic(folder / f"{s}_{kind}.png", lambda handle, p=pil: p.save(handle, "PNG"))
            row = {
                "id": target_id,
                "index": item["index"],
                "label": label,
                "class": trainer.datamodule.class_names[label],
                "file": item["file"],
                "used_label": int(prediction["used_label"][b]),
                "loss": float(prediction["loss"][b]),
                **{name: _number(values[b]) for name, values in metrics.items()},
            }
            write_json_atomic(folder / ROWS_DIR / f"{s}.json", row)
        self._written += len(ids)
        rate = self._written / max(time.perf_counter() - self._start, 1e-9)
        bar = getattr(trainer.progress_bar_callback, "predict_progress_bar", None)
        if bar is not None and hasattr(bar, "set_postfix"):  # tqdm bar; otherwise (rich, none) the log line says it
            bar.set_postfix({"images/s": f"{rate:.2f}"}, refresh=False)
        else:
            rank_zero_info(f"inversion: {self._written} targets on this rank, {rate:.2f} images/s")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After every rank is done: rank zero checks every target and merges the rows into metrics.jsonl."""
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            folder, items = self.folder(trainer), trainer.datamodule.items
            missing = [i["id"] for i in items if not finished(folder, i["id"], i["label"])]
            if missing:
                raise RuntimeError(
                    f"InversionWriter: {len(missing)} of {len(items)} targets missing in {folder} (first: "
                    f"{missing[:5]}); rerun the same command to write them"
                )
            rows = [(folder / ROWS_DIR / f"{stem(i['id'], i['label'])}.json").read_text() for i in items]
            lines = "".join(json.dumps(json.loads(r)) + "\n" for r in rows)
            write_text_atomic(folder / METRICS_FILE, lines)
            old = json.loads((folder / MANIFEST_FILE).read_text())
            write_json_atomic(folder / MANIFEST_FILE, {**old, **self._config, "complete": True, "written": len(rows)})
        trainer.strategy.barrier()


def inversion_config(pl_module: Any, datamodule: Any) -> dict[str, Any]:
    """Everything that decides the files: victim checkpoint hash, attack settings, data settings."""
    return json_plain(
        {
            "model": f"{type(pl_module).__module__}.{type(pl_module).__name__}",
            "victim_checkpoint_sha256": file_sha256(pl_module.victim_file),
            "victim_checkpoint_path": str(Path(pl_module.victim_file).resolve()),
            **pl_module.attack_settings(),
            "data": datamodule.settings(),
        }
    )


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_folder(folder: Path, config: dict[str, Any]) -> bool:
    """Refuse a folder holding results of another configuration (or PNGs of unknown origin), naming what differs.

    Returns True when the manifest is to be (re)written: none yet, or one of a start that wrote no result.
    """
    path = folder / MANIFEST_FILE
    results = folder.is_dir() and (any(folder.glob("*.png")) or any(folder.glob(f"{ROWS_DIR}/*.json")))
    if path.is_file() and not results:
        return True
    if not path.is_file():
        stray = sorted(folder.glob("*.png"))[:3] if folder.is_dir() else []
        if stray:
            raise FileExistsError(
                f"{folder} holds images ({', '.join(p.name for p in stray)}, ...) but no {MANIFEST_FILE}, so what "
                "produced them is unknown; they are never overwritten: choose another output_dir or --run.name"
            )
        return True
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FileExistsError(f"{path} is not valid JSON ({err}); refusing to write results there") from err
    a = _flat({k: v for k, v in old.items() if k not in NOT_IDENTITY})
    b = _flat({k: v for k, v in config.items() if k not in NOT_IDENTITY})
    differs = [_change(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differs:
        raise FileExistsError(
            f"{folder} holds inversion results of another configuration (differs: {'; '.join(differs)}); they are "
            "never overwritten: choose another output_dir or --run.name"
        )
    return False


def _change(key: str, old: Any, new: Any) -> str:
    if isinstance(old, list) and isinstance(new, list) and len(old) + len(new) > 8:
        return f"{key} ({len(old)} -> {len(new)} entries)"
    return f"{key} {old!r} -> {new!r}"


def _uint8(images: torch.Tensor) -> np.ndarray:
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim != 4 or not bool(torch.isfinite(images).all()):
        raise ValueError(f"InversionWriter: expected finite (B, C, H, W) images; got shape {tuple(images.shape)}")
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value  # PSNR of an exact copy stays inf (JSON Infinity)
