"""Outputs of `synthpriv metric-agreement`: the Markdown table and its reading, one scatter plot per metric, W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privacy.agreement import CORRELATIONS, MIN_CONFIGURATIONS
from tools.files import atomic_path
from tools.report_inputs import fmt, fmt_ci, md_escape
from tools.wandb_check import wandb_mode


def markdown(record: dict[str, Any]) -> str:
    """The agreement table and its reading."""
    lines = [
        f"# {md_escape(record['title'])}",
        "",
        "| metric | more leakage when | Spearman ρ [95 % CI] | Pearson r [95 % CI] | "
        "Kendall τ [95 % CI] | configurations | pairwise agreement [95 % CI] | pairs (originals) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in record["metrics"].items():
        ml, il = m["model_level"], m["image_level"]
        corr = [fmt_ci(ml[c]["value"], ml[c]["ci95"]) if ml[c] else "–" for c in CORRELATIONS]
        lines.append(
            f"| {name} | {'higher' if m['higher_is_more_similar'] else 'lower'} | {' | '.join(corr)} | "
            f"{ml['configurations']} | {fmt_ci(il['agreement'], il['ci95'], 3)} | {il['pairs']} ({il['originals']}) |"
        )
    lines += ["", "## Reading", ""]
    for key, text in (("kendall", "model level (Kendall τ)"), ("image", "image level (pairwise agreement)")):
        best = record["best"][key]
        if best is None:
            reason = next((m["model_level"].get("unavailable") for m in record["metrics"].values()), None)
            lines.append(f"- {text}: no figure{f' ({reason})' if reason else ''}.")
        elif best["overlapping"]:
            lines.append(
                f"- {text}: {best['metric']} is highest ({best['value']:.3f}), but its interval overlaps "
                f"those of {', '.join(best['overlapping'])}: these data do not separate them."
            )
        else:
            lines.append(
                f"- {text}: {best['metric']} agrees best ({best['value']:.3f}); its interval overlaps no other."
            )
    if any(record["best"].values()):  # a metric left out where others have figures says why
        lines += [
            f"- {name}: {m['model_level']['unavailable']}."
            for name, m in record["metrics"].items()
            if m["model_level"].get("unavailable")
        ]
    lines += [
        "",
        "| configuration | reconstructions | unlabelled (left out) | leakage rate | "
        + " | ".join(f"mean {n}" for n in record["metrics"])
        + " |",
        "|---|---|---|---|" + "---|" * len(record["metrics"]),
    ]
    for k, e in enumerate(record["entries"]):
        means = " | ".join(fmt(m["model_level"]["means"][k], 4) for m in record["metrics"].values())
        lines.append(
            f"| {md_escape(e['label'])} | {e['reconstructions']} | {e['unlabelled']} | {fmt(e['leakage'], 3)} "
            f"| {means} |"
        )
    lines += ["", record["method"]]
    return "\n".join(lines) + "\n"


def scatter(out_dir: Path, name: str, metric: dict[str, Any], entries: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ml = metric["model_level"]
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.scatter(ml["means"], ml["leakage"])
    for x, y, e in zip(ml["means"], ml["leakage"], entries):
        ax.annotate(e["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    tau = ml["kendall"]["value"] if ml["kendall"] else None
    ax.set(
        xlabel=f"mean {name} ({'higher' if metric['higher_is_more_similar'] else 'lower'} = more similar)",
        ylabel="leakage rate (share recognisable)",
        title=f"{title}: {name}" + (f", τ = {tau:.2f}" if tau is not None else ""),
    )
    fig.tight_layout()
    with atomic_path(out_dir / f"scatter_{name}.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


METHOD = (
    "Leakage rate: share of a configuration's labelled reconstructions judged recognisable. Metrics scored from the "
    "saved PNGs, reconstruction vs un-augmented original. Correlations (scipy.stats; Kendall τ-b) between each "
    "metric's mean, sign-flipped when lower means more similar, and the leakage rate across configurations; 95 % "
    "percentile bootstrap intervals from resampling reconstructions within each configuration (configurations "
    f"fixed), none with fewer than {MIN_CONFIGURATIONS} configurations. Pairwise agreement: share of (recognisable, "
    "unrecognisable) pairs of reconstructions of one original, within and across configurations, in which the "
    "metric rates the recognisable one as more similar (ties half); 95 % bootstrap interval over originals. All "
    "metrics share the bootstrap draws."
)


def log_wandb(project: str, out_dir: Path, title: str, results: dict[str, Any]) -> None:
    import wandb

    run = wandb.init(project=project, name=title, dir=str(out_dir), job_type="metric-agreement", mode=wandb_mode())
    columns = ["metric", *CORRELATIONS, "pairwise_agreement"]
    data = [
        [n, *[(r["model_level"][c] or {}).get("value") for c in CORRELATIONS], r["image_level"]["agreement"]]
        for n, r in results.items()
    ]
    run.log(
        {
            "semsim/agreement": wandb.Table(columns=columns, data=data),
            **{f"semsim/scatter_{n}": wandb.Image(str(out_dir / f"scatter_{n}.png")) for n in results},
        }
    )
    run.finish()
