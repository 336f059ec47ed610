"""`synthpriv feature-report --config report.yaml`: the CVAE study's results table and plots.

One row per anonymiser: test AUROC (x 100) of its linear probe at every noise level, accuracy, the average
min-distance of its training vectors to the real ones, the DCR share, and what LiRA says about the probe.
The probe's data settings (anonymiser, k, CVAE checkpoint, seed) are read back from its run's config.yaml, so
the audits see exactly the vectors the probe was trained on. Outputs: ``results.json``, ``results.md``,
``auroc_vs_k.png``, ``auroc_vs_sigma.png``, ``auc_mia.png`` (views of the runs, replaced on every call) and,
with ``wandb_project``, a W&B run (offline unless WANDB_MODE says otherwise) with the table and the figures.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from privacy.feature_audit import average_min_distance, dcr_share
from tools.files import atomic_path, write_json_atomic, write_text_atomic

FIGURES = ("auroc_vs_k.png", "auroc_vs_sigma.png", "auc_mia.png")


@dataclass
class FeatureEntry:
    """One anonymiser of the grid.

    Args:
        label: row name, e.g. 'ksame k=5'.
        probe_run: run folder of the probe's fit and test (holds config.yaml and test/metrics.json).
        attack_dir: folder written by `synthpriv attack` against this probe (optional).
        attack: which attack fills the LiRA columns.
        aware_attack_dir: the same attack with anonymiser-aware shadows (trained on anonymised members,
            data.anonymise_members), optional.
    """

    label: str
    probe_run: str
    attack_dir: str | None = None
    attack: Literal["online", "offline", "global"] = "online"
    aware_attack_dir: str | None = None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (run that step of the study first)")
    return json.loads(path.read_text())


def _test_metrics(entry: FeatureEntry) -> tuple[dict[float, dict[str, float]], dict[float, dict[str, float]]]:
    """{sigma: {'auroc': .., 'acc': ..}} from the probe's test/metrics.json: the noise levels in the probe's
    own z-scored space (test/sigma<s>/ or plain test/), and those of data.equal_noise (test/real_sigma<s>/)."""
    path = Path(entry.probe_run) / "test" / "metrics.json"
    flat = _read_json(path, f"entry {entry.label!r} test metrics").get("metrics", {})
    levels: dict[float, dict[str, float]] = {}
    real: dict[float, dict[str, float]] = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] == "test":
            levels.setdefault(0.0, {})[parts[1]] = value
        elif len(parts) == 3 and parts[1].startswith("sigma"):
            levels.setdefault(float(parts[1][5:]), {})[parts[2]] = value
        elif len(parts) == 3 and parts[1].startswith("real_sigma"):
            real.setdefault(float(parts[1][10:]), {})[parts[2]] = value
    if not levels or not all("auroc" in m for m in [*levels.values(), *real.values()]):
        raise ValueError(f"entry {entry.label!r}: {path} holds no test/auroc (keys {sorted(flat)[:6]})")
    if real and 0.0 in levels:
        real[0.0] = levels[0.0]  # no noise is the same test at either scale
    return levels, real


def _audits(entry: FeatureEntry) -> dict[str, Any]:
    """Anonymiser settings and distance audits, from the data module the probe was trained with."""
    from tools.target_logits import load_run_datamodule

    datamodule = load_run_datamodule(Path(entry.probe_run))
    datamodule.setup("fit")
    hp = datamodule.hparams
    real = datamodule.real_train.embeddings
    anonymised = datamodule.audit_samples()
    holdout = np.concatenate([datamodule.splits["val"].embeddings, datamodule.splits["test"].embeddings])
    return {
        "anonymiser": hp.anonymiser,
        "k": hp.k if hp.anonymiser == "ksame" else None,
        "train_size": len(anonymised),
        "min_distance": average_min_distance(anonymised, real),
        "min_distance_original_quirk": average_min_distance(anonymised, real, own_statistics=True),
        "dcr": dcr_share(anonymised, real, holdout),
        "noise_scale": datamodule.noise_scale(),
    }


def _lira(entry: FeatureEntry, folder: str | None) -> dict[str, float] | None:
    if folder is None:
        return None
    record = _read_json(Path(folder) / "metrics.json", f"entry {entry.label!r} attack folder")
    if entry.attack not in record.get("metrics", {}):
        found = sorted(record.get("metrics", {}))
        raise ValueError(f"entry {entry.label!r}: {folder} has no {entry.attack!r} attack (has {found})")
    metrics = record["metrics"][entry.attack]
    return {
        "auc_mia_pct": 100 * metrics["auc"],
        "tpr_at_1pct_fpr_pct": 100 * metrics["tpr@0.01"],
        "tpr_at_0.1pct_fpr_pct": 100 * metrics["tpr@0.001"],
        "shadows": record["shadows"],
    }


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], sigmas: list[float], title: str) -> str:
    """The grid as Markdown: AUROC per sigma, accuracy, audits and LiRA."""
    auroc_cols = " | ".join(f"AUROC σ={s:g}" for s in sigmas)
    lines = [
        f"# {title}",
        "",
        f"| anonymiser | train rows | {auroc_cols} | acc % (σ=0) | min-dist | DCR share % | AUC_MIA % | TPR@1%FPR % |",
        "|---|---|" + "---|" * len(sigmas) + "---|---|---|---|---|",
    ]
    for r in rows:
        aurocs = " | ".join(_fmt(r["auroc_pct"].get(s)) for s in sigmas)
        lira = r["lira"] or {}
        lines.append(
            f"| {r['label']} | {r['train_size']} | {aurocs} | {_fmt(r['acc_pct'])} | {_fmt(r['min_distance'])} | "
            f"{_fmt(100 * r['dcr']['share'], 1)} | {_fmt(lira.get('auc_mia_pct'))} | "
            f"{_fmt(lira.get('tpr_at_1pct_fpr_pct'))} |"
        )
    lines += [
        "",
        "AUROC: test macro one-vs-rest AUROC x 100 of the linear probe, with N(0, σ²) noise on the z-scored test "
        "features. min-dist: mean distance of each anonymised training vector to its nearest real one (real "
        "training statistics z-scoring). DCR share: anonymised vectors nearer a real training record than any "
        f"real holdout (val + test) record; {_dcr_baseline(rows)} = no copying (the training records' share of "
        "all real records), 100 % = copies. LiRA: online attack on the probe with shadow probes on real features.",
    ]
    if any(r["lira_aware"] for r in rows):
        lines += [
            "",
            "## Membership inference: shadows on real vs anonymised members",
            "",
            "| anonymiser | AUC_MIA % (real) | TPR@1%FPR % (real) | AUC_MIA % (aware) | TPR@1%FPR % (aware) |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            real, aware = r["lira"] or {}, r["lira_aware"] or {}
            lines.append(
                f"| {r['label']} | {_fmt(real.get('auc_mia_pct'))} | {_fmt(real.get('tpr_at_1pct_fpr_pct'))} | "
                f"{_fmt(aware.get('auc_mia_pct'))} | {_fmt(aware.get('tpr_at_1pct_fpr_pct'))} |"
            )
        lines += [
            "",
            "real: shadow probes trained on real features (an attacker who ignores the anonymiser); aware: each "
            "shadow trained on its members passed through the target's anonymiser (data.anonymise_members). Both "
            "query every model with the real features.",
        ]
    real_sigmas = sorted({v for r in rows for v in r["auroc_real_pct"] if v > 0})
    if real_sigmas and len(sigmas) > 1:
        top = max(sigmas)
        real_cols = " | ".join(f"AUROC σ={v:g}" for v in real_sigmas)
        lines += [
            "",
            "## Robustness to test noise at equal raw noise",
            "",
            f"| anonymiser | noise scale | drop σ={top:g} (own scale) | {real_cols} | drop σ={max(real_sigmas):g} |",
            "|---|---|---|" + "---|" * len(real_sigmas) + "---|",
        ]
        for r in rows:
            own, equal = r["auroc_pct"], r["auroc_real_pct"]
            lines.append(
                f"| {r['label']} | {_fmt(r['noise_scale'], 3)} | {_fmt(_drop(own, top))} | "
                + " | ".join(_fmt(equal.get(v)) for v in real_sigmas)
                + f" | {_fmt(_drop(equal, max(real_sigmas)))} |"
            )
        lines += [
            "",
            "The original adds N(0, σ²) in each probe's own z-scored space, i.e. σ x the std of the set it trained "
            "on; noise scale: that std relative to the real training set's (root mean square over features), so "
            "σ is that much less raw noise for spread-reducing anonymisers. The other columns add σ x the real "
            "training std to every probe (data.equal_noise); drop: AUROC at σ=0 minus AUROC at that σ.",
        ]
    return "\n".join(lines) + "\n"


def _drop(auroc: dict[float, float], sigma: float) -> float | None:
    if 0.0 not in auroc or sigma not in auroc:
        return None
    return auroc[0.0] - auroc[sigma]


def _dcr_baseline(rows: list[dict[str, Any]]) -> str:
    baselines = sorted({round(100 * r["dcr"]["baseline"], 1) for r in rows})
    return " / ".join(f"{b:.1f} %" for b in baselines) if baselines else "–"


def _plot(rows: list[dict[str, Any]], sigmas: list[float], out_dir: Path, title: str) -> None:
    ksame = sorted((r["k"], r["auroc_pct"].get(0.0)) for r in rows if r["anonymiser"] == "ksame")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if ksame:
        ax.plot([k for k, _ in ksame], [a for _, a in ksame], "o-", label="k-Same")
    for r in rows:
        if r["anonymiser"] != "ksame" and r["auroc_pct"].get(0.0) is not None:
            ax.axhline(r["auroc_pct"][0.0], linestyle="--", label=r["label"], color=f"C{1 + rows.index(r) % 9}")
    ax.set(xlabel="k", ylabel="test AUROC x 100 (σ=0)", title=f"{title}: AUROC vs k")
    ax.legend(fontsize=7)
    _save(fig, out_dir / "auroc_vs_k.png")

    scales = [("auroc_pct", "test noise σ (probe's z-scored space)")]
    if any(len(r["auroc_real_pct"]) > 1 for r in rows):
        scales.append(("auroc_real_pct", "test noise σ x real training std"))
    fig, axes = plt.subplots(1, len(scales), figsize=(5 * len(scales), 3.5), squeeze=False, sharey=True)
    for ax, (key, xlabel) in zip(axes[0], scales):
        for r in rows:
            levels = sorted(r[key])
            ax.plot(levels, [r[key][v] for v in levels], "o-", label=r["label"])
        ax.set(xlabel=xlabel, ylabel="test AUROC x 100")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: AUROC vs σ", fontsize=9)
    _save(fig, out_dir / "auroc_vs_sigma.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    values = [(r["lira"] or {}).get("auc_mia_pct", np.nan) for r in rows]
    aware = [(r["lira_aware"] or {}).get("auc_mia_pct", np.nan) for r in rows]
    if np.isnan(aware).all():
        ax.bar(range(len(rows)), values, color="C3")
    else:
        ax.bar(np.arange(len(rows)) - 0.2, values, width=0.4, color="C3", label="shadows on real features")
        ax.bar(np.arange(len(rows)) + 0.2, aware, width=0.4, color="C0", label="anonymiser-aware shadows")
        ax.legend(fontsize=7)
    ax.axhline(50, color="k", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="LiRA AUC_MIA %", title=f"{title}: membership inference")
    _save(fig, out_dir / "auc_mia.png")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def feature_report(
    out: str, entries: list[FeatureEntry], title: str = "CVAE feature anonymisation", wandb_project: str | None = None
) -> Path:
    """Gather probe runs, audits and attacks into ``out/results.{json,md}`` and three plots.

    Args:
        out: output folder.
        entries: one per anonymiser (label, probe_run, attack_dir).
        title: heading of the table and figures.
        wandb_project: also log the table and figures to this W&B project (offline unless WANDB_MODE is set).
    """
    if not entries:
        raise ValueError("feature-report: give at least one entry (label, probe_run)")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"feature-report: entry labels must be unique; got {labels}")
    rows = []
    for entry in entries:
        levels, real_levels = _test_metrics(entry)
        row = {"label": entry.label, **_audits(entry), "probe_run": entry.probe_run}
        row["lira"], row["lira_aware"] = _lira(entry, entry.attack_dir), _lira(entry, entry.aware_attack_dir)
        row["auroc_pct"] = {s: 100 * m["auroc"] for s, m in levels.items()}
        row["auroc_real_pct"] = {s: 100 * m["auroc"] for s, m in real_levels.items()}
        row["acc_pct"] = 100 * levels[min(levels)].get("acc", np.nan)
        rows.append(row)
    sigmas = sorted({s for r in rows for s in r["auroc_pct"]})
    out_dir = Path(out)
    write_json_atomic(out_dir / "results.json", {"title": title, "sigmas": sigmas, "rows": rows})
    table = markdown_table(rows, sigmas, title)
    write_text_atomic(out_dir / "results.md", table)
    _plot(rows, sigmas, out_dir, title)
    print(table)
    if wandb_project is not None:
        _log_wandb(wandb_project, out_dir, title, table, rows, sigmas)
    return out_dir


def _log_wandb(
    project: str, out_dir: Path, title: str, table: str, rows: list[dict[str, Any]], sigmas: list[float]
) -> None:
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project=project, name=title, dir=str(out_dir), job_type="feature-report", mode=mode)
    real_sigmas = sorted({v for r in rows for v in r["auroc_real_pct"] if v > 0})
    columns = [
        "anonymiser",
        *[f"auroc_sigma{s:g}" for s in sigmas],
        *[f"auroc_real_sigma{s:g}" for s in real_sigmas],
        "min_distance",
        "dcr_share",
        "auc_mia_pct",
        "auc_mia_aware_pct",
    ]
    data = [
        [
            r["label"],
            *[r["auroc_pct"].get(s) for s in sigmas],
            *[r["auroc_real_pct"].get(s) for s in real_sigmas],
            r["min_distance"],
            r["dcr"]["share"],
            (r["lira"] or {}).get("auc_mia_pct"),
            (r["lira_aware"] or {}).get("auc_mia_pct"),
        ]
        for r in rows
    ]
    run.log(
        {
            "cvae/results": wandb.Table(columns=columns, data=data),
            **{f"cvae/{name[:-4]}": wandb.Image(str(out_dir / name)) for name in FIGURES},
        }
    )
    run.finish()
