"""`synthpriv privacy-report OUT --config report.yaml`: one privacy-utility table and ROC figure over runs.

Each entry names an attack folder written by ``synthpriv attack`` and, for the utility column, the target's
test metrics (found from the attack's target checkpoint, ``<run>/test/metrics.json``, unless given). The table
holds accuracy, AUC_MIA, TPR at 0.1 % and 1 % FPR and TCKR's AOP = accuracy x (50 / AUC_MIA)^2 (percent).
Outputs: ``report.json``, ``report.md`` and ``roc.png`` (every entry's curve, log-log), replaced atomically on
every run since they are views of the attack folders; with ``wandb_project`` also a W&B run (offline unless
WANDB_MODE says otherwise) with the table and the figure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from privacy.metrics import aop, plot_roc
from tools.files import write_json_atomic, write_text_atomic

AttackName = Literal["online", "offline", "global"]


@dataclass
class ReportEntry:
    """One row of the report.

    Args:
        label: row name, e.g. 'teacher (real data)'.
        attack_dir: folder written by `synthpriv attack`.
        attack: which attack's figures fill the row.
        accuracy: the target's test accuracy as a fraction; default read from test_metrics.
        test_metrics: metrics.json holding the accuracy; default ``<target run>/test/metrics.json``.
        accuracy_key: its key; a probe tested at several noise levels logs 'test/sigma0/acc'.
    """

    label: str
    attack_dir: str
    attack: AttackName = "online"
    accuracy: float | None = None
    test_metrics: str | None = None
    accuracy_key: str = "test/acc"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return json.loads(path.read_text())


def _accuracy(entry: ReportEntry, record: dict[str, Any]) -> float | None:
    if entry.accuracy is not None:
        return entry.accuracy
    path = entry.test_metrics
    if path is None and record.get("target_checkpoint"):
        guess = Path(record["target_checkpoint"]).parent.parent / "test" / "metrics.json"
        path = str(guess) if guess.is_file() else None
    if path is None:
        return None
    metrics = _read_json(Path(path), f"entry {entry.label!r} test_metrics")
    flat = metrics.get("metrics", metrics)
    key = entry.accuracy_key
    if key not in flat:
        raise ValueError(f"entry {entry.label!r}: {path} has no {key!r} (keys {sorted(flat)[:8]}); set accuracy_key")
    return float(flat[key])


def _row(entry: ReportEntry) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    folder = Path(entry.attack_dir)
    record = _read_json(folder / "metrics.json", f"entry {entry.label!r} attack_dir")
    if entry.attack not in record["metrics"]:
        found = sorted(record["metrics"])
        raise ValueError(f"entry {entry.label!r}: {folder} has no {entry.attack!r} attack (has {found})")
    metrics = record["metrics"][entry.attack]
    with np.load(folder / "roc.npz") as roc:
        curve = roc[f"{entry.attack}_fpr"], roc[f"{entry.attack}_tpr"]
    accuracy = _accuracy(entry, record)
    auc_pct = 100.0 * metrics["auc"]
    row = {
        "label": entry.label,
        "attack": f"LiRA {entry.attack}" if entry.attack != "global" else "global threshold",
        "variance": record["settings"]["variance"],
        "shadows": record["shadows"],
        "accuracy_pct": None if accuracy is None else 100.0 * accuracy,
        "auc_mia_pct": auc_pct,
        "tpr_at_0.1pct_fpr_pct": 100.0 * metrics["tpr@0.001"],
        "tpr_at_1pct_fpr_pct": 100.0 * metrics["tpr@0.01"],
        "aop": None if accuracy is None else aop(100.0 * accuracy, auc_pct),
        "leave_one_out": "targets" in metrics,
        "attack_dir": str(folder),
    }
    return row, curve


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], title: str) -> str:
    """The report as a Markdown table."""
    lines = [
        f"# {title}",
        "",
        "| run | accuracy % | AUC_MIA % | TPR@0.1%FPR % | TPR@1%FPR % | AOP | attack (K shadows, variance) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {_fmt(r['accuracy_pct'])} | {_fmt(r['auc_mia_pct'])} | "
            f"{_fmt(r['tpr_at_0.1pct_fpr_pct'])} | {_fmt(r['tpr_at_1pct_fpr_pct'])} | {_fmt(r['aop'])} | "
            f"{r['attack']} (K={r['shadows']}, {r['variance']}) |"
        )
    lines += ["", "AOP = accuracy x (50 / AUC_MIA)^2 in percent (TCKR); higher is a better privacy-utility trade-off."]
    return "\n".join(lines) + "\n"


def privacy_report(
    out: str, entries: list[ReportEntry], title: str = "Privacy report", wandb_project: str | None = None
) -> Path:
    """Gather attack folders into ``out/report.{json,md}`` and ``out/roc.png``.

    Args:
        out: output folder.
        entries: rows of the table (label, attack_dir, attack, accuracy or test_metrics).
        title: heading of the table and figure.
        wandb_project: also log table and figure to this W&B project (offline unless WANDB_MODE is set).
    """
    if not entries:
        raise ValueError("privacy-report: give at least one entry (label, attack_dir)")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"privacy-report: entry labels must be unique; got {labels}")
    out_dir = Path(out)
    rows, curves = [], {}
    for entry in entries:
        row, curve = _row(entry)
        rows.append(row)
        curves[f"{entry.label} (AUC {row['auc_mia_pct'] / 100:.3f})"] = curve
    write_json_atomic(out_dir / "report.json", {"title": title, "rows": rows})
    table = markdown_table(rows, title)
    write_text_atomic(out_dir / "report.md", table)
    plot_roc(curves, out_dir / "roc.png", title)
    print(table)
    if wandb_project is not None:
        _log_wandb(wandb_project, out_dir, title, rows)
    return out_dir


def _log_wandb(project: str, out_dir: Path, title: str, rows: list[dict[str, Any]]) -> None:
    import wandb

    run = wandb.init(
        project=project,
        name=title,
        dir=str(out_dir),
        job_type="privacy-report",
        mode=os.environ.get("WANDB_MODE", "offline"),
    )
    columns = list(rows[0])
    run.log(
        {
            "privacy/report": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
            "privacy/roc": wandb.Image(str(out_dir / "roc.png")),
        }
    )
    run.finish()
