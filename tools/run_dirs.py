"""Run directories ``<root>/<study>/<name>/``: naming, the no-clobber rule, resume and checkpoint lookup."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

CHECKPOINT_DIR = "checkpoints"
FIT_SUMMARY = "fit_summary.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunOptions:
    """Where a run writes its outputs.

    Args:
        root: folder holding all studies.
        study: study name (first folder level), e.g. quickstart, tckr, cvae.
        name: run name (second level); default the model class name in lower case.
        if_exists: what `fit` does when the run folder already holds a fit: 'error' stops with a message,
            'resume' continues from checkpoints/last.ckpt (or starts fresh when there is none yet).
        allow_changes: let a resumed fit run with options that differ from the run's saved config (otherwise
            refused, listing each key); the optimizer settings and the schedule are then rebuilt from the new
            options at the current epoch, as if the run had used them from the start (tools/resume_changes.py).
    """

    root: str = "runs"
    study: str = "default"
    name: str | None = None
    if_exists: Literal["error", "resume"] = "error"
    allow_changes: bool = False


class RunExistsError(RuntimeError):
    """A fit was started into a run folder that already holds one."""


def is_primary_process() -> bool:
    """True unless environment variables say this is a non-zero rank (DDP child, torchrun, SLURM task)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK"):
        value = os.environ.get(var)
        if value is not None and value.isdigit() and int(value) > 0:
            return False
    return True


def run_directory(options: RunOptions, default_name: str) -> Path:
    """``root/study/name`` after checking both names are plain folder names."""
    name = options.name or default_name
    for label, value in (("run.study", options.study), ("run.name", name)):
        if not _SAFE_NAME.match(value):
            raise ValueError(f"{label} must be a plain folder name (letters, digits, '.', '_', '-'); got {value!r}")
    return Path(options.root) / options.study / name


def holds_fit(run_dir: Path) -> bool:
    """Whether an earlier fit wrote into ``run_dir`` (its config or any checkpoint)."""
    ckpts = run_dir / CHECKPOINT_DIR
    return (run_dir / "config.yaml").exists() or (ckpts.is_dir() and any(ckpts.glob("*.ckpt")))


def prepare_fit(run_dir: Path, if_exists: str, ckpt_path: str | None) -> str | None:
    """Apply the no-clobber rule for `fit`; return the checkpoint to resume from (or the user's own path)."""
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    wants_resume = ckpt_path == "last" or (ckpt_path is None and if_exists == "resume")
    if ckpt_path not in (None, "last"):
        return ckpt_path  # an explicit checkpoint file: Lightning validates it
    if wants_resume:
        if last.is_file():
            return str(last)
        if ckpt_path == "last" and is_primary_process():
            raise FileNotFoundError(f"--ckpt_path last: {last} does not exist, so there is nothing to resume")
        if holds_fit(run_dir) and is_primary_process():
            raise RunExistsError(
                f"{run_dir} holds an earlier fit without checkpoints/last.ckpt, so it cannot be resumed; "
                "delete the folder or choose another --run.name"
            )
        return None
    if is_primary_process() and holds_fit(run_dir):
        raise RunExistsError(
            f"{run_dir} already holds a fit run. Resume it with --ckpt_path last (or --run.if_exists resume), "
            "or choose another --run.name; synthpriv never overwrites an earlier run"
        )
    return None


def resolve_checkpoint(run_dir: Path, ckpt_path: str | None) -> str | None:
    """Turn 'last' / 'best' into files of the run folder; other values pass through."""
    if ckpt_path not in ("last", "best"):
        return ckpt_path
    ckpts = run_dir / CHECKPOINT_DIR
    last = ckpts / "last.ckpt"
    if ckpt_path == "last":
        if not last.is_file():
            raise FileNotFoundError(f"--ckpt_path last: {last} does not exist; train the run first")
        return str(last)
    best = _best_from_summary(run_dir) or _best_from_last(last)
    if best is None:
        raise FileNotFoundError(
            f"--ckpt_path best: no best checkpoint recorded in {run_dir} ({FIT_SUMMARY} or checkpoints/last.ckpt); "
            "train the run first or pass a checkpoint file"
        )
    return str(best)


def _best_from_summary(run_dir: Path) -> Path | None:
    summary = run_dir / FIT_SUMMARY
    if not summary.is_file():
        return None
    name = json.loads(summary.read_text()).get("best_checkpoint")
    path = run_dir / CHECKPOINT_DIR / name if name else None
    return path if path is not None and path.is_file() else None


def _best_from_last(last: Path) -> Path | None:
    if not last.is_file():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True).get("callbacks", {})
    for key, value in state.items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            path = last.parent / Path(value["best_model_path"]).name  # stored relative to the old cwd
            if path.is_file():
                return path
    return None
