"""`synthpriv run <study.yaml>`: run a study's steps in order; finished steps are skipped, changed ones are caught.

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

Step keys: ``name``, ``command``, ``outputs`` (files that exist once the step is done) are required; ``configs``,
``args``, ``needs`` (names of earlier steps it reads, when the runner cannot see it from the paths) and ``seeds``
are optional. Each step runs as ``python -m cli <command> --config ... --key value ...`` in a fresh process (so
DDP steps work). Training steps get ``--run.study <study>``; fit steps also get ``--run.if_exists resume``, so a
study that crashed mid-fit resumes from that run's last checkpoint.

**Fingerprints.** ``<status_dir>/<study>/study_status.json`` records, per step, its state, its fingerprint (sha256
of its command line, its config files' contents and its upstream steps' fingerprints; rules in
``tools/study_fingerprint.py``), the inputs that went into it (``argv``, ``files``: path -> sha256, ``upstream``:
name -> fingerprint), ``finished`` and the ``upstream_finished`` tokens it was computed from. Before running
anything the runner decides each step's state (``tools/study_plan.py``). When a step is **stale** (its outputs
exist but its fingerprint changed, an upstream step is stale or has to run, or an upstream ran again after it)
the run **stops**, runs nothing and lists each stale step with the reason, e.g.
``teacher: configs/quickstart/teacher.yaml changed`` and ``attack-teacher: upstream teacher changed``. With
``--rerun_stale true`` the stale steps' folders are renamed to ``<folder>.stale-N`` (nothing is deleted) and the
stale steps and every step after them that reads them rerun. Outputs made before fingerprints existed are
adopted as done (with a printed note), so upgrading never forces a rerun. ``--status true`` prints every step as
done / stale / pending / failed and runs nothing.

**Seeds.** ``seeds: [0, 1, 2]`` repeats a step once per seed as ``<name>-seed<s>``; the text ``{seed}`` is
replaced by the seed in its ``outputs``, ``configs``, ``args`` values and ``needs``, and training steps get
``--seed_everything <s>`` unless their args set ``seed_everything``. Every output and, for training steps, the
``run.name`` arg must contain ``{seed}`` (so each seed writes its own files); ``{seed}`` in a step without
``seeds`` is an error. A later step names the per-seed folders explicitly (e.g. a privacy report entry with
``attack_dir: [runs/q/attack-seed0, runs/q/attack-seed1]``), and ``needs: [attack]`` names every seed of a
seeded step ``attack``::

      - name: teacher
        command: fit
        seeds: [0, 1, 2]
        configs: [configs/trainer/cpu.yaml, configs/quickstart/teacher.yaml]
        args: {run.name: "teacher-seed{seed}"}
        outputs: ["runs/quickstart/teacher-seed{seed}/fit_summary.json"]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tools.files import write_json_atomic
from tools.study_fingerprint import flat_strings, move_aside
from tools.study_plan import (
    RERUN_STATES,
    TRAINING_COMMANDS,
    Planned,
    Step,
    aside_targets,
    describe,
    now_token,
    plan_steps,
    step_argv,
)

__all__ = ["TRAINING_COMMANDS", "Step", "load_study", "run_study", "step_argv"]
STEP_KEYS = ("name", "command", "outputs", "configs", "args", "needs", "seeds")
SEED = "{seed}"


def _substitute(value: Any, seed: int) -> Any:
    if isinstance(value, str):
        return value.replace(SEED, str(seed))
    if isinstance(value, dict):
        return {k: _substitute(v, seed) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, seed) for v in value]
    return value


def _strings(raw: dict[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of strings; found {value!r}")
    return [str(v) for v in value]


def _expand(raw: dict[str, Any], where: str) -> list[Step]:
    """One step, or one per seed (see the module docstring)."""
    name, command = str(raw["name"]), str(raw["command"])
    outputs, configs = _strings(raw, "outputs", where), _strings(raw, "configs", where)
    needs, args = _strings(raw, "needs", where), raw.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}: 'args' must be a mapping; found {type(args).__name__}")
    seeds = raw.get("seeds")
    if seeds is None:
        places = {"outputs": outputs, "configs": configs, "needs": needs, "args": flat_strings(args)}
        used = [key for key, texts in places.items() if any(SEED in t for t in texts)]
        if used:
            raise ValueError(f"{where}: uses {SEED} in {', '.join(used)} but has no 'seeds' list")
        return [Step(name, command, outputs, configs, dict(args), needs)]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"{where}: 'seeds' must be a non-empty list of distinct integers; found {seeds!r}")
    if not all(SEED in o for o in outputs):
        raise ValueError(f"{where}: has seeds, so every output must contain {SEED} (each seed writes its own files)")
    if command in TRAINING_COMMANDS and SEED not in str(args.get("run.name", "")):
        raise ValueError(f"{where}: has seeds, so args 'run.name' must contain {SEED} (one run folder per seed)")
    steps = []
    for seed in seeds:
        seeded = _substitute(dict(args), seed)
        if command in TRAINING_COMMANDS:
            seeded.setdefault("seed_everything", seed)
        sub = [_substitute(v, seed) for v in (outputs, configs, needs)]
        steps.append(Step(f"{name}-seed{seed}", command, sub[0], sub[1], seeded, sub[2], seed))
    return steps


def load_study(path: Path) -> tuple[str, list[Step]]:
    """Read and check a study file; seeded steps come back expanded, ``needs`` resolved to step names."""
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"{path}: expected a mapping with 'study' and a non-empty list 'steps'")
    study = str(data.get("study") or path.stem)
    steps: list[Step] = []
    groups: dict[str, list[str]] = {}  # written name -> step names (several for a seeded step)
    for k, raw in enumerate(data["steps"]):
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: steps[{k}] must be a mapping; found {type(raw).__name__}")
        where = f"{path}: step {raw['name']!r}" if raw.get("name") else f"{path}: steps[{k}]"
        unknown = set(raw) - set(STEP_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {', '.join(STEP_KEYS)}")
        for key in ("name", "command", "outputs"):
            if not raw.get(key):
                raise ValueError(f"{where} needs '{key}' (outputs: files that exist once the step is done)")
        expanded = _expand(raw, where)
        for step in expanded:
            if step.name in groups or any(step.name in names for names in groups.values()):
                raise ValueError(f"{where}: two steps are named {step.name!r}")
            resolved = []
            for need in step.needs:
                if need not in groups:
                    raise ValueError(f"{where}: needs {need!r}, which names no earlier step")
                resolved += groups[need]
            step.needs = list(dict.fromkeys(resolved))
            for config in step.configs:
                if not Path(config).is_file():
                    raise FileNotFoundError(f"{where} names config {config}, which does not exist")
        groups[str(raw["name"])] = [s.name for s in expanded]
        groups.update({s.name: [s.name] for s in expanded if s.name != raw["name"]})
        steps += expanded
    return study, steps


def _stop_message(study: str, stale: list[Planned]) -> str:
    lines = [f"[{study}] {len(stale)} step(s) are stale (their inputs changed since they ran); nothing was run:"]
    lines += [f"  {p.step.name}: {'; '.join(p.reasons)}" for p in stale]
    lines.append(
        "Rerun with --rerun_stale true to move their folders aside (to <folder>.stale-N) and rerun them and the "
        "steps after them that read them; --status true lists every step."
    )
    return "\n".join(lines)


def run_study(
    study_file: str,
    only: list[str] | None = None,
    dry_run: bool = False,
    status_dir: str = "runs",
    status: bool = False,
    rerun_stale: bool = False,
) -> None:
    """Run a study's steps in order; a finished step is skipped, a changed (stale) one stops the run.

    Args:
        study_file: the study YAML.
        only: run only these step names (a seeded step's name selects all its seeds).
        dry_run: print what would run (and what --rerun_stale would move aside) without doing it.
        status_dir: folder under which <study>/study_status.json records each step's state and fingerprint.
        status: print every step as done / stale / pending / failed (with the reason) and run nothing.
        rerun_stale: move each stale step's folders aside to <folder>.stale-N and rerun the stale steps and
            everything downstream, instead of stopping.
    """
    path = Path(study_file)
    study, steps = load_study(path)
    groups = {s.name: [s.name] for s in steps}
    for s in steps:
        if s.seed is not None:
            groups.setdefault(s.name.removesuffix(f"-seed{s.seed}"), []).append(s.name)
    for name in only or []:
        if name not in groups:
            raise ValueError(f"--only {name!r}: no such step in {path}; steps are {sorted(groups)}")
    selected = {n for name in only for n in groups[name]} if only else {s.name for s in steps}
    status_path = Path(status_dir) / study / "study_status.json"
    records: dict[str, Any] = json.loads(status_path.read_text()) if status_path.is_file() else {}
    planned = plan_steps(study, steps, records, str(status_path.parent), selected)
    if status:
        for item in planned:
            if item.step.name in selected:
                print(f"[{study}] {describe(item)}", flush=True)
        return
    chosen = [p for p in planned if p.step.name in selected]
    stale = [p for p in chosen if p.state == "stale"]
    if stale and not rerun_stale:
        raise SystemExit(_stop_message(study, stale))
    protected = [status_path, Path.cwd(), path] + [Path(c) for s in steps for c in s.configs]
    rerun = {p.step.name for p in chosen if p.state in RERUN_STATES}
    moved: dict[str, list[str]] = {}
    for name, targets in aside_targets(planned, rerun, protected).items():
        for target in (t for t in targets if t.exists()):
            if dry_run:
                print(f"[{study}] would move {target} aside (stale {name})", flush=True)
                continue
            moved.setdefault(name, []).append(str(move_aside(target)))
            print(f"[{study}] stale {name}: moved {target} aside to {moved[name][-1]}", flush=True)
    by_name = {p.step.name: p for p in planned}

    def save(item: Planned, state: str, **extra: Any) -> None:
        upstream = {u: by_name[u].finished for u in item.upstream if by_name[u].finished}
        records[item.step.name] = {
            "state": state,
            **extra,
            "fingerprint": item.fingerprint,
            "inputs": item.inputs,
            "upstream_finished": upstream,
        }
        if not dry_run:
            write_json_atomic(status_path, records)

    for item in chosen:
        step, argv = item.step, item.argv
        if item.state == "adopted":
            print(f"[{study}] skip {step.name}: outputs exist and predate fingerprints; recorded as done", flush=True)
            save(item, "done", finished=item.finished, adopted=True)
            continue
        if item.state == "done":
            print(f"[{study}] skip {step.name}: outputs exist ({', '.join(step.outputs)})", flush=True)
            continue
        why = f" ({item.state}: {'; '.join(item.reasons)})" if item.state == "stale" else ""
        print(f"[{study}] run  {step.name}{why}: synthpriv {' '.join(argv)}", flush=True)
        if dry_run:
            continue
        start = time.time()
        result = subprocess.run([sys.executable, "-m", "cli", *argv], check=False)
        elapsed = round(time.time() - start, 1)
        aside = {"moved_aside": moved[step.name]} if step.name in moved else {}
        if result.returncode != 0:
            save(item, "failed", returncode=result.returncode, seconds=elapsed, **aside)
            raise SystemExit(f"[{study}] step {step.name!r} failed (exit {result.returncode}); rerun to resume")
        missing = [o for o in step.outputs if not Path(o).exists()]
        if missing:
            save(item, "incomplete", seconds=elapsed, missing=missing, **aside)
            raise SystemExit(f"[{study}] step {step.name!r} finished but did not write {missing}; check its outputs")
        item.finished = now_token()
        save(item, "done", seconds=elapsed, finished=item.finished, **aside)
    print(f"[{study}] all steps done", flush=True)
