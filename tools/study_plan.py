"""The state of each study step (done / stale / pending / failed) and the folders a rerun of stale steps moves aside.

A step's state, decided in study order from its outputs on disk and its record in ``study_status.json``:

* ``pending``: nothing of it is on disk (no output; for ``fit``, no run folder), or it is partly there with the
  recorded fingerprint (a crash: the rerun resumes); ``failed`` is the same after a failed or incomplete run.
* ``stale``: something of it is on disk but an upstream step will run first (it is stale or pending), or its
  fingerprint differs from the recorded one, or an upstream step finished again after it ran.
* ``done``: every output exists, the fingerprint matches and no upstream ran again since.
* ``adopted``: every output exists but the record has no fingerprint (written before fingerprints, or by
  another study sharing the output, e.g. ``data/animal-mnist``): it counts as done and is recorded with the
  current fingerprint, so upgrading the runner never forces a rerun of finished work.

Moving a stale step aside (``--rerun_stale true``): each output's parent folder and, for ``fit``, its run folder
is renamed to ``<folder>.stale-N`` when every step with an output inside it reruns too and the folder holds
neither the status file, the working directory, the study file nor a config file; otherwise the step's own
output files are moved one by one. A ``fit`` step's run folder must move (or the fit would resume from the
stale checkpoint): when it cannot, the runner stops and says which steps block it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tools.study_fingerprint import anchors, config_files, explain, fingerprint, hash_files, names_path, references

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
RERUN_STATES = ("stale", "pending", "failed")


@dataclass
class Step:
    """One step of a study (after seed expansion); ``needs`` holds resolved step names."""

    name: str
    command: str
    outputs: list[str]
    configs: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Planned:
    """A step with its inputs, fingerprint, state and the reasons for that state."""

    step: Step
    argv: list[str]
    inputs: dict[str, Any]
    fingerprint: str
    run_dir: str | None
    upstream: list[str]
    state: str = "pending"
    reasons: list[str] = field(default_factory=list)
    finished: str | None = None  # token of the run that produced the outputs (compared by downstream steps)


def step_argv(study: str, step: Step) -> list[str]:
    """Command-line arguments of a step (after ``python -m cli``)."""
    argv = [step.command]
    for config in step.configs:
        argv += ["--config", config]
    args = dict(step.args)
    if step.command in TRAINING_COMMANDS:
        args.setdefault("run.study", study)
    if step.command == "fit":
        args.setdefault("run.if_exists", "resume")
    for key, value in args.items():
        text = value if isinstance(value, str) else json.dumps(value)
        argv += [f"--{key}", text]
    return argv


def run_folder(study: str, step: Step) -> str | None:
    """``<run.root>/<run.study>/<run.name>`` of a training step (args over configs, last config wins), else None."""
    if step.command not in TRAINING_COMMANDS:
        return None
    run: dict[str, Any] = {"root": "runs", "study": study, "name": None}
    for config in step.configs:
        data = yaml.safe_load(Path(config).read_text())
        if isinstance(data, dict) and isinstance(data.get("run"), dict):
            run.update({k: v for k, v in data["run"].items() if k in run})
    if isinstance(step.args.get("run"), dict):
        run.update({k: v for k, v in step.args["run"].items() if k in run})
    run.update({k: step.args[f"run.{k}"] for k in ("root", "study", "name") if f"run.{k}" in step.args})
    return None if not run["name"] else str(Path(str(run["root"])) / str(run["study"]) / str(run["name"]))


def now_token() -> str:
    """A finish token: the local time to the microsecond."""
    return datetime.now().isoformat(timespec="microseconds")


def plan_steps(
    study: str, steps: list[Step], records: dict[str, Any], status_folder: str, selected: set[str]
) -> list[Planned]:
    """Inputs, fingerprint and state of every step, in study order (``selected``: the steps that may run)."""
    run_dirs = {s.name: run_folder(study, s) for s in steps}
    anchor_map = {
        s.name: anchors(s.outputs, run_dirs[s.name] if s.command == "fit" else None, status_folder) for s in steps
    }
    all_anchors = [a for found in anchor_map.values() for a, _ in found]
    planned: dict[str, Planned] = {}
    for k, step in enumerate(steps):
        files = config_files(step.configs, step.args, all_anchors)
        text = references(step.args, files, run_dirs[step.name])
        upstream = [
            s.name
            for s in steps[:k]
            if s.name in step.needs or any(names_path(text, a, exact) for a, exact in anchor_map[s.name])
        ]
        argv = step_argv(study, step)
        inputs = {"argv": argv, "files": hash_files(files), "upstream": {u: planned[u].fingerprint for u in upstream}}
        item = Planned(step, argv, inputs, fingerprint(inputs), run_dirs[step.name], upstream)
        item.state, item.reasons = _state(item, records.get(step.name) or {}, planned, selected)
        record = records.get(step.name) or {}
        item.finished = now_token() if item.state == "adopted" else record.get("finished")
        planned[step.name] = item
    return list(planned.values())


def _state(
    item: Planned, record: dict[str, Any], planned: dict[str, Planned], selected: set[str]
) -> tuple[str, list[str]]:
    step = item.step
    missing = [o for o in step.outputs if not Path(o).exists()]
    trace = len(missing) < len(step.outputs) or (
        step.command == "fit" and item.run_dir is not None and Path(item.run_dir).exists()
    )
    failed = record.get("state") in ("failed", "incomplete")
    if not trace:
        return ("failed", [_failure(record)]) if failed else ("pending", ["not run yet"])
    before = [planned[u] for u in item.upstream if planned[u].state in RERUN_STATES and u in selected]
    if before:
        return "stale", [f"upstream {u.step.name} {'changed' if u.state == 'stale' else 'has to run'}" for u in before]
    if "fingerprint" not in record:
        if not missing:
            return "adopted", ["outputs predate fingerprints (adopted)"]
        return "pending", [f"incomplete (missing {', '.join(missing)}); resumes"]
    if record["fingerprint"] != item.fingerprint:
        return "stale", explain(record.get("inputs") or {}, item.inputs)
    recorded = record.get("upstream_finished") or {}
    again = [u for u in item.upstream if recorded.get(u) and planned[u].finished not in (None, recorded[u])]
    if again:
        return "stale", [f"upstream {u} ran again after it" for u in again]
    if missing:
        return ("failed", [_failure(record)]) if failed else ("pending", [f"missing {', '.join(missing)}; resumes"])
    return "done", []


def _failure(record: dict[str, Any]) -> str:
    if record.get("state") == "incomplete":
        return f"last run did not write {', '.join(record.get('missing', []))}"
    return f"last run failed (exit {record.get('returncode')})"


def describe(item: Planned) -> str:
    """One status line: ``name  state[: reasons]``."""
    state = "done" if item.state == "adopted" else item.state
    reasons = "; ".join(item.reasons)
    return f"{item.step.name:<24} {state}{': ' + reasons if reasons else ''}"


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def aside_targets(planned: list[Planned], rerun: set[str], protected: list[Path]) -> dict[str, list[Path]]:
    """What each stale step in ``rerun`` moves aside (see the module rules); nested targets are dropped."""
    on_disk = {p.step.name: [Path(o).resolve() for o in p.step.outputs if Path(o).exists()] for p in planned}
    keep = [q.resolve() for q in protected]

    def blockers(folder: Path) -> list[str]:
        return [name for name, outs in on_disk.items() if name not in rerun and any(_under(o, folder) for o in outs)]

    def movable(folder: Path) -> bool:
        return folder.is_dir() and not any(_under(q, folder) for q in keep) and not blockers(folder)

    targets: dict[str, list[Path]] = {}
    for item in (p for p in planned if p.state == "stale" and p.step.name in rerun):
        fit_dir = Path(item.run_dir).resolve() if item.step.command == "fit" and item.run_dir else None
        folders = [Path(o).resolve().parent for o in item.step.outputs] + ([fit_dir] if fit_dir else [])
        chosen = [f for f in dict.fromkeys(folders) if movable(f)]
        if fit_dir and fit_dir.exists() and fit_dir not in chosen:
            raise SystemExit(
                f"cannot move {item.run_dir} aside for stale step {item.step.name!r}: it also holds outputs of "
                f"{blockers(fit_dir) or 'files the runner must keep'}, which would not rerun (check --only)"
            )
        chosen += [o for o in on_disk[item.step.name] if not any(_under(o, c) for c in chosen)]
        targets[item.step.name] = chosen
    every = [t for found in targets.values() for t in found]
    return {
        name: [t for t in found if not any(t != o and _under(t, o) for o in every)] for name, found in targets.items()
    }
