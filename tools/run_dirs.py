"""Run directories ``<root>/<study>/<name>/``: naming, the no-clobber rule, resume and checkpoint lookup.

What ``fit`` does with an existing run folder (``prepare_fit``; nothing is ever deleted or overwritten):

- **empty or new**: a fresh fit (``--ckpt_path last`` on a folder without a fit is an error: nothing to resume).
- **failed start**: the folder holds a fit's config (``config.yaml``, ``config.resume*.yaml``, ``trained_ids.*`` or
  ``wandb_run_id.txt``) but no checkpoint in ``checkpoints/`` and no ``fit_summary.json``: the fit failed before
  its first checkpoint. Any fit into it (new, ``--run.if_exists resume`` or ``--ckpt_path last``) moves everything
  in the folder except earlier ``failed-start-N/`` folders into the next free ``failed-start-N/`` (config.yaml
  last), prints one line saying so and starts fresh; so the leftover config and trained ids do not count as a
  run to resume (no option comparison, no trained-ids check against them).
- **interrupted**: checkpoints but no ``fit_summary.json`` newer than them: a new fit is refused (resume with
  ``--ckpt_path last`` / ``--run.if_exists resume``).
- **finished**: ``fit_summary.json`` describes the checkpoint resumed from (its global step is at least the
  checkpoint's). A new fit is refused. A resume whose limits leave nothing to train (the checkpoint reached
  ``--trainer.max_epochs`` or ``max_steps``) prints one line saying so and changes nothing: Lightning returns at
  once, RunDirectory writes no ``config.resume.N.yaml`` and keeps ``fit_summary.json`` byte for byte (it used to
  rewrite it with empty metrics). A resume of a run that early stopping ended is refused (it would train an
  epoch and stop again). Raising ``max_epochs`` resumes, and callbacks/run_dir.py keeps the earlier summary as
  ``fit_summary.N.json``.
- **running**: ``fit.running.json`` (written by RunDirectory while a fit runs, removed when it ends or fails)
  names a live process on this host, or another host: any fit into the folder is refused.
- ``--ckpt_path <file>`` from another run into a folder that holds a fit is refused (its checkpoints would be
  overwritten); a file inside the folder's own ``checkpoints/`` is a resume like ``last``.

Under DDP only rank zero moves files or refuses a folder by its contents (is_primary_process): the other ranks
decide which checkpoint to resume from ``checkpoints/`` alone, which a failed start's move never touches, and
they read the folder's other files (trained ids) only after the process group is up, that is after rank zero
has finished moving. The finished-run check reads files no fit has changed yet, so every rank decides alike.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

CHECKPOINT_DIR = "checkpoints"
FIT_SUMMARY = "fit_summary.json"
FAILED_START = "failed-start"
RUNNING_MARKER = "fit.running.json"
# Files only a fit writes: one of them without a checkpoint or a summary marks a failed start.
FIT_CONFIG_FILES = ("config.yaml", "config.resume.yaml", "trained_ids.txt", "trained_ids.json", "wandb_run_id.txt")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunOptions:
    """Where a run writes its outputs.

    Args:
        root: folder holding all studies.
        study: study name (first folder level), e.g. quickstart, tckr, cvae.
        name: run name (second level); default the model class name in lower case.
        if_exists: what `fit` does when the run folder already holds a fit: 'error' stops with a message,
            'resume' continues from checkpoints/last.ckpt (or starts fresh when there is none yet). Either way a
            failed start (a config but no checkpoint) is moved aside to ``failed-start-N/`` and the fit starts fresh.
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


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The ``*.ckpt`` files in ``run_dir/checkpoints``."""
    ckpts = run_dir / CHECKPOINT_DIR
    return sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []


def holds_fit(run_dir: Path) -> bool:
    """Whether an earlier fit wrote into ``run_dir`` (its config, any checkpoint or its summary)."""
    return (run_dir / "config.yaml").exists() or bool(checkpoint_files(run_dir)) or (run_dir / FIT_SUMMARY).exists()


def is_failed_start(run_dir: Path) -> bool:
    """A fit's config files (``FIT_CONFIG_FILES``, ``config.resume.N.yaml``) without any checkpoint or summary."""
    if checkpoint_files(run_dir) or (run_dir / FIT_SUMMARY).exists():
        return False
    return any((run_dir / name).exists() for name in FIT_CONFIG_FILES) or any(run_dir.glob("config.resume.*.yaml"))


def move_failed_start(run_dir: Path) -> Path:
    """Move everything in ``run_dir`` except earlier ``failed-start-N/`` folders into the next free one.

    ``config.yaml`` moves last, so until the move is complete the folder still reads as a failed start.
    """
    n = 1
    while True:
        aside = run_dir / f"{FAILED_START}-{n}"
        try:
            aside.mkdir()  # atomic: two movers never share a folder
            break
        except FileExistsError:
            n += 1
    entries = [e for e in run_dir.iterdir() if not re.fullmatch(rf"{FAILED_START}-\d+", e.name)]
    for entry in sorted(entries, key=lambda e: e.name == "config.yaml"):
        entry.rename(aside / entry.name)
    return aside


def mark_running(run_dir: Path) -> None:
    """Write ``fit.running.json`` (host, pid): a fit is running in ``run_dir`` (rank zero, at fit setup)."""
    from tools.files import write_json_atomic

    write_json_atomic(run_dir / RUNNING_MARKER, {"host": socket.gethostname(), "pid": os.getpid()})


def clear_running(run_dir: Path) -> None:
    """Remove this process's ``fit.running.json`` (when its fit ends or fails)."""
    marker = run_dir / RUNNING_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
        marker.unlink(missing_ok=True)


def running_fit(run_dir: Path) -> str | None:
    """Which process ``fit.running.json`` says is fitting in ``run_dir``; None when none is (or it is this one,
    or a process of this host that no longer exists)."""
    marker = run_dir / RUNNING_MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "unreadable marker"
    host, pid = info.get("host"), info.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid() or not _process_alive(pid):
            return None
        return f"pid {pid} on this host"
    return f"pid {pid} on host {host}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_fit(
    run_dir: Path,
    if_exists: str,
    ckpt_path: str | None,
    max_epochs: int | None = None,
    max_steps: int | None = -1,
    max_time: object = None,
) -> str | None:
    """Apply the no-clobber rule for `fit` (module docstring); return the checkpoint to resume from, or None.

    ``max_epochs`` / ``max_steps`` / ``max_time`` are the fit's trainer limits: a resume of a finished run that
    they leave nothing to train is refused.
    """
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    primary = is_primary_process()
    limits = (max_epochs, max_steps, max_time)
    if primary and (running := running_fit(run_dir)):
        marker = run_dir / RUNNING_MARKER
        raise RunExistsError(
            f"{run_dir}: a fit is still running in it ({running}, {marker}); wait for it to end or choose another "
            f"--run.name (if that process is gone, delete {marker} and rerun)"
        )
    if primary and is_failed_start(run_dir):
        aside = move_failed_start(run_dir)
        print(
            f"synthpriv fit: {run_dir} holds a failed start (a config but no checkpoint): moved its files to "
            f"{aside} and starting a fresh fit",
            flush=True,
        )
        return None if ckpt_path in (None, "last") else ckpt_path
    if ckpt_path not in (None, "last"):  # an explicit checkpoint file: Lightning validates it
        own = Path(ckpt_path).resolve().parent == (run_dir / CHECKPOINT_DIR).resolve()
        if primary and holds_fit(run_dir) and not own:
            raise RunExistsError(
                f"{run_dir} already holds a fit, whose checkpoints a fit from {ckpt_path} would overwrite; choose "
                "another --run.name for it (synthpriv never overwrites an earlier run)"
            )
        if own and Path(ckpt_path).is_file():
            _check_finished(run_dir, Path(ckpt_path), *limits)
        return ckpt_path
    if ckpt_path == "last" or if_exists == "resume":
        if last.is_file():
            _check_finished(run_dir, last, *limits)
            return str(last)
        if ckpt_path == "last" and primary:
            raise FileNotFoundError(f"--ckpt_path last: {last} does not exist, so there is nothing to resume")
        if holds_fit(run_dir) and primary:
            raise RunExistsError(
                f"{run_dir} holds an earlier fit without checkpoints/last.ckpt, so it cannot be resumed; "
                "choose another --run.name (or move the folder aside)"
            )
        return None
    if primary and holds_fit(run_dir):
        if (run_dir / FIT_SUMMARY).is_file():
            raise RunExistsError(
                f"{run_dir} already holds a finished fit ({FIT_SUMMARY}); choose another --run.name, or to train "
                "it further resume it with --ckpt_path last and a higher --trainer.max_epochs; synthpriv never "
                "overwrites an earlier run"
            )
        raise RunExistsError(
            f"{run_dir} already holds a fit run. Resume it with --ckpt_path last (or --run.if_exists resume), "
            "or choose another --run.name; synthpriv never overwrites an earlier run"
        )
    return None


def finished_reason(
    run_dir: Path, checkpoint: Path, max_epochs: int | None, max_steps: int | None, max_time: object = None
) -> tuple[str, str, bool] | None:
    """Whether resuming ``run_dir`` from ``checkpoint`` continues a finished fit that has nothing left to train:
    (what was found, what to do, whether to refuse) or None.

    Finished: ``fit_summary.json`` exists and its global step is at least the checkpoint's (the summary describes
    that state, not an earlier one that a crashed resume went past). Nothing left: Lightning's own stop rule
    (``_FitLoop.done``) for the checkpoint's epochs/steps under the new limits (``max_epochs`` None means 1000
    unless ``max_steps`` or ``max_time`` is set): Lightning returns at once from such a fit and still calls
    ``on_fit_end``, with no metrics (not refused: the fit changes nothing). Or an EarlyStopping state in the
    checkpoint that stopped the fit: Lightning would train at least one more epoch (refused).
    """
    summary_path = run_dir / FIT_SUMMARY
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError as err:
        raise ValueError(f"{summary_path} is not valid JSON ({err}); cannot tell whether the run finished") from err
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    step = int(state.get("global_step", 0))
    if not isinstance(summary.get("global_step"), int) or summary["global_step"] < step:
        return None
    epochs = _epochs_done(state)
    steps_limit = -1 if max_steps is None else int(max_steps)
    if max_epochs is None:
        max_epochs = 1000 if steps_limit == -1 and max_time is None else -1
    if steps_limit != -1 and step >= steps_limit:
        return f"already reached --trainer.max_steps {steps_limit}", "raise --trainer.max_steps to train more", False
    if max_epochs != -1 and epochs >= max_epochs:
        hint = "raise --trainer.max_epochs (with --run.allow_changes true if the schedule depends on it) to train more"
        return f"already finished at epoch {epochs}", hint, False
    for key, value in (state.get("callbacks") or {}).items():
        if key.startswith("EarlyStopping") and isinstance(value, dict):
            if value.get("stopping_reason") not in (None, 0) or (value.get("stopped_epoch") or 0) > 0:
                return f"was ended by early stopping at epoch {epochs}", "a resume would stop again", True
    return None


def _check_finished(
    run_dir: Path, checkpoint: Path, max_epochs: int | None, max_steps: int | None, max_time: object
) -> None:
    """Refuse (every rank) or announce (rank zero) a resume of a finished fit that has nothing left to train."""
    reason = finished_reason(run_dir, checkpoint, max_epochs, max_steps, max_time)
    if reason is None:
        return
    what, hint, refuse = reason
    if refuse:
        raise RunExistsError(
            f"{run_dir} {what} ({FIT_SUMMARY}); nothing to resume: {hint}, or choose another --run.name"
        )
    if is_primary_process():
        print(
            f"synthpriv fit: {run_dir} {what} ({FIT_SUMMARY} kept as it is); nothing to train, this fit changes "
            f"nothing: {hint}, or choose another --run.name",
            flush=True,
        )


def _epochs_done(state: dict) -> int:
    """Epochs a checkpoint has finished, as Lightning's fit loop counts them (``epoch_progress.current.processed``)."""
    try:
        return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(state.get("epoch", 0)) + 1


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
