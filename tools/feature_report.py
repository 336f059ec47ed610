"""`synthpriv feature-report --config report.yaml`: the CVAE study's results table and plots.

One row per anonymiser: test AUROC (x 100) of its linear probe at every noise level, accuracy, the average
min-distance of its training vectors to the real ones, the DCR share, and what LiRA says about the probe.
The probe's data settings (anonymiser, k, CVAE checkpoint, seed) are read back from its run's config.yaml, so
the audits see exactly the vectors the probe was trained on. Outputs: ``results.json``, ``results.md``,
``auroc_vs_k.png``, ``auroc_vs_sigma.png``, ``auc_mia.png`` (views of the runs, replaced on every call) and,
with ``wandb_project``, a W&B run (offline unless WANDB_MODE says otherwise; online needs an API key, checked
before any work) with the table and the figures. The LiRA columns carry the attack's 95 % intervals; an entry's
attack folders may be lists (one per seed: mean ± sample std). Input rules (paths relative to the working
directory, then to the config's folder; accuracies and AUROCs as fractions in [0, 1]; format-2 attack folders;
unsupported TPRs; Markdown escaping) are those of ``tools.report_inputs``; bad inputs are refused before
anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privacy.feature_audit import average_min_distance, dcr_share
from tools.feature_plots import FIGURES, plot_feature_report
from tools.files import write_json_atomic, write_text_atomic
from tools.report_inputs import (
    AttackName,
    ConfigPath,
    attack_figures,
    check_fraction,
    fmt,
    interval_legend,
    md_escape,
    read_json_object,
    resolve_input,
    tpr_cell,
)
from tools.report_inputs import figure_cell as _lira_cell
from tools.wandb_check import require_wandb_credentials, wandb_mode


@dataclass
class FeatureEntry:
    """One anonymiser of the grid.

    Args:
        label: row name, e.g. 'ksame k=5'; '|' is escaped in the Markdown tables.
        probe_run: run folder of the probe's fit and test (holds config.yaml and test/metrics.json, whose
            test accuracy and AUROC are fractions in [0, 1]). Relative: working directory first, then the
            config's folder.
        attack_dir: folder written by `synthpriv attack` against this probe, or a list of such folders, one per
            seed (optional; '–' without).
        attack: which attack fills the LiRA columns: online, offline, global or rmia.
        aware_attack_dir: the same attack with anonymiser-aware shadows (trained on anonymised members,
            data.anonymise_members), optional; a list for seeds.
    """

    label: str
    probe_run: ConfigPath
    attack_dir: ConfigPath | list[ConfigPath] | None = None
    attack: AttackName = "online"
    aware_attack_dir: ConfigPath | list[ConfigPath] | None = None


def _sigma(text: str, prefix: str, key: str, what: str) -> float:
    try:
        sigma = float(text[len(prefix) :])
    except ValueError:
        raise ValueError(f"{what}: key {key!r} names no noise level ({prefix}<number>)") from None
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{what}: key {key!r} names noise level {sigma}; expected a finite sigma >= 0")
    return sigma


def _test_metrics(
    entry: FeatureEntry, probe_run: Path
) -> tuple[dict[float, dict[str, float]], dict[float, dict[str, float]]]:
    """{sigma: {'auroc': .., 'acc': ..}} from the probe's test/metrics.json: the noise levels in the probe's
    own z-scored space (test/sigma<s>/ or plain test/), and those of data.equal_noise (test/real_sigma<s>/).
    AUROC and accuracy must be fractions in [0, 1]; the lowest noise level must have an accuracy."""
    path = probe_run / "test" / "metrics.json"
    what = f"entry {entry.label!r} test metrics"
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (run that step of the study first)")
    record = read_json_object(path, what)
    flat = record.get("metrics", {})
    if not isinstance(flat, dict):
        raise ValueError(f"{what}: {path} 'metrics' must be an object; found {type(flat).__name__}")
    what = f"{what}: {path}"
    levels: dict[float, dict[str, float]] = {}
    real: dict[float, dict[str, float]] = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] == "test":
            levels.setdefault(0.0, {})[parts[1]] = value
        elif len(parts) == 3 and parts[1].startswith("sigma"):
            levels.setdefault(_sigma(parts[1], "sigma", key, what), {})[parts[2]] = value
        elif len(parts) == 3 and parts[1].startswith("real_sigma"):
            real.setdefault(_sigma(parts[1], "real_sigma", key, what), {})[parts[2]] = value
    if not levels or not all("auroc" in m for m in [*levels.values(), *real.values()]):
        raise ValueError(f"entry {entry.label!r}: {path} holds no test/auroc (keys {sorted(flat)[:6]})")
    for scale, grid in (("sigma", levels), ("real_sigma", real)):
        for sigma, metrics in grid.items():
            for name in ("auroc", "acc"):
                if name in metrics:
                    metrics[name] = check_fraction(metrics[name], f"{what} {scale}={sigma:g} {name}", "0.93")
    if "acc" not in levels[min(levels)]:
        raise ValueError(f"{what} has no test accuracy at sigma={min(levels):g} (keys {sorted(flat)[:6]})")
    if real and 0.0 in levels:
        real[0.0] = levels[0.0]  # no noise is the same test at either scale
    return levels, real


def _audits(probe_run: Path) -> dict[str, Any]:
    """Anonymiser settings and distance audits, from the data module the probe was trained with."""
    from tools.target_logits import load_run_datamodule

    datamodule = load_run_datamodule(probe_run)
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


def _lira(entry: FeatureEntry, folders: Any, key: str) -> dict[str, Any] | None:
    """The attack's figures (see ``report_inputs.read_attack``; mean ± std over seeds), or None without one."""
    if folders is None:
        return None
    figures, _ = attack_figures(folders, entry.attack, f"entry {entry.label!r} {key}")
    return figures


def markdown_table(rows: list[dict[str, Any]], sigmas: list[float], title: str) -> str:
    """The grid as Markdown: AUROC per sigma, accuracy, audits and LiRA."""
    auroc_cols = " | ".join(f"AUROC σ={s:g}" for s in sigmas)
    lines = [
        f"# {md_escape(title)}",
        "",
        f"| anonymiser | train rows | {auroc_cols} | acc % (σ=0) | min-dist | DCR share % | AUC_MIA % [95 % CI] "
        "| TPR@1%FPR % [95 % CI] |",
        "|---|---|" + "---|" * len(sigmas) + "---|---|---|---|---|",
    ]
    for r in rows:
        aurocs = " | ".join(fmt(r["auroc_pct"].get(s)) for s in sigmas)
        lines.append(
            f"| {md_escape(r['label'])} | {r['train_size']} | {aurocs} | {fmt(r['acc_pct'])} | "
            f"{fmt(r['min_distance'])} | {fmt(100 * r['dcr']['share'], 1)} | "
            f"{_lira_cell(r['lira'], 'auc_mia_pct', 'auc_mia_ci95_pct')} | {tpr_cell(r['lira'], 0.01)} |"
        )
    lines += [
        "",
        "AUROC: test macro one-vs-rest AUROC x 100 of the linear probe, with N(0, σ²) noise on the z-scored test "
        "features. min-dist: mean distance of each anonymised training vector to its nearest real one (real "
        "training statistics z-scoring). DCR share: anonymised vectors nearer a real training record than any "
        f"real holdout (val + test) record; {_dcr_baseline(rows)} = no copying (the training records' share of "
        "all real records), 100 % = copies. LiRA: the entry's attack on the probe with shadow probes on real "
        "features; –: no attack folder given.",
        *interval_legend([r["lira"] for r in rows] + [r["lira_aware"] for r in rows]),
    ]
    if any(r["lira_aware"] for r in rows):
        lines += [
            "",
            "## Membership inference: shadows on real vs anonymised members",
            "",
            "| anonymiser | AUC_MIA % (real) [95 % CI] | TPR@1%FPR % (real) [95 % CI] | AUC_MIA % (aware) "
            "[95 % CI] | TPR@1%FPR % (aware) [95 % CI] |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            real, aware = r["lira"], r["lira_aware"]
            lines.append(
                f"| {md_escape(r['label'])} | {_lira_cell(real, 'auc_mia_pct', 'auc_mia_ci95_pct')} | "
                f"{tpr_cell(real, 0.01)} | {_lira_cell(aware, 'auc_mia_pct', 'auc_mia_ci95_pct')} | "
                f"{tpr_cell(aware, 0.01)} |"
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
                f"| {md_escape(r['label'])} | {fmt(r['noise_scale'], 3)} | {fmt(_drop(own, top))} | "
                + " | ".join(fmt(equal.get(v)) for v in real_sigmas)
                + f" | {fmt(_drop(equal, max(real_sigmas)))} |"
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


def feature_report(
    out: str, entries: list[FeatureEntry], title: str = "CVAE feature anonymisation", wandb_project: str | None = None
) -> Path:
    """Gather probe runs, audits and attacks into ``out/results.{json,md}`` and three plots.

    Args:
        out: output folder (relative to the working directory).
        entries: one per anonymiser (label, probe_run, attack_dir; see FeatureEntry).
        title: heading of the table and figures.
        wandb_project: also log the table and figures to this W&B project (offline unless WANDB_MODE is set;
            an online run needs an API key, checked before any work).
    """
    if wandb_project is not None:
        require_wandb_credentials("feature-report")
    if not entries:
        raise ValueError("feature-report: give at least one entry (label, probe_run)")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"feature-report: entry labels must be unique; got {labels}")
    rows = []
    for entry in entries:  # every input is read and checked before the (slower) audits run
        probe_run = resolve_input(entry.probe_run, f"entry {entry.label!r} probe_run")
        levels, real_levels = _test_metrics(entry, probe_run)
        rows.append(
            {
                "label": entry.label,
                "probe_run": str(probe_run),
                "lira": _lira(entry, entry.attack_dir, "attack_dir"),
                "lira_aware": _lira(entry, entry.aware_attack_dir, "aware_attack_dir"),
                "auroc_pct": {s: 100 * m["auroc"] for s, m in levels.items()},
                "auroc_real_pct": {s: 100 * m["auroc"] for s, m in real_levels.items()},
                "acc_pct": 100 * levels[min(levels)]["acc"],
            }
        )
    for row in rows:
        row.update(_audits(Path(row["probe_run"])))
    sigmas = sorted({s for r in rows for s in r["auroc_pct"]})
    out_dir = Path(out)
    write_json_atomic(out_dir / "results.json", {"title": title, "sigmas": sigmas, "rows": rows})
    table = markdown_table(rows, sigmas, title)
    write_text_atomic(out_dir / "results.md", table)
    plot_feature_report(rows, out_dir, title)
    print(table)
    if wandb_project is not None:
        _log_wandb(wandb_project, out_dir, title, table, rows, sigmas)
    return out_dir


def _log_wandb(
    project: str, out_dir: Path, title: str, table: str, rows: list[dict[str, Any]], sigmas: list[float]
) -> None:
    import wandb

    run = wandb.init(project=project, name=title, dir=str(out_dir), job_type="feature-report", mode=wandb_mode())
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
