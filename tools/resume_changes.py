"""A resumed fit must run with the options it was trained with, or say that it does not.

Lightning restores the optimizer's settings and the schedule's state from the checkpoint, so a resumed fit with
another ``--model.init_args.lr`` would silently train with the old one, and a raised ``max_epochs`` after a
finished cosine schedule would train at lr 0. So at parse time the new resolved config is compared with the
run's saved one (the newest of ``config.yaml``, ``config.resume.yaml``, ``config.resume.N.yaml`` written before
the checkpoint being resumed) and any difference is refused, listing each key with its old and new value,
unless ``--run.allow_changes true``; then the fit applies them (``recipes.reapply_options``: optimizer settings
and schedule rebuilt from the new options at the current epoch) and states what happens to the schedule.

Keys never compared (``IGNORED_ON_RESUME``), because they cannot change what is trained or are filled in by
synthpriv itself:

- ``ckpt_path``, ``run.if_exists``, ``run.allow_changes``: how the fit resumes; ``run.root``: the run folder was
  found, so it is the same run however the root is spelled;
- ``trainer.logger`` (W&B ids, resume flags and save_dir are set per call), ``trainer.default_root_dir``,
  ``trainer.enable_progress_bar``, ``trainer.enable_model_summary``, ``trainer.log_every_n_steps``: output only;
- ``trainer.callbacks``: callbacks restore their state from the checkpoint (EarlyStopping and ModelCheckpoint
  including their settings), and adding or dropping a writer or a test helper must stay possible;
- ``trainer.max_steps``, ``trainer.max_time``: when to stop, not how to train;
- ``trainer.max_epochs`` too, unless the schedule depends on it: ``model.init_args.scheduler`` cosine, or
  multistep without explicit milestones (then raising it changes the lr of every remaining epoch).

``model.init_args.optimizer`` cannot change even with the override (the checkpoint holds the other optimizer's
state): start a new run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

IGNORED_ON_RESUME = (
    "ckpt_path",
    "run.if_exists",
    "run.allow_changes",
    "run.root",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.callbacks",
    "trainer.max_steps",
    "trainer.max_time",
)
NEVER_CHANGED = ("model.init_args.optimizer",)
_ABSENT = "(absent)"


@dataclass(frozen=True)
class Change:
    """One option whose value differs from the saved config."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


def saved_fit_configs(run_dir: Path) -> list[Path]:
    """The fit configs of a run in the order they were written: config.yaml, config.resume.yaml, .1, .2, ..."""
    found = [run_dir / "config.yaml", run_dir / "config.resume.yaml"]
    numbered = []
    for path in run_dir.glob("config.resume.*.yaml"):
        middle = path.name[len("config.resume.") : -len(".yaml")]
        if middle.isdigit():
            numbered.append((int(middle), path))
    return [p for p in found if p.is_file()] + [p for _, p in sorted(numbered)]


def saved_fit_config(run_dir: Path, ckpt_path: str | None) -> Path | None:
    """The newest saved fit config written no later than the checkpoint (a resume that crashed before its first
    checkpoint does not count), else the newest; None when the run has none."""
    configs = saved_fit_configs(run_dir)
    if not configs:
        return None
    ckpt = Path(ckpt_path) if ckpt_path else None
    if ckpt is not None and ckpt.is_file():
        before = [p for p in configs if p.stat().st_mtime_ns <= ckpt.stat().st_mtime_ns]
        if before:
            return before[-1]
    return configs[-1]


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Differing leaves of two configs (dotted keys; lists compared whole), skipping ``IGNORED_ON_RESUME``."""
    old_flat, new_flat = _flatten(saved), _flatten(new)
    ignored = set(IGNORED_ON_RESUME)
    if not (_schedule_uses_epochs(old_flat) or _schedule_uses_epochs(new_flat)):
        ignored.add("trainer.max_epochs")
    changes = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if any(key == k or key.startswith(k + ".") for k in ignored):
            continue
        old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if old != value:
            changes.append(Change(key, old, value))
    return changes


def check_resume_changes(parser: Any, cfg: Any, run_dir: Path) -> list[Change]:
    """At parse time of a resumed fit: refuse changed options unless ``run.allow_changes``; return the changes.

    ``parser`` is the fit subcommand's parser and ``cfg`` its parsed config (after ``configure_run``, so
    ``cfg.ckpt_path`` is the checkpoint resumed from, or None for a fresh fit, which has nothing to compare).
    """
    ckpt_path = cfg.get("ckpt_path")
    saved_file = saved_fit_config(run_dir, ckpt_path) if ckpt_path else None
    if saved_file is None:
        return []
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{saved_file} is not valid YAML ({err}); cannot compare the resumed fit's options") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{saved_file} holds no config mapping; cannot compare the resumed fit's options")
    new = yaml.safe_load(parser.dump(cfg, skip_none=False, format="yaml"))
    changes = config_changes(saved, new)
    if not changes:
        return []
    listing = "; ".join(str(c) for c in changes)
    fixed = [c for c in changes if c.key in NEVER_CHANGED]
    if fixed:
        raise ValueError(
            f"resuming {run_dir}: {'; '.join(map(str, fixed))} cannot change on resume (the checkpoint holds the "
            "other optimizer's state); start a new run (--run.name)"
        )
    if not cfg.run.allow_changes:
        raise ValueError(
            f"resuming {run_dir} with options that differ from {saved_file}: {listing}. A resume continues the "
            "saved run (its checkpoint restores the optimizer's settings and the schedule, which would override "
            "new ones); resume with the saved options, start a new run (--run.name), or pass --run.allow_changes "
            "true to apply the new options (optimizer settings and schedule are then rebuilt from them at the "
            "current epoch)"
        )
    return changes


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _schedule_uses_epochs(flat: dict[str, Any]) -> bool:
    scheduler = flat.get("model.init_args.scheduler")
    return scheduler == "cosine" or (scheduler == "multistep" and not flat.get("model.init_args.milestones"))


def _show(value: Any) -> str:
    return value if value is _ABSENT else json.dumps(value, default=str)
