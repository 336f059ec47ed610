"""`synthpriv run <study.yaml>`: run a study's steps in order, skipping steps whose outputs exist.

A study file::

    study: quickstart
    steps:
      - name: data
        command: data                      # any synthpriv subcommand
        args: {dataset: animal-mnist, out: data/animal-mnist}
        outputs: [data/animal-mnist/manifest.json]
      - name: teacher
        command: fit
        configs: [configs/trainer/cpu.yaml, configs/quickstart/teacher.yaml]
        args: {run.name: teacher}
        outputs: [runs/quickstart/teacher/fit_summary.json]

Each step runs as ``python -m cli <command> --config ... --key value ...`` in a fresh process (so DDP steps
work). Training steps get ``--run.study <study>``; fit steps also get ``--run.if_exists resume``, so a study
that crashed mid-fit resumes from that run's last checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools.files import write_json_atomic

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")


@dataclass
class Step:
    """One step of a study."""

    name: str
    command: str
    outputs: list[str]
    configs: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)


def load_study(path: Path) -> tuple[str, list[Step]]:
    """Read and check a study file."""
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"{path}: expected a mapping with 'study' and a non-empty list 'steps'")
    study = str(data.get("study") or path.stem)
    steps, seen = [], set()
    for k, raw in enumerate(data["steps"]):
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: steps[{k}] must be a mapping; found {type(raw).__name__}")
        unknown = set(raw) - {"name", "command", "outputs", "configs", "args"}
        if unknown:
            raise ValueError(f"{path}: steps[{k}] has unknown keys {sorted(unknown)}")
        for key in ("name", "command", "outputs"):
            if not raw.get(key):
                raise ValueError(f"{path}: steps[{k}] needs '{key}' (outputs: files that exist once the step is done)")
        step = Step(
            name=str(raw["name"]),
            command=str(raw["command"]),
            outputs=[str(o) for o in raw["outputs"]],
            configs=[str(c) for c in raw.get("configs") or []],
            args=dict(raw.get("args") or {}),
        )
        if step.name in seen:
            raise ValueError(f"{path}: two steps are named {step.name!r}")
        seen.add(step.name)
        for config in step.configs:
            if not Path(config).is_file():
                raise FileNotFoundError(f"{path}: step {step.name!r} names config {config}, which does not exist")
        steps.append(step)
    return study, steps


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


def run_study(study_file: str, only: list[str] | None = None, dry_run: bool = False, status_dir: str = "runs") -> None:
    """Run a study's steps in order; a step whose outputs all exist is skipped.

    Args:
        study_file: the study YAML.
        only: run only these step names (their outputs still decide whether they are skipped).
        dry_run: print what would run without running it.
        status_dir: folder under which <study>/study_status.json records each step's outcome.
    """
    path = Path(study_file)
    study, steps = load_study(path)
    names = {s.name for s in steps}
    for name in only or []:
        if name not in names:
            raise ValueError(f"--only {name!r}: no such step in {path}; steps are {sorted(names)}")
    status_path = Path(status_dir) / study / "study_status.json"
    status: dict[str, Any] = json.loads(status_path.read_text()) if status_path.is_file() else {}
    for step in steps:
        if only and step.name not in only:
            continue
        argv = step_argv(study, step)
        if all(Path(o).exists() for o in step.outputs):
            print(f"[{study}] skip {step.name}: outputs exist ({', '.join(step.outputs)})", flush=True)
            status[step.name] = {**status.get(step.name, {}), "state": "done"}
            continue
        print(f"[{study}] run  {step.name}: synthpriv {' '.join(argv)}", flush=True)
        if dry_run:
            continue
        start = time.time()
        result = subprocess.run([sys.executable, "-m", "cli", *argv], check=False)
        elapsed = round(time.time() - start, 1)
        if result.returncode != 0:
            status[step.name] = {"state": "failed", "returncode": result.returncode, "seconds": elapsed}
            write_json_atomic(status_path, status)
            raise SystemExit(f"[{study}] step {step.name!r} failed (exit {result.returncode}); rerun to resume")
        missing = [o for o in step.outputs if not Path(o).exists()]
        if missing:
            status[step.name] = {"state": "incomplete", "seconds": elapsed, "missing": missing}
            write_json_atomic(status_path, status)
            raise SystemExit(f"[{study}] step {step.name!r} finished but did not write {missing}; check its outputs")
        status[step.name] = {"state": "done", "seconds": elapsed}
        write_json_atomic(status_path, status)
    print(f"[{study}] all steps done", flush=True)
