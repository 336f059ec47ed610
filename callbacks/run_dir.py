"""RunDirectory: saves the resolved config into the run folder, sends it to W&B, records fit/test summaries."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.recipes import reapply_options
from tools.files import unique_path, write_json_atomic, write_text_atomic
from tools.run_config import remember_wandb_run
from tools.run_dirs import CHECKPOINT_DIR, FIT_SUMMARY, clear_running, finished_reason, mark_running
from tools.trained_ids import record_trained_ids


def metrics_to_floats(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar tensors -> floats (NaN kept as None so the JSON stays valid)."""
    out: dict[str, float] = {}
    for key, value in sorted(metrics.items()):
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = None if math.isnan(number) else number
    return out


class RunDirectory(SaveConfigCallback):
    """Config saving for synthpriv runs (replaces Lightning's SaveConfigCallback).

    Writes ``config.yaml`` for a new fit, ``config.resume.N.yaml`` when a fit resumes and ``config.<stage>.yaml``
    for validate/test/predict, never replacing an earlier file; pushes the full resolved config to every W&B
    logger; writes ``fit_summary.json`` after a completed fit and ``<stage>/metrics.json`` after validate/test.

    At the start of every fit it records (or, resuming, checks) the ids of the training examples in
    ``trained_ids.txt`` (tools/trained_ids.py). ``resume_changes`` are the options a resumed fit changed with
    ``--run.allow_changes`` (found at parse time, tools/resume_changes.py); they are applied after the checkpoint
    is restored (optimizer settings and schedule rebuilt, lightning_modules/recipes.reapply_options), and what
    happens to the schedule is logged and kept in ``fit_summary.json``.

    While a fit runs, rank zero keeps ``fit.running.json`` (host, pid) in the run folder, removed when the fit ends
    or fails, so another fit into the same folder is refused instead of moving its files aside
    (tools/run_dirs.py).

    ``fit_summary.json`` is never replaced by one with less information: a resumed fit that trained no step leaves
    it as it was (Lightning returns at once from a fit whose limits are already reached and still calls
    ``on_fit_end``, with no metrics; tools/run_dirs.prepare_fit announces such a resume at parse time and no
    ``config.resume.N.yaml`` is written for it), and a resumed fit that trained more first copies the earlier
    summary to ``fit_summary.N.json`` (N = 1, 2, ...) and lists those files, oldest first, under ``previous`` in
    the new summary.
    """

    def __init__(self, *args: Any, resume_changes: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_changes = list(resume_changes)
        self.trained_ids: dict[str, Any] | None = None
        self.resume_note: str | None = None
        self.resumed_step: int | None = None

    @property
    def run_dir(self) -> Path:
        """The run folder chosen by the CLI (``run.root/run.study/run.name``)."""
        run = self.config.run
        return Path(run.root) / run.study / run.name

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Save the config once per process group (rank zero writes); a resume with nothing to train saves none."""
        if self.already_saved:
            return
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum
        if stage == "fit":  # every rank checks a recorded list (all refuse alike); rank zero writes a new one
            self.trained_ids = record_trained_ids(self.run_dir, trainer.datamodule, write=trainer.is_global_zero)
        if trainer.is_global_zero:
            if stage == "fit":
                mark_running(self.run_dir)
                first = self.run_dir / "config.yaml"
                target = unique_path(self.run_dir / "config.resume.yaml") if first.exists() else first
            else:
                target = unique_path(self.run_dir / f"config.{stage}.yaml")
            if not (stage == "fit" and self._nothing_to_train()):  # a no-op resume (announced at parse time)
                write_text_atomic(target, self.parser.dump(self.config, skip_none=False, format="yaml"))
                self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def _nothing_to_train(self) -> bool:
        """A resume of this run's finished fit whose limits leave nothing to train (tools/run_dirs.py)."""
        ckpt = self.config.get("ckpt_path")
        if not ckpt or not Path(ckpt).is_file():
            return False
        if Path(ckpt).resolve().parent != (self.run_dir / CHECKPOINT_DIR).resolve():
            return False
        limits = [self.config.trainer.get(key) for key in ("max_epochs", "max_steps", "max_time")]
        reason = finished_reason(self.run_dir, Path(ckpt), *limits)
        return reason is not None and not reason[2]

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Send the full resolved config to W&B (rank zero only: no collectives here)."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
        if stage == "fit":
            remember_wandb_run(trainer.loggers, self.run_dir)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resumed with --run.allow_changes: the new options govern the optimizer and the schedule from here."""
        if not self.resume_changes:
            return
        keys = ", ".join(c.key for c in self.resume_changes)
        self.resume_note = f"resuming with changed options ({keys}): " + reapply_options(trainer, pl_module)
        rank_zero_info(self.resume_note)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Remember the global step a fit resumes from (to tell whether it trained anything)."""
        self.resumed_step = int(checkpoint.get("global_step", 0))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A failed or interrupted fit no longer runs: remove its ``fit.running.json``."""
        if trainer.is_global_zero:
            clear_running(self.run_dir)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record a completed fit; the study runner treats this file as the fit step's output."""
        if trainer.is_global_zero:
            clear_running(self.run_dir)
        if not trainer.is_global_zero or trainer.interrupted or trainer.fast_dev_run:
            return
        path = self.run_dir / FIT_SUMMARY
        if path.is_file() and self.resumed_step is not None and trainer.global_step <= self.resumed_step:
            rank_zero_info(
                f"{self.run_dir}: the resumed fit trained no step after step {self.resumed_step}; {path} kept as it was"
            )
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        summary = {
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "best_checkpoint": Path(best).name if best else None,
            "best_score": metrics_to_floats({"s": trainer.checkpoint_callback.best_model_score})["s"]
            if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_score is not None
            else None,
            "monitor": trainer.checkpoint_callback.monitor if trainer.checkpoint_callback else None,
            "checkpoint_dir": CHECKPOINT_DIR,
            "metrics": metrics_to_floats(trainer.callback_metrics),
            "seed": self.config.get("seed_everything"),
            "trained_ids": self.trained_ids,
        }
        if self.resume_note:
            summary["resume_changes"] = {"changes": [str(c) for c in self.resume_changes], "note": self.resume_note}
        previous = self._keep_previous_summary(path)
        if previous:
            summary["previous"] = previous
        write_json_atomic(path, summary)

    @staticmethod
    def _keep_previous_summary(path: Path) -> list[str]:
        """Copy an existing summary to ``fit_summary.N.json``; return the earlier summaries' names, oldest first."""
        if not path.is_file():
            return []
        text = path.read_text()
        try:
            earlier = json.loads(text).get("previous") or []
        except (ValueError, AttributeError):
            earlier = []
        kept = write_text_atomic(unique_path(path), text)
        return [*earlier, kept.name]

    def _write_stage_metrics(self, trainer: Trainer, stage: str) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        payload = {
            "ckpt_path": self.config.get("ckpt_path"),
            "metrics": metrics_to_floats(trainer.callback_metrics),
        }
        write_json_atomic(self.run_dir / stage / "metrics.json", payload)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After `synthpriv validate`, write validate/metrics.json."""
        if trainer.state.fn == "validate":
            self._write_stage_metrics(trainer, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After `synthpriv test`, write test/metrics.json."""
        self._write_stage_metrics(trainer, "test")
