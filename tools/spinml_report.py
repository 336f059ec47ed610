"""`synthpriv spinml-report`: SpinML's privacy-utility table over (level mix, alpha) classifier runs.

Each entry is one classifier trained on a SpinMLDataModule mix (``alpha`` of ``first_level`` + ``1 - alpha`` of
``second_level``, read from the run's saved config) and tested on the real images (``test/metrics.json``).

* **Accuracy on real** is ``test/acc``; the test set is every image of ``<root>/real/raw`` (SpinMLDataModule's
  test split), so the count of correct images is ``acc x n`` (checked to be an integer) and the 95 % interval is
  Wilson's.
* **Leakage** comes from ``spinml-leakage`` (``leakage.json``) for the mix's levels. MI is the most revealing
  used level's row (the guides of every used level were released; L0 is 0 by construction); SIM (composites vs
  real) and the near-real share are the mix's values: the mean over all (synthetic, real) pairs of a pooled set is
  the count-weighted mean of its levels' SIMs, exactly, and so is the expected near-copy share. Their intervals
  are the count-weighted ends of the levels' intervals (an approximation; the levels' draws are independent).
  Counts are the mix's draws, ``int(alpha * n_first)`` and ``int((1 - alpha) * n_second)``, as the data module.

Written to ``out``: ``privacy_utility.png`` (accuracy against MI and against SIM, with intervals), ``report.md``,
``report.json`` last (atomically), and a W&B run (table + plot) when ``wandb_project`` is set (offline unless
``WANDB_MODE`` says otherwise; online without credentials is refused before any work). A rerun with the same
inputs (file hashes) and settings does nothing; other inputs into the same ``out`` are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from privacy.image_leakage import wilson_interval
from tools.files import file_sha256, finished_record, json_plain, write_json_atomic, write_text_atomic
from tools.report_inputs import ConfigPath, fmt_ci, md_escape, resolve_input
from tools.wandb_check import require_wandb_credentials, wandb_mode

FORMAT = 1
METHOD = (
    "Accuracy on real: test/acc of the run's best-val checkpoint on every real/raw image, Wilson 95 % interval from "
    "the count. MI: the row of the most revealing level the mix draws from (L0 = 0 by construction). SIM (composites "
    "vs real images; 'SIM fg': generated vs real foreground segments, the original's per-object SIM) and the near-real "
    "share: count-weighted means of the mix's levels (exact for an all-pairs mean); intervals: count-weighted ends "
    "of the levels' intervals (approximate). Counts: int(alpha x n_first) and int((1 - alpha) x n_second)."
)


@dataclass
class SpinMLRun:
    """One classifier run.

    Args:
        label: row / point label.
        run_dir: the classifier's run folder (config.yaml or config.test.yaml, test/metrics.json).
    """

    label: str
    run_dir: ConfigPath


def _run_config(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    for name in ("config.test.yaml", "config.yaml"):
        if (run_dir / name).is_file():
            config = yaml.safe_load((run_dir / name).read_text()) or {}
            data = (config.get("data") or {}).get("init_args") or config.get("data") or {}
            return run_dir / name, data
    raise FileNotFoundError(f"spinml-report: {run_dir} has no config.yaml; expected a classifier run folder")


def _mix(data: dict[str, Any], where: Path) -> list[tuple[str, float]]:
    """[(level, share)] of a SpinMLDataModule config, shares > 0 only."""
    if "alpha" not in data or "root" not in data:
        raise ValueError(f"spinml-report: {where} is not a SpinMLDataModule run (no data root / alpha)")
    alpha = float(data["alpha"])
    mix = [(data.get("first_level", "L0_L0"), alpha), (data.get("second_level"), 1.0 - alpha)]
    return [(lv, share) for lv, share in mix if lv is not None and share > 0]


def _accuracy(run_dir: Path, n: int) -> dict[str, Any]:
    path = run_dir / "test" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"spinml-report: {path} is missing; run `synthpriv test` on {run_dir} first")
    acc = json.loads(path.read_text()).get("metrics", {}).get("test/acc")
    if acc is None:
        raise ValueError(f"spinml-report: {path} has no metrics['test/acc']")
    correct = round(acc * n)
    if abs(acc * n - correct) > 1e-3 * max(1, n) or not 0 <= correct <= n:
        raise ValueError(
            f"spinml-report: {path} gives test/acc={acc}, which is no count out of the {n} real test images; "
            "was the run tested on another root?"
        )
    return {"acc": correct / n, "ci95": wilson_interval(correct, n), "correct": correct, "n": n}


def _weighted(levels: dict[str, Any], counts: list[tuple[str, int]], get: Any) -> dict[str, Any]:
    total = sum(c for _, c in counts)
    values = [(get(levels[lv]), c / total) for lv, c in counts]
    if any(v[0] is None for v, _ in values):
        return {"value": None, "ci95": None}
    ci = None
    if all(v[1] is not None for v, _ in values):
        ci = [sum(v[1][k] * w for v, w in values) for k in (0, 1)]
    return {"value": sum(v[0] * w for v, w in values), "ci95": ci}


def _row(entry: SpinMLRun, leakage: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    run_dir = resolve_input(entry.run_dir, f"entries[{entry.label}].run_dir")
    config_path, data = _run_config(run_dir)
    mix = _mix(data, config_path)
    root = Path(str(data["root"]))
    levels = leakage["levels"]
    unknown = [lv for lv, _ in mix if lv not in levels]
    if unknown:
        raise ValueError(f"spinml-report: {entry.label} trains on {unknown}, which leakage.json does not score")
    if Path(leakage["settings"]["root"]).resolve() != root.resolve():
        raise ValueError(
            f"spinml-report: {entry.label} trains on {root}, leakage.json scores {leakage['settings']['root']}"
        )
    from datamodules.spinml_layout import image_files

    n_test = len(image_files(root / "real" / "raw"))
    counts = [(lv, int(share * levels[lv]["images"])) for lv, share in mix]
    counts = [(lv, c) for lv, c in counts if c > 0]
    worst = max((lv for lv, _ in counts), key=lambda lv: levels[lv]["levels"]["foreground"])
    row = {
        "label": entry.label,
        "run_dir": str(run_dir),
        "alpha": float(data["alpha"]),
        "mix": {lv: c for lv, c in counts},
        "accuracy": _accuracy(run_dir, n_test),
        "mi_level": worst,
        "mi": {p: levels[worst]["mi"][p] for p in ("foreground", "background")},
        "sim": _weighted(levels, counts, lambda r: (r["sim"]["image"]["sim"], r["sim"]["image"]["ci95"])),
        "sim_fg": _weighted(
            levels,
            counts,
            lambda r: (r["sim"].get("foreground", {}).get("sim"), r["sim"].get("foreground", {}).get("ci95")),
        ),
        "near_real": _weighted(levels, counts, lambda r: (r["nearest_real"]["share"], r["nearest_real"]["ci95"])),
    }
    return row, [config_path, run_dir / "test" / "metrics.json"]


def spinml_report(
    out: str,
    leakage: ConfigPath,
    entries: list[SpinMLRun],
    title: str = "SpinML privacy-utility",
    wandb_project: str | None = None,
) -> Path:
    """One privacy-utility table over classifier runs (module docstring).

    Args:
        out: output folder (report.json, report.md, privacy_utility.png).
        leakage: leakage.json of `synthpriv spinml-leakage` on the runs' root (or its folder).
        entries: classifier runs, one row each.
        title: report title (also the W&B run name).
        wandb_project: log the table and plot to this W&B project (offline unless WANDB_MODE is online).
    """
    if not entries:
        raise ValueError("spinml-report: entries is empty; give at least one classifier run")
    if len({e.label for e in entries}) != len(entries):
        raise ValueError("spinml-report: two entries share a label")
    if wandb_project:
        require_wandb_credentials("spinml-report")
    try:
        leak_file = resolve_input(leakage, "leakage", kind="file")
    except FileNotFoundError:
        leak_file = resolve_input(leakage, "leakage (leakage.json or its folder)", kind="dir") / "leakage.json"
        if not leak_file.is_file():
            raise FileNotFoundError(f"spinml-report: {leak_file} is missing; run `synthpriv spinml-leakage`") from None
    record_in = json.loads(leak_file.read_text())
    rows, files = [], [leak_file]
    for entry in entries:
        row, used = _row(entry, record_in)
        rows.append(row)
        files += used
    settings = {
        "title": title,
        "entries": [{"label": e.label, "run_dir": r["run_dir"]} for e, r in zip(entries, rows)],
        "inputs_sha256": {str(f): file_sha256(f) for f in files},
    }
    out_dir = Path(out)
    if finished_record(out_dir / "report.json", FORMAT, settings, "a spinml-report"):
        return out_dir
    record = {
        "format": FORMAT,
        "title": title,
        "settings": settings,
        "leakage": {"file": str(leak_file), "embedder": record_in["embedder"], "method": record_in["method"]},
        "method": METHOD,
        "rows": rows,
    }
    scatter(out_dir / "privacy_utility.png", rows, title)
    write_text_atomic(out_dir / "report.md", markdown(record))
    write_json_atomic(out_dir / "report.json", json_plain(record))
    if wandb_project:
        log_wandb(wandb_project, out_dir, title, rows)
    print(f"wrote {out_dir / 'report.md'} ({len(rows)} runs)")
    return out_dir


def markdown(record: dict[str, Any]) -> str:
    """report.md: one row per classifier run."""
    lines = [
        f"# {md_escape(record['title'])}",
        "",
        "| run | mix (images) | accuracy on real | MI fg | MI bg | SIM | SIM fg | near-real share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        mix = ", ".join(f"{lv} ({c})" for lv, c in r["mix"].items())
        acc = r["accuracy"]
        mi = [fmt_ci(r["mi"][p]["mean"], r["mi"][p]["ci95"], 4) for p in ("foreground", "background")]
        lines.append(
            f"| {md_escape(r['label'])} | {mix} | {fmt_ci(100 * acc['acc'], [100 * v for v in acc['ci95']], 1)} % "
            f"({acc['correct']}/{acc['n']}) | {mi[0]} ({r['mi_level']}) | {mi[1]} | "
            f"{fmt_ci(r['sim']['value'], r['sim']['ci95'], 4)} | "
            f"{fmt_ci(r['sim_fg']['value'], r['sim_fg']['ci95'], 4)} | "
            f"{fmt_ci(r['near_real']['value'], r['near_real']['ci95'], 3)} |"
        )
    lines += ["", record["method"], "", "Leakage: " + record["leakage"]["method"]]
    return "\n".join(lines) + "\n"


def scatter(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Accuracy on real (y) against MI (foreground) and against SIM (x; SIM fg where every run has it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools.files import atomic_path

    sim = "sim_fg" if all(r["sim_fg"]["value"] is not None for r in rows) else "sim"
    sim_name = "SIM of foreground segments (cosine)" if sim == "sim_fg" else "SIM of composites (cosine)"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, name in ((axes[0], "mi", "MI (foreground guide, normalised)"), (axes[1], sim, sim_name)):
        for r in rows:
            x = r["mi"]["foreground"]["mean"] if key == "mi" else r[key]["value"]
            xci = r["mi"]["foreground"]["ci95"] if key == "mi" else r[key]["ci95"]
            if x is None:
                continue
            acc, ci = 100 * r["accuracy"]["acc"], [100 * v for v in r["accuracy"]["ci95"]]
            xerr = [[x - xci[0]], [xci[1] - x]] if xci else None
            ax.errorbar(x, acc, yerr=[[acc - ci[0]], [ci[1] - acc]], xerr=xerr, fmt="o", capsize=3)
            ax.annotate(r["label"], (x, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=f"{name}, higher = more leakage", ylabel="accuracy on real images (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def log_wandb(project: str, out_dir: Path, title: str, rows: list[dict[str, Any]]) -> None:
    """One W&B run with the table and the scatter plot."""
    import wandb

    run = wandb.init(project=project, name=title, dir=str(out_dir), job_type="spinml-report", mode=wandb_mode())
    columns = ["run", "alpha", "mix", "accuracy", "acc_low", "acc_high", "mi_fg", "mi_bg", "sim", "sim_fg", "near_real"]
    data = [
        [
            r["label"],
            r["alpha"],
            json.dumps(r["mix"]),
            r["accuracy"]["acc"],
            *r["accuracy"]["ci95"],
            r["mi"]["foreground"]["mean"],
            r["mi"]["background"]["mean"],
            r["sim"]["value"],
            r["sim_fg"]["value"],
            r["near_real"]["value"],
        ]
        for r in rows
    ]
    run.log(
        {
            "spinml/report": wandb.Table(columns=columns, data=data),
            "spinml/privacy_utility": wandb.Image(str(out_dir / "privacy_utility.png")),
        }
    )
    run.finish()
