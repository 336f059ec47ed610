"""`synthpriv privacy-report --config report.yaml`: one privacy-utility table and ROC figure over attack folders.

Each entry names an attack folder written by ``synthpriv attack`` (format 2) and, for the utility column, the
target's test accuracy. The table holds accuracy, AUC_MIA, TPR at 0.1 % and 1 % FPR, each with the attack's
95 % interval, and TCKR's AOP = accuracy x (50 / AUC_MIA)^2 (percent). An entry may list one attack folder
per seed; its row then shows mean ± sample std (ddof=1) over the seeds. Input rules (paths, accuracy unit,
unsupported TPRs, Markdown escaping) are those of ``tools.report_inputs``; every bad input is refused before
anything is written. Outputs: ``report.json``, ``report.md`` and ``roc.png`` (every entry's curve, log-log;
the first seed's for a seeded entry), replaced atomically on every run since they are views of the attack
folders; with ``wandb_project`` also a W&B run (offline unless WANDB_MODE says otherwise; online needs an API
key, checked before any work) with the table and the figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from privacy.metrics import aop, aop_interval, plot_roc
from tools.files import write_json_atomic, write_text_atomic
from tools.report_inputs import (
    ATTACK_LABELS,
    NO_ACCURACY,
    REPORT_FPRS,
    AttackName,
    ConfigPath,
    aggregate_seeds,
    as_list,
    check_fraction,
    figure_cell,
    interval_legend,
    md_escape,
    pct_key,
    read_attack,
    read_json_object,
    resolve_input,
    tpr_cell,
)
from tools.wandb_check import require_wandb_credentials, wandb_mode

# Figures aggregated over seeds (percent, AOP unitless) and shown in the table.
FIGURES = ("accuracy_pct", "auc_mia_pct", *(f"{pct_key(f)}_pct" for f in REPORT_FPRS), "aop")


@dataclass
class ReportEntry:
    """One row of the report.

    Args:
        label: row name, e.g. 'teacher (real data)'; '|' is escaped in the Markdown table.
        attack_dir: folder written by `synthpriv attack`, or a list of such folders, one per seed (the row then
            shows mean ± sample std over them). Relative: working directory first, then the config's folder.
        attack: which attack's figures fill the row: online, offline, global or rmia.
        accuracy: the target's test accuracy as a fraction in [0, 1] (0.85 = 85 %; 85 is refused), a list with
            one per seed (a single value applies to every seed), or 'none' for an entry without accuracy
            (accuracy and AOP shown as '–'). Default: read from test_metrics.
        test_metrics: metrics.json holding the accuracy (or a list, one per seed; a single file applies to
            every seed); default
            ``<target run>/test/metrics.json`` of each attack folder's target checkpoint. A missing file is
            an error (set accuracy: none to leave the accuracy out).
        accuracy_key: its key; a probe tested at several noise levels logs 'test/sigma0/acc'.
    """

    label: str
    attack_dir: ConfigPath | list[ConfigPath]
    attack: AttackName = "online"
    accuracy: float | list[float] | Literal["none"] | None = None
    test_metrics: ConfigPath | list[ConfigPath] | None = None
    accuracy_key: str = "test/acc"


def _per_seed(value: Any, n: int, what: str) -> list[Any]:
    """``value`` for each of ``n`` seeds: a list must have ``n`` items, a single value applies to every seed."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} lists {len(value)} values but attack_dir lists {n} folders (one per seed)")
        return list(value)
    return [value] * n


def _accuracy(
    entry: ReportEntry, what: str, accuracy: Any, test_metrics: Any, figures: dict[str, Any], attack_dir: Any
) -> tuple[float | None, str | None]:
    """The target's test accuracy (fraction) and the file it came from; None for ``accuracy: none``."""
    if accuracy == NO_ACCURACY:
        return None, None
    if accuracy is not None:
        return check_fraction(accuracy, f"{what}: accuracy"), None
    if test_metrics is not None:
        path = resolve_input(test_metrics, f"{what} test_metrics", kind="file")
    else:
        target = figures["target_checkpoint"]
        if not target:
            raise ValueError(
                f"{what}: the attack has no target checkpoint (leave-one-out or target logits), so its test "
                "metrics cannot be found; give accuracy (a fraction), test_metrics, or accuracy: none"
            )
        guess = Path(target).parent.parent / "test" / "metrics.json"
        located = _Located(str(guess), getattr(attack_dir, "cwd", None))
        try:
            path = resolve_input(located, f"{what}: target test metrics of {target}", kind="file")
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err}; run `synthpriv test` on that run, or give accuracy / test_metrics, or accuracy: none"
            ) from None
    record = read_json_object(path, f"{what} test_metrics")
    _check_same_checkpoint(what, path, record.get("ckpt_path"), figures["target_checkpoint"])
    flat = record.get("metrics", record)
    if not isinstance(flat, dict):
        raise ValueError(f"{what}: {path} 'metrics' must be an object; found {type(flat).__name__}")
    key = entry.accuracy_key
    if key not in flat:
        raise ValueError(f"{what}: {path} has no {key!r} (keys {sorted(flat)[:8]}); set accuracy_key")
    return check_fraction(flat[key], f"{what}: {path} {key!r}"), str(path)


def _same_file(a: str, b: str) -> bool:
    """Whether two checkpoint paths name one file (resolved when both exist, else by run folder and name)."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return (pa.name, pa.parent.parent.name) == (pb.name, pb.parent.parent.name)


def _check_same_checkpoint(what: str, path: Path, tested: Any, attacked: Any) -> None:
    """The accuracy must be the attacked checkpoint's: refuse a test of another one (best vs last)."""
    if tested and attacked and not _same_file(str(tested), str(attacked)):
        raise ValueError(
            f"{what}: the attack queried {attacked} but {path} holds the test of {tested}; the row would mix two "
            f"checkpoints. Test the attacked one (synthpriv test ... --ckpt_path {attacked}), attack the tested one, "
            "or give the accuracy explicitly"
        )


@dataclass
class _Located:
    """A path text with the config folder it may be relative to (what jsonargparse's Path carries)."""

    relative: str
    cwd: str | None


def _seed_row(
    entry: ReportEntry, seed: int, seeds: int, attack_dir: Any, accuracy: Any, test_metrics: Any
) -> dict[str, Any]:
    what = f"entry {entry.label!r}" + (f" (seed {seed + 1} of {seeds})" if seeds > 1 else "")
    folder = resolve_input(attack_dir, f"{what} attack_dir")
    figures = read_attack(folder, entry.attack, f"{what} attack_dir")
    acc, source = _accuracy(entry, what, accuracy, test_metrics, figures, attack_dir)
    auc = figures["auc_mia_pct"]
    if acc is not None and auc <= 0:
        raise ValueError(f"{what}: {folder} AUC_MIA is 0, so AOP is undefined; set accuracy: none")
    low, high = figures["auc_mia_ci95_pct"]
    return {
        "attack_dir": str(folder),
        "test_metrics": source,
        "accuracy_pct": None if acc is None else 100 * acc,
        **figures,
        "aop": None if acc is None else aop(100 * acc, auc),
        # AOP over the AUC interval with the accuracy held fixed (it peaks at AUC 50 %).
        "aop_ci95": None if acc is None else aop_interval(100 * acc, low, high),
        "auc_below_chance": auc < 50,
    }


def _row(entry: ReportEntry) -> tuple[dict[str, Any], Any]:
    """The entry's row (aggregated over seeds when attack_dir lists several folders) and its ROC curve."""
    what = f"entry {entry.label!r}"
    if entry.attack not in ATTACK_LABELS:
        raise ValueError(f"{what}: attack must be one of {sorted(ATTACK_LABELS)}; found {entry.attack!r}")
    if entry.accuracy is not None and entry.test_metrics is not None:
        raise ValueError(f"{what}: give accuracy or test_metrics, not both")
    folders = as_list(entry.attack_dir)
    if not folders:
        raise ValueError(f"{what}: attack_dir lists no folders")
    n = len(folders)
    if entry.accuracy == NO_ACCURACY:
        accuracies = [NO_ACCURACY] * n
    else:
        accuracies = _per_seed(entry.accuracy, n, f"{what}: accuracy")
    metrics = _per_seed(entry.test_metrics, n, f"{what}: test_metrics")
    seeds = [_seed_row(entry, i, n, *args) for i, args in enumerate(zip(folders, accuracies, metrics))]
    curve = seeds[0].pop("curve")
    for seed in seeds[1:]:
        seed.pop("curve")
    head = {"label": entry.label, "attack": ATTACK_LABELS[entry.attack], "attack_name": entry.attack}
    row = {**head, **aggregate_seeds(seeds, FIGURES)}
    row["auc_below_chance"] = any(seed["auc_below_chance"] for seed in seeds)
    return row, curve


def markdown_table(rows: list[dict[str, Any]], title: str) -> str:
    """The report as a Markdown table with its legend (interval method, unsupported rule, AOP, seeds)."""
    lines = [
        f"# {md_escape(title)}",
        "",
        "| run | accuracy % | AUC_MIA % [95 % CI] | TPR@0.1%FPR % [95 % CI] | TPR@1%FPR % [95 % CI] | AOP [95 % CI] "
        "| attack (K shadows, setting) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        setting = f"K={r['shadows']}" + (f", {r['setting']}" if r.get("setting") else "")
        lines.append(
            f"| {md_escape(r['label'])} | {figure_cell(r, 'accuracy_pct')} | "
            f"{figure_cell(r, 'auc_mia_pct', 'auc_mia_ci95_pct')}{' †' if r['auc_below_chance'] else ''} | "
            f"{tpr_cell(r, 0.001)} | {tpr_cell(r, 0.01)} | "
            f"{figure_cell(r, 'aop', 'aop_ci95')} | {md_escape(r['attack'])} ({setting}) |"
        )
    lines += [
        "",
        *interval_legend(rows),
        "AOP = accuracy x (50 / AUC_MIA)^2 in percent (TCKR); higher is a better privacy-utility trade-off. Its "
        "interval is AOP at the ends of the AUC_MIA interval with the accuracy held fixed, so it leaves out the "
        "accuracy's own sampling error. –: the entry gives no accuracy (accuracy: none).",
    ]
    if any(r["auc_below_chance"] for r in rows):
        lines.append(
            "†: AUC_MIA below 50 %: the attack ranks members below non-members. AOP then uses the attack's better "
            "side, max(AUC, 100 - AUC), so it never exceeds the accuracy; check the attack's inputs (report.json: "
            "auc_below_chance)."
        )
    return "\n".join(lines) + "\n"


def privacy_report(
    out: str, entries: list[ReportEntry], title: str = "Privacy report", wandb_project: str | None = None
) -> Path:
    """Gather attack folders into ``out/report.{json,md}`` and ``out/roc.png``.

    Args:
        out: output folder (relative to the working directory).
        entries: rows of the table (label, attack_dir, attack, accuracy or test_metrics; see ReportEntry).
        title: heading of the table and figure.
        wandb_project: also log table and figure to this W&B project (offline unless WANDB_MODE is set; an
            online run needs an API key, checked before any work).
    """
    if wandb_project is not None:
        require_wandb_credentials("privacy-report")
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
        seed_note = f", seed 1 of {row['seeds']}" if row["seeds"] > 1 else ""
        auc = row["per_seed"][0]["auc_mia_pct"] if row["seeds"] > 1 else row["auc_mia_pct"]
        curves[f"{entry.label} (AUC {auc / 100:.3f}{seed_note})"] = curve
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

    run = wandb.init(project=project, name=title, dir=str(out_dir), job_type="privacy-report", mode=wandb_mode())
    columns = [
        "label",
        "attack",
        "seeds",
        *FIGURES,
        *(f"{k}_std" for k in FIGURES),
        "auc_mia_ci95_low_pct",
        "auc_mia_ci95_high_pct",
        *(f"{pct_key(f)}_unsupported" for f in REPORT_FPRS),
        "attack_dir",
    ]
    data = []
    for r in rows:
        ci = r.get("auc_mia_ci95_pct") or [None, None]
        data.append(
            [
                r["label"],
                r["attack"],
                r["seeds"],
                *(r[k] for k in FIGURES),
                *(r.get(f"{k}_std") for k in FIGURES),
                ci[0],
                ci[1],
                *(r[f"{pct_key(f)}_unsupported"] for f in REPORT_FPRS),
                str(r["attack_dir"]),
            ]
        )
    run.log(
        {
            "privacy/report": wandb.Table(columns=columns, data=data),
            "privacy/roc": wandb.Image(str(out_dir / "roc.png")),
        }
    )
    run.finish()
