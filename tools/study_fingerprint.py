"""Fingerprints of study steps, upstream detection, explanations of a change, and moving stale outputs aside.

Rules (used by ``tools/study.py``; see its docstring for the study file):

* **Fingerprint** of a step: sha256 over its resolved command line (``step_argv``), the content hash of every
  file it reads as configuration (for YAML/JSON the parsed data, so comments and layout do not count; other
  files byte for byte), and the fingerprints of its upstream steps. Configuration files are the step's
  ``configs`` plus every argument value that names an existing ``.yaml``/``.yml``/``.json``/``.txt`` file that is
  not an output of a step (nor inside a step's output folder). Output files (checkpoints, npz) are never hashed:
  a change upstream reaches a step through the upstream fingerprint.
* **Upstream**: an earlier step is upstream of a step when one of its *anchors* is named as a path in the step's
  *references*, or when the step lists it under ``needs``. Anchors of a step: each output path and each output's
  parent folder, named alone or as the start of a longer path (``runs/q/attack/metrics.json`` is found through
  ``runs/q/attack`` and ``runs/q/attack/roc.png``); each further folder above an output, named exactly (a report
  naming ``runs/q/probe`` reads ``runs/q/probe/test/metrics.json``); for ``fit`` steps, the run folder
  ``<run.root>/<run.study>/<run.name>``. Folders too wide to mean one step never anchor: ``.``, one-part relative
  paths (``data``), the status folder, the working directory and their parents. References of a step: its
  argument values, the text of its configuration files and, for training steps, its own run folder (a ``test``
  or ``predict`` step with ``run.name: teacher`` reads the checkpoints of the ``fit`` step of that run). A path
  is named when it occurs with nothing path-like glued to it: ``runs/q/teacher`` matches
  ``runs/q/teacher/last.ckpt`` and ``./runs/q/teacher`` but not ``runs/q/teacher-test`` nor
  ``old/runs/q/teacher``. Paths are compared as written: a study that names the same folder once relative and
  once absolute needs ``needs``.
* **Moving aside**: ``<path>`` is renamed to ``<path>.stale-1`` (or ``-2``, ... the first free one); nothing is
  deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tools.files import file_sha256

FINGERPRINT_VERSION = 1
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".txt")


def flat_strings(value: Any) -> list[str]:
    """Every string inside a (nested) argument value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in flat_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in flat_strings(v)]
    return []


def _clean(path: str) -> str:
    text = path.strip()
    while text.startswith("./"):
        text = text[2:]
    return text.rstrip("/") or "."


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (as written, after dropping ``./`` and trailing ``/``)."""
    path, folder = _clean(path), _clean(folder)
    return folder == "." or path == folder or path.startswith(folder + "/")


def _broad(folder: str, status_folder: str) -> bool:
    """Folders too wide to tie steps together: ``.``, one-part relative paths, the status folder, its parents."""
    path = Path(folder)
    wide = [status_folder, str(Path(status_folder).resolve()), str(Path.cwd())]
    return folder == "." or (not path.is_absolute() and len(path.parts) < 2) or any(inside(w, folder) for w in wide)


def anchors(outputs: Sequence[str], fit_run_dir: str | None, status_folder: str) -> list[tuple[str, bool]]:
    """``(path, exact)`` pairs that, named by a later step, make this step its upstream (see the module rules)."""
    found = [(_clean(o), False) for o in outputs]
    for output in outputs:
        for depth, folder in enumerate(Path(_clean(output)).parents):
            if not _broad(str(folder), status_folder):
                found.append((str(folder), depth > 0))
    if fit_run_dir:
        found.append((_clean(fit_run_dir), False))
    return list(dict.fromkeys(found))


def names_path(text: str, path: str, exact: bool = False) -> bool:
    """Whether ``text`` names ``path`` with nothing path-like glued to it (``exact``: and nothing below it)."""
    end = r"(?![\w.-]|/[\w.-])" if exact else r"(?![\w.-])"
    return re.search(r"(?<![\w./-])(?:\./)?" + re.escape(_clean(path)) + end, text) is not None


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # a name too long or with a NUL byte is no file
        return False


def config_files(configs: Sequence[str], args: dict[str, Any], output_folders: Iterable[str]) -> list[str]:
    """The step's config files plus the argument values naming an existing config-like file (not an output)."""
    folders = [f for f in output_folders if f != "."]
    found = list(configs)
    for value in flat_strings(args):
        if value.endswith(CONFIG_SUFFIXES) and _is_file(value) and not any(inside(value, f) for f in folders):
            found.append(value)
    return list(dict.fromkeys(found))


def references(args: dict[str, Any], files: Sequence[str], own_run_dir: str | None) -> str:
    """The text in which upstream paths are looked for: argument values, config file texts, own run folder."""
    parts = flat_strings(args) + [Path(f).read_text(errors="replace") for f in files]
    if own_run_dir:
        parts.append(own_run_dir)
    return "\n".join(parts)


def fingerprint(inputs: dict[str, Any]) -> str:
    """sha256 of a step's inputs: ``{"argv": [...], "files": {path: sha256}, "upstream": {name: fingerprint}}``."""
    blob = json.dumps({"version": FINGERPRINT_VERSION, **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def content_sha256(path: str) -> str:
    """sha256 of a file's content: for YAML/JSON the parsed data (comments and layout do not count), else bytes."""
    if path.endswith((".yaml", ".yml", ".json")):
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            return file_sha256(path)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()
    return file_sha256(path)


def hash_files(files: Sequence[str]) -> dict[str, str]:
    """``{path: content_sha256}`` of each file."""
    return {f: content_sha256(f) for f in files}


def _options(argv: Sequence[str]) -> dict[str, list[str]]:
    """``--key value`` pairs of an argv (the command and ``--config`` files left out; repeated keys kept)."""
    pairs: dict[str, list[str]] = {}
    for key, value in zip(argv[1::2], argv[2::2]):
        if key != "--config":
            pairs.setdefault(key, []).append(value)
    return pairs


def explain(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why ``new`` inputs differ from the ``old`` recorded ones, one short phrase per difference."""
    reasons: list[str] = []
    old_argv, new_argv = list(old.get("argv", [])), list(new["argv"])
    if old_argv[:1] != new_argv[:1]:
        reasons.append(f"command {' '.join(old_argv[:1])} -> {new_argv[0]}")
    old_opts, new_opts = _options(old_argv), _options(new_argv)
    for key in dict.fromkeys([*old_opts, *new_opts]):
        before, after = " ".join(old_opts.get(key, [])), " ".join(new_opts.get(key, []))
        if key not in old_opts:
            reasons.append(f"argument {key} {after} added")
        elif key not in new_opts:
            reasons.append(f"argument {key} {before} removed")
        elif before != after:
            reasons.append(f"argument {key} {before} -> {after}")
    old_files, new_files = old.get("files", {}), new["files"]
    for path in dict.fromkeys([*old_files, *new_files]):
        if path not in old_files:
            reasons.append(f"now reads {path}")
        elif path not in new_files:
            reasons.append(f"no longer reads {path}")
        elif old_files[path] != new_files[path]:
            reasons.append(f"{path} changed")
    old_configs = [v for k, v in zip(old_argv[1::2], old_argv[2::2]) if k == "--config"]
    new_configs = [v for k, v in zip(new_argv[1::2], new_argv[2::2]) if k == "--config"]
    if not reasons and old_configs != new_configs:
        reasons.append("config files reordered")
    old_up, new_up = old.get("upstream", {}), new["upstream"]
    for name in dict.fromkeys([*old_up, *new_up]):
        if name not in old_up:
            reasons.append(f"now reads upstream {name}")
        elif name not in new_up:
            reasons.append(f"no longer reads upstream {name}")
        elif old_up[name] != new_up[name]:
            reasons.append(f"upstream {name} changed")
    return reasons or ["fingerprint changed (recorded by another version of the runner)"]


def aside_path(path: Path) -> Path:
    """``<path>.stale-N`` for the first N >= 1 that is free."""
    n = 1
    while (candidate := path.with_name(f"{path.name}.stale-{n}")).exists() or candidate.is_symlink():
        n += 1
    return candidate


def move_aside(path: Path) -> Path:
    """Rename ``path`` (file or folder) to its first free ``.stale-N`` name and return that name."""
    target = aside_path(path)
    path.rename(target)
    return target
