"""ShadowLogitsWriter: the shadow ensemble's predictions as the ``shadows.npz`` that ``synthpriv attack`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning import Trainer

from callbacks.predictions import PredictionWriter
from tools.files import write_json_atomic

SHADOWS_FILE = "shadows.npz"


class ShadowLogitsWriter(PredictionWriter):
    """Write ``<run>/shadows.npz``: logits (K, M, Q, C), labels, ids, ids_hash and mask (K, M) of the query set.

    Also writes ``shadows_summary.json`` with each model's accuracy on its OUT and IN query examples (OUT
    accuracy is the shadows' test accuracy; compare it with the target's to check the recipe matches).
    """

    def __init__(self, output_dir: str | None = None, filename: str = SHADOWS_FILE) -> None:
        """Args:
        output_dir: folder for the file; default the run folder.
        filename: name of the file.
        """
        super().__init__(output_dir=output_dir, filename=filename)

    def _folder(self, trainer: Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir)

    def finalise(self, trainer: Trainer, folder: Path, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Put the model axis first and attach the membership design of the query set."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "query_design"):
            raise ValueError("ShadowLogitsWriter needs a MembershipDataModule as data")
        design = datamodule.query_design()
        logits = merged["logits"].transpose(1, 0, 2, 3)  # (M, K, Q, C) -> (K, M, Q, C)
        if logits.shape[1] != len(design["ids"]) or not np.array_equal(merged["index"], np.arange(logits.shape[1])):
            raise RuntimeError(f"predictions cover {logits.shape[1]} of {len(design['ids'])} query examples")
        correct = (logits.mean(axis=2).argmax(-1) == design["labels"][None]).astype(float)
        mask = design["mask"]
        summary = {
            "models": int(logits.shape[0]),
            "examples": int(logits.shape[1]),
            "queries": int(logits.shape[2]),
            "accuracy_out": [float(c[~m].mean()) if (~m).any() else None for c, m in zip(correct, mask)],
            "accuracy_in": [float(c[m].mean()) if m.any() else None for c, m in zip(correct, mask)],
        }
        outs = [a for a in summary["accuracy_out"] if a is not None]
        summary["mean_accuracy_out"] = float(np.mean(outs)) if outs else None
        write_json_atomic(folder / "shadows_summary.json", summary)
        return {"logits": logits.astype(np.float32), **design}
