"""Inputs of `privacy-report` and `feature-report`, checked where they enter, and their Markdown formatting.

Rules shared by both reports (every violation is a ``ValueError`` / ``FileNotFoundError`` whose message names
the entry, the key, what was expected and what was found, so `synthpriv` ends in one ``synthpriv: error:`` line):

- **Paths.** A relative input path (``attack_dir``, ``test_metrics``, ``probe_run``, ...) is looked up first
  against the working directory (the study configs name ``runs/<study>/...`` from the repository root), then
  against the folder of the config file it was written in; the first that exists is used. If neither exists
  the entry is refused naming both candidates. An absolute path is used as it is. Outputs (``out``) are
  relative to the working directory.
- **Accuracy** is a fraction in [0, 1] (what every ``metrics.json`` holds): 0.85 means 85 %. A percentage
  (85), a negative value, NaN or a non-number is refused.
- **Attack folders** are those of ``synthpriv attack`` in format 2: ``metrics.json`` with ``"format": 2``, the
  attack's AUC and TPRs with 95 % intervals, ``unsupported_fprs``, and ``roc.npz`` with ``<attack>_fpr`` and
  ``<attack>_tpr``. An older folder (no format 2, no intervals) is refused: rerun `synthpriv attack`.
- **Unsupported TPR.** A TPR at an FPR needs at least 1/FPR non-members (1,000 for 0.1 %); with fewer it is
  shown as ``unsupported (n=<non-members>)`` and flagged ``..._unsupported: true`` in the JSON, never printed as
  a figure.
- **Seeds.** An attack entry may list one folder per seed; figures are then the mean ± sample standard
  deviation (ddof=1) over the seeds, with every seed's own figures and intervals in the JSON.
- **Markdown.** ``|`` in labels and titles is escaped as ``\\|`` and line breaks become spaces, so a label
  cannot break a table row.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
from jsonargparse.typing import path_type

from privacy.metrics import supports_fpr  # the attack's own rule, so reports and metrics.json agree

# A path from a config file: jsonargparse records the config file's folder with it (``.cwd``) and keeps the
# text as written (``.relative``); ``resolve_input`` applies the lookup rule above. From Python, a str works.
ConfigPath: TypeAlias = path_type("", docstring="path; relative: working directory first, then the config's folder")
AttackName = Literal["online", "offline", "global", "rmia"]
ATTACK_LABELS = {"online": "LiRA online", "offline": "LiRA offline", "global": "global threshold", "rmia": "RMIA"}
ATTACK_FORMAT = 2
REPORT_FPRS = (0.001, 0.01)  # the TPR columns: 0.1 % and 1 % FPR
NO_ACCURACY = "none"


def tpr_key(fpr: float) -> str:
    """``tpr@0.001``: the attack's key for the TPR at ``fpr`` (``f"{fpr:g}"``)."""
    return f"tpr@{fpr:g}"


def pct_key(fpr: float) -> str:
    """``tpr_at_0.1pct_fpr``: the reports' key stem for the TPR at ``fpr`` (FPR written in percent)."""
    return f"tpr_at_{100 * fpr:g}pct_fpr"


# ---- paths ------------------------------------------------------------------------------------------------
def resolve_input(value: str | os.PathLike[str], what: str, kind: Literal["file", "dir"] = "dir") -> Path:
    """The existing file/folder ``value`` names (rule in the module docstring); ``what`` names the key."""
    text = str(getattr(value, "relative", value))
    if not text.strip():
        raise ValueError(f"{what}: expected a path; found an empty string")
    written = Path(text).expanduser()
    candidates = [written] if written.is_absolute() else [Path.cwd() / written]
    config_dir = getattr(value, "cwd", None)  # jsonargparse's Path: the config's folder (str)
    config_dir = config_dir if isinstance(config_dir, str) else None  # pathlib.Path.cwd is a method
    if not written.is_absolute() and config_dir and Path(config_dir).resolve() != Path.cwd().resolve():
        candidates.append(Path(config_dir) / written)
    for candidate in candidates:
        if candidate.is_dir() if kind == "dir" else candidate.is_file():
            return candidate
    noun = "folder" if kind == "dir" else "file"
    if len(candidates) == 1:
        raise FileNotFoundError(f"{what}: {candidates[0]} is not an existing {noun}")
    raise FileNotFoundError(
        f"{what}: {text} is not an existing {noun} relative to the working directory ({candidates[0]}) "
        f"nor to the config file's folder ({candidates[1]})"
    )


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object (mapping); anything else is refused naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object; found {type(data).__name__}")
    return data


# ---- numbers ----------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def check_fraction(value: Any, what: str, example: str = "0.85 for 85 %") -> float:
    """``value`` as a float in [0, 1]; a percentage, NaN, infinity or a non-number is refused."""
    number = _number(value)
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        found = f"{value!r}" if number is None else f"{value:g}" if math.isfinite(number) else str(number)
        raise ValueError(f"{what} must be a fraction in [0, 1] (e.g. {example}); found {found}")
    return number


def check_interval(value: Any, what: str) -> tuple[float, float]:
    """A 95 % interval ``[low, high]`` of fractions with low <= high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{what} must be a [low, high] pair; found {value!r}")
    low, high = (check_fraction(v, what, "[0.58, 0.62]") for v in value)
    if low > high:
        raise ValueError(f"{what} must have low <= high; found {value!r}")
    return low, high


# ---- attack folders ---------------------------------------------------------------------------------------
def read_attack(folder: Path, attack: str, what: str) -> dict[str, Any]:
    """One attack's figures from a format-2 attack folder, checked, in percent.

    Returns ``auc_mia_pct``, ``auc_mia_ci95_pct``, for each of ``REPORT_FPRS`` ``<pct_key>_pct``,
    ``<pct_key>_ci95_pct`` and ``<pct_key>_unsupported``, ``members``, ``non_members``, ``shadows``,
    ``variance``, ``leave_one_out``, ``interval_method``, ``target_checkpoint`` and ``curve`` (fpr, tpr arrays).
    """
    path = folder / "metrics.json"
    record = read_json_object(path, f"{what}: attack metrics")
    if record.get("format") != ATTACK_FORMAT:
        found = "no 'format'" if "format" not in record else f"format {record['format']!r}"
        raise ValueError(
            f"{what}: {path} has {found}, not format {ATTACK_FORMAT} with 95 % intervals (written by an older "
            "synthpriv); rerun `synthpriv attack` with the same arguments, which recomputes such folders"
        )
    metrics_all = record.get("metrics")
    if not isinstance(metrics_all, dict) or not metrics_all:
        raise ValueError(f"{what}: {path} must hold a 'metrics' object with one entry per attack")
    if attack not in metrics_all:
        raise ValueError(f"{what}: {path} has no {attack!r} attack (has {sorted(metrics_all)})")
    metrics = metrics_all[attack]
    if not isinstance(metrics, dict):
        raise ValueError(f"{what}: {path} metrics[{attack!r}] must be an object; found {type(metrics).__name__}")
    intervals = record.get("intervals")
    if not isinstance(intervals, dict) or not isinstance(intervals.get("method"), str):
        raise ValueError(f"{what}: {path} has no 'intervals' record with a 'method' (how the 95 % intervals were made)")
    key = f"{what}: {path} metrics[{attack!r}]"
    for name in ("auc", "auc_ci95", "non_members", "members"):
        if name not in metrics:
            raise ValueError(f"{key} has no {name!r} (keys {sorted(metrics)[:10]})")
    non_members = _count(metrics["non_members"], f"{key}['non_members']")
    unsupported_listed = metrics.get("unsupported_fprs") or []
    if not isinstance(unsupported_listed, list):
        raise ValueError(f"{key}['unsupported_fprs'] must be a list of FPRs; found {unsupported_listed!r}")
    figures: dict[str, Any] = {
        "auc_mia_pct": 100 * check_fraction(metrics["auc"], f"{key}['auc']", "0.6"),
        "auc_mia_ci95_pct": [100 * v for v in check_interval(metrics["auc_ci95"], f"{key}['auc_ci95']")],
    }
    for fpr in REPORT_FPRS:
        name, stem = tpr_key(fpr), pct_key(fpr)
        if name not in metrics:
            raise ValueError(f"{key} has no {name!r} (keys {sorted(metrics)[:10]})")
        value = metrics[name]
        listed = any(_number(u) is not None and math.isclose(float(u), fpr) for u in unsupported_listed)
        unsupported = value is None or listed or not supports_fpr(non_members, fpr)
        figures[f"{stem}_unsupported"] = unsupported
        if unsupported:
            figures[f"{stem}_pct"] = figures[f"{stem}_ci95_pct"] = None
            continue
        figures[f"{stem}_pct"] = 100 * check_fraction(value, f"{key}[{name!r}]", "0.21")
        ci = check_interval(metrics.get(f"{name}_ci95"), f"{key}[{name + '_ci95'!r}]")
        figures[f"{stem}_ci95_pct"] = [100 * v for v in ci]
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    figures.update(
        members=_count(metrics["members"], f"{key}['members']"),
        non_members=non_members,
        shadows=record.get("shadows"),
        variance=settings.get("variance"),
        setting=_setting(attack, settings),
        leave_one_out="targets" in metrics,
        interval_method=intervals["method"],
        interval_resamples=intervals.get("resamples"),
        interval_seed=intervals.get("seed"),
        target_checkpoint=record.get("target_checkpoint"),
        curve=_roc(folder, attack, what),
    )
    return figures


def _setting(attack: str, settings: dict[str, Any]) -> str | None:
    """The attack's main setting for the table: LiRA's variance, RMIA's gamma and online/offline a."""
    rmia = settings.get("rmia")
    if attack == "rmia" and isinstance(rmia, dict):
        mode = "online" if rmia.get("offline_a") is None else f"offline a={rmia['offline_a']:g}"
        return f"gamma={rmia.get('gamma', 1.0):g}, {mode}"
    variance = settings.get("variance")
    return None if variance is None else str(variance)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive whole number; found {value!r}")
    return int(value)


def _roc(folder: Path, attack: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / "roc.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (the attack folder is incomplete; rerun the attack)")
    try:
        roc = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{what}: {path} is not a readable .npz file ({err})") from None
    if not hasattr(roc, "files"):  # a bare .npy array under the .npz name
        raise ValueError(f"{what}: {path} is not an .npz archive (found one {type(roc).__name__})")
    with roc:
        keys = sorted(roc.files)
        if f"{attack}_fpr" not in keys or f"{attack}_tpr" not in keys:
            raise ValueError(f"{what}: {path} has no {attack}_fpr / {attack}_tpr (has {keys})")
        try:
            fpr, tpr = np.asarray(roc[f"{attack}_fpr"], float), np.asarray(roc[f"{attack}_tpr"], float)
        except (OSError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"{what}: {path} {attack}_fpr / {attack}_tpr are not numeric arrays ({err})") from None
    if (
        fpr.ndim != 1
        or fpr.shape != tpr.shape
        or fpr.size < 2
        or not (np.isfinite(fpr).all() and np.isfinite(tpr).all())
    ):
        raise ValueError(
            f"{what}: {path} {attack}_fpr / {attack}_tpr must be two finite 1-D arrays of one length >= 2; "
            f"found shapes {fpr.shape} and {tpr.shape}"
        )
    return fpr, tpr


# ---- seeds ------------------------------------------------------------------------------------------------
def as_list(value: Any) -> list[Any]:
    """``value`` as a list (a single value becomes a one-element list)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) over seeds; None if any seed has no figure."""
    if any(v is None for v in values):
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else 0.0)


def aggregate_seeds(seeds: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """One row from per-seed rows: ``keys`` as mean with ``<key>_std`` (sample std, ddof=1); a TPR is
    unsupported if it is for any seed; the attack's settings from the first seed; ``per_seed`` keeps them all.
    A single seed is returned as it is (with its 95 % intervals)."""
    if len(seeds) == 1:
        return {**seeds[0], "seeds": 1}
    row: dict[str, Any] = {"seeds": len(seeds)}
    for key in keys:
        row[key], row[f"{key}_std"] = mean_std([s[key] for s in seeds])
    for fpr in REPORT_FPRS:
        row[f"{pct_key(fpr)}_unsupported"] = any(s[f"{pct_key(fpr)}_unsupported"] for s in seeds)
    for key in ("shadows", "variance", "setting", "members", "leave_one_out", "interval_method"):
        row[key] = seeds[0][key]
    row["non_members"] = min(s["non_members"] for s in seeds)
    row["attack_dir"] = [s["attack_dir"] for s in seeds]
    row["per_seed"] = seeds
    return row


LIRA_KEYS = ("auc_mia_pct", *(f"{pct_key(f)}_pct" for f in REPORT_FPRS))


def attack_figures(folders: Any, attack: str, what: str) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """An attack's figures from one folder or a list of folders (one per seed), aggregated, and the first
    seed's ROC curve. ``folders``: a path or list of paths as written in the config (resolved here)."""
    if attack not in ATTACK_LABELS:
        raise ValueError(f"{what}: attack must be one of {sorted(ATTACK_LABELS)}; found {attack!r}")
    seeds = []
    for value in as_list(folders):
        folder = resolve_input(value, what)
        seeds.append({"attack_dir": str(folder), **read_attack(folder, attack, what)})
    if not seeds:
        raise ValueError(f"{what}: lists no folders")
    curve = seeds[0].pop("curve")
    for seed in seeds[1:]:
        seed.pop("curve")
    return aggregate_seeds(seeds, LIRA_KEYS), curve


# ---- Markdown ---------------------------------------------------------------------------------------------
def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell or heading: ``|`` -> ``\\|``, line breaks -> spaces."""
    return " ".join(str(text).replace("|", "\\|").splitlines())


def fmt(value: float | None, digits: int = 2) -> str:
    """A figure, or ``–`` when there is none (an entry that opted out of accuracy)."""
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_ci(value: float | None, ci: list[float] | None, digits: int = 2) -> str:
    """``60.00 [58.81, 61.22]``: a figure with its 95 % interval."""
    if value is None:
        return "–"
    return fmt(value, digits) if ci is None else f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_mean_std(mean: float | None, std: float | None, n: int, digits: int = 2) -> str:
    """``62.00 ± 2.00 (n=3)``: mean and sample std over ``n`` seeds."""
    return "–" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def fmt_unsupported(non_members: int) -> str:
    """The cell of a TPR the non-members cannot support."""
    return f"unsupported (n={non_members})"


def figure_cell(row: dict[str, Any] | None, key: str, ci_key: str | None = None) -> str:
    """A row's figure: ``value [low, high]`` for one seed, ``mean ± std (n=S)`` for S seeds, ``–`` if none."""
    if not row:
        return "–"
    if row.get("seeds", 1) > 1:
        return fmt_mean_std(row[key], row.get(f"{key}_std"), row["seeds"])
    return fmt_ci(row[key], row.get(ci_key) if ci_key else None)


def tpr_cell(row: dict[str, Any] | None, fpr: float) -> str:
    """A TPR cell: as ``figure_cell``, or ``unsupported (n=<non-members>)``."""
    if not row:
        return "–"
    stem = pct_key(fpr)
    if row[f"{stem}_unsupported"]:
        return fmt_unsupported(row["non_members"])
    return figure_cell(row, f"{stem}_pct", f"{stem}_ci95_pct")


def interval_legend(rows: list[dict[str, Any] | None]) -> list[str]:
    """Legend lines for the intervals, unsupported TPRs and seeds of the attack rows shown."""
    rows = [r for r in rows if r]
    if not rows:
        return []
    methods = sorted({r["interval_method"] for r in rows})
    lines = [
        f"[ ]: 95 % intervals computed by `synthpriv attack`: {'; '.join(methods)}.",
        "unsupported (n=N): the attack had N non-members, fewer than 1/FPR (1,000 for 0.1 % FPR, 100 for 1 %), "
        "so no threshold reaches that FPR; no figure is given (JSON: `..._unsupported: true`).",
    ]
    if any(r.get("seeds", 1) > 1 for r in rows):
        lines.append(
            "± (n=S): mean ± sample standard deviation (ddof=1) over S seeds, one attack folder each; every "
            "seed's figures and 95 % intervals are in the JSON (per_seed); ROC figures show the first seed."
        )
    if any(r["leave_one_out"] for r in rows):
        lines.append("Leave-one-out attacks (no target): figures are means over the shadows taken in turn as target.")
    return lines
