"""`synthpriv attack SHADOWS OUT [--target T | --target_checkpoint RUN]`: membership inference from saved logits.

Writes per-example scores, metrics (AUC, balanced accuracy, TPR at low FPR, each with a 95 % bootstrap
interval) and a log-log ROC plot.

Inputs (npz):
  shadows: ``logits`` (K, N, Q, C), ``labels`` (N,), ``ids`` (N,), ``mask`` (K, N) bool, every shadow model's
      outputs on all N examples under Q query views, and which examples each model trained on; optionally
      ``population`` (N,) bool, RMIA's known non-members (MembershipDataModule ``population_size``).
  target (optional): ``logits`` (N, C) or (N, Q, C) with the shadows' Q, and ``ids`` (N,) in their order.
      With a target, ``members_file`` lists (one id per line) the examples the target trained on.
      Without a target, each shadow in turn is the target and the others are references (leave-one-out).
      A target checkpoint that learned the members indirectly (a student distilled from the teacher that trained
      on them) names the teacher's run with ``members_via``; the member list is checked against that run.

Attacks: LiRA online / offline (Carlini et al. 2022), the global-threshold baseline and RMIA (Zarifzadeh et
al. 2024). Each has a minimum number of shadows (``privacy.lira.minimum_shadows``); fewer is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from privacy.intervals import METHOD, bootstrap_intervals, leave_one_out_intervals
from privacy.lira import (
    Attack,
    Variance,
    global_threshold,
    leave_one_out,
    lira_offline,
    lira_online,
    minimum_shadows,
    scaled_confidence,
    true_class_probability,
)
from privacy.membership import rmia_scores
from privacy.metrics import DEFAULT_FPRS, attack_metrics, plot_roc, roc_curve
from tools.attack_inputs import (
    Evaluation,
    load_shadows,
    load_target_scores_input,
    resolve_population,
    target_evaluation,
)
from tools.files import file_sha256, write_bytes_atomic, write_json_atomic

FORMAT = 2  # metrics.json layout: 2 adds intervals and unsupported-FPR flags
__all__ = ["load_shadows", "run_attack"]


def run_attack(
    shadows: str,
    out: str,
    target: str | None = None,
    target_checkpoint: str | None = None,
    members_file: str | None = None,
    non_members_file: str | None = None,
    population_file: str | None = None,
    attacks: list[Attack] | None = None,
    variance: Variance = "fixed",
    rmia_gamma: float = 1.0,
    rmia_offline_a: float | None = None,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
    control: bool = False,
    members_via: str | None = None,
    device: str = "cpu",
) -> Path:
    """Score membership with LiRA (online, offline), the global-threshold baseline and RMIA.

    Writes ``out/metrics.json`` (format 2: figures with 95 % intervals, unsupported FPRs flagged),
    ``out/scores.npz``, ``out/roc.npz`` and ``out/roc.png``. A rerun with the same inputs does nothing; with
    other inputs it stops instead of overwriting; results of an older format are recomputed (the old file is
    kept as ``metrics.format1.json``).

    Args:
        shadows: shadow-logits npz (logits, labels, ids, mask), e.g. ``runs/<study>/shadows/shadows.npz``.
        out: output folder.
        target: target-logits npz (logits, ids); omit both targets for leave-one-out over the shadows.
        target_checkpoint: a target checkpoint, or its run folder (best checkpoint, else last); it is queried
            on the shadows' examples and views (from the shadows' run config); logits go to ``out/target_logits.npz``.
        members_file: text file of the target's training ids; default the shadows' run
            ``membership/target_members.txt``.
        non_members_file: text file of known non-member ids; default the shadows' run
            ``membership/target_non_members.txt`` with members_file unset, else every other example.
        population_file: RMIA's population of known non-members (ids, one per line), never evaluated; default
            the shadows' ``population`` flags (MembershipDataModule ``population_size``).
        attacks: which attacks to run (online, offline, global, rmia); default the three LiRA ones, and rmia
            when a population is known.
        variance: per_example, fixed (recommended below 64 shadows) or tckr_global.
        rmia_gamma: RMIA's likelihood-ratio threshold gamma (> 0).
        rmia_offline_a: offline RMIA's interpolation a in [0, 1] (OUT models only); unset: online RMIA.
        resamples: bootstrap draws for the 95 % intervals (at least 100).
        bootstrap_seed: seed of the bootstrap draws.
        control: the target is a control attacked with another model's member list (expect chance): its run
            must have trained on none of the members, instead of on all of them.
        members_via: for a target that learned the members indirectly, the run folder (or a checkpoint in it) that
            trained on them directly and from which the target derives: the teacher a student was distilled
            from (the student trained on synthetic images only), or a generator's fine-tuning run. The member list
            is then checked against this run's recorded ids (every member must be among them, as for a direct
            target), and the target's own run must have trained on none of the members (else it is a direct
            target: attack it without members_via); its data may select other examples than the shadows', but
            not other classes or pixels. Needs target_checkpoint; not with control. The run and the sha256 of
            its ``trained_ids.txt`` are recorded in metrics.json (``members_via``, ``settings.members_via``).
        device: where the target checkpoint runs (cpu, cuda).
    """
    out_dir = Path(out)
    if target is not None and target_checkpoint is not None:
        raise ValueError("give --target (saved logits) or --target_checkpoint, not both")
    if members_via is not None and target_checkpoint is None:
        raise ValueError(
            "--members_via checks the run of a target checkpoint against the members' run: give --target_checkpoint"
        )
    if members_via is not None and control:
        raise ValueError(
            "--members_via (the target learned the members through another run) and --control true (the target "
            "never saw them) contradict each other: give one of them"
        )
    if resamples < 100:
        raise ValueError(f"--resamples must be at least 100 for a 95 % percentile interval; got {resamples}")
    if target_checkpoint is not None:
        from tools.target_logits import resolve_target_checkpoint

        target_checkpoint = resolve_target_checkpoint(target_checkpoint)
    data = load_shadows(shadows)
    population = resolve_population(shadows, data, population_file)
    attacks = list(attacks or ["online", "offline", "global", *(["rmia"] if population is not None else [])])
    leave_out = target is None and target_checkpoint is None
    _check_shadow_count(data["logits"].shape[0], attacks, variance, leave_out, rmia_offline_a)
    if "rmia" in attacks and population is None:
        raise ValueError(
            "--attacks rmia needs a population of known non-members kept apart from the evaluated examples: fit "
            "the shadows with data.population_size > 0, or give --population_file"
        )
    evaluation = None
    if not leave_out:
        evaluation = target_evaluation(shadows, data, members_file, non_members_file, population)
    inputs = {
        p: file_sha256(p)
        for p in (
            shadows,
            target,
            target_checkpoint,
            evaluation and evaluation.members_file,
            non_members_file,
            population_file,
        )
        if p is not None
    }
    settings: dict[str, Any] = {"inputs": inputs, "attacks": attacks, "variance": variance}
    if "rmia" in attacks:
        settings["rmia"] = {"gamma": rmia_gamma, "offline_a": rmia_offline_a}
    settings["bootstrap"] = {"resamples": resamples, "seed": bootstrap_seed}
    if control:
        if target_checkpoint is None:
            raise ValueError("--control true checks a target run's recorded training ids: give --target_checkpoint")
        settings["control"] = True
    if members_via is not None:
        from tools.target_logits import members_via_setting

        settings["members_via"] = members_via_setting(members_via)
    if _already_done(out_dir / "metrics.json", settings):
        return out_dir
    if target_checkpoint is not None:
        from tools.shadow_check import check_shadows_match_target
        from tools.target_logits import check_target_trained_on, compute_target_logits

        # Class names and data settings first (a wrong pairing is refused by name), then the member ids. A target
        # that learned the members via another run trained on other examples by design, like a control.
        indirect = control or members_via is not None
        for message in check_shadows_match_target(Path(shadows).parent, Path(target_checkpoint), control=indirect):
            print(f"warning: --target_checkpoint {target_checkpoint}: {message}", file=sys.stderr)
        members = [str(i) for i in data["ids"][evaluation.keep[evaluation.is_member]]]
        check_target_trained_on(target_checkpoint, members, str(evaluation.members_file), control, members_via)
        target = str(compute_target_logits(target_checkpoint, shadows, out_dir / "target_logits.npz", device))
    rmia = {"gamma": rmia_gamma, "offline_a": rmia_offline_a}
    if leave_out:
        results, curves, saved = _leave_one_out(data, attacks, variance, population, rmia, resamples, bootstrap_seed)
    else:
        target_logits = load_target_scores_input(target, data)
        results, curves, saved = _against_target(
            data, target_logits, evaluation, attacks, variance, rmia, resamples, bootstrap_seed
        )
    write_bytes_atomic(out_dir / "scores.npz", lambda handle: np.savez(handle, **saved))
    roc = {f"{a}_{axis}": curve for a in attacks for axis, curve in zip(("fpr", "tpr"), curves[a])}
    write_bytes_atomic(out_dir / "roc.npz", lambda handle: np.savez(handle, **roc))
    plot_roc({f"{a} (AUC {results[a]['auc']:.3f})": curves[a] for a in attacks}, out_dir / "roc.png", "membership")
    record = {
        "format": FORMAT,
        "settings": settings,
        "shadows": int(data["logits"].shape[0]),
        "target_checkpoint": target_checkpoint,
        "members_via": settings["members_via"]["run"] if members_via is not None else None,
        "intervals": {"method": METHOD, "resamples": resamples, "seed": bootstrap_seed},
        "metrics": results,
    }
    write_json_atomic(out_dir / "metrics.json", record)
    _print_summary(results, attacks)
    return out_dir


def _check_shadow_count(
    k: int, attacks: list[str], variance: str, leave_out: bool, rmia_offline_a: float | None
) -> None:
    if k < 2 or k % 2:
        raise ValueError(
            f"the attacks need an even number K >= 2 of shadows (each example IN for exactly half); got K={k}"
        )
    for attack in attacks:
        need = minimum_shadows(attack, variance, leave_out, rmia_offline_a is not None)
        if k < need:
            mode = "leave-one-out (no target)" if leave_out else "with a target"
            raise ValueError(
                f"{attack} ({'variance ' + variance if attack in ('online', 'offline') else 'this mode'}) {mode} needs "
                f"K >= {need} shadow models; got K={k}. With fewer, each example has a single IN or OUT reference, "
                "whose spread around its own median is exactly 0 (see the README's table of minimum K)"
            )


def _already_done(done: Path, settings: dict[str, Any]) -> bool:
    """True when ``done`` holds these results; moves an older-format file of the same inputs aside."""
    if not done.is_file():
        return False
    record = json.loads(done.read_text())
    old = record.get("settings") or {}
    if record.get("format") == FORMAT and old == settings:
        print(f"{done} already holds these results; nothing to do")
        return True
    if record.get("format") != FORMAT and old == {k: settings[k] for k in old if k in settings} and old:
        kept = done.with_name("metrics.format1.json")
        done.replace(kept)
        print(f"{done} was written by an older synthpriv without intervals; recomputing (old file kept as {kept.name})")
        return False
    raise FileExistsError(f"{done.parent} holds results of other inputs or settings; choose another --out")


def _against_target(
    data: dict[str, np.ndarray],
    target_logits: np.ndarray,
    evaluation: Evaluation,
    attacks: list[str],
    variance: Variance,
    rmia: dict[str, Any],
    resamples: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    keep, is_member = evaluation.keep, evaluation.is_member
    shadow_scores, mask = scaled_confidence(data["logits"], data["labels"]), data["mask"]
    target_scores = scaled_confidence(target_logits, data["labels"])
    results, curves, saved = {}, {}, {"is_member": is_member, "ids": data["ids"][keep]}
    for attack in attacks:
        if attack == "online":
            scores = lira_online(target_scores[keep], shadow_scores[:, keep], mask[:, keep], variance)
        elif attack == "offline":
            scores = lira_offline(target_scores[keep], shadow_scores[:, keep], mask[:, keep], variance)
        elif attack == "global":
            scores = global_threshold(target_scores[keep])
        else:
            all_scores = rmia_scores(
                true_class_probability(target_logits, data["labels"]),
                true_class_probability(data["logits"], data["labels"]),
                mask,
                evaluation.population,
                rmia["gamma"],
                rmia["offline_a"],
            )
            scores = all_scores[keep]
        results[attack] = {
            **attack_metrics(scores, is_member),
            **bootstrap_intervals(scores, is_member, DEFAULT_FPRS, resamples, seed),
        }
        curves[attack] = roc_curve(scores, is_member)
        saved[attack] = scores
    return results, curves, saved


def _rmia_leave_one_out(
    data: dict[str, np.ndarray], population: np.ndarray, rmia: dict[str, Any], keep: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each shadow in turn the target; its population = the design's population examples it did not train on."""
    probs, mask = true_class_probability(data["logits"], data["labels"]), data["mask"]
    runs = []
    for k in range(len(probs)):
        refs, ref_mask = np.delete(probs, k, axis=0), np.delete(mask, k, axis=0)
        own = population[~mask[k, population]]
        scores = rmia_scores(probs[k], refs, ref_mask, own, rmia["gamma"], rmia["offline_a"])
        runs.append((scores[keep], mask[k, keep]))
    return runs


def _leave_one_out(
    data: dict[str, np.ndarray],
    attacks: list[str],
    variance: Variance,
    population: np.ndarray | None,
    rmia: dict[str, Any],
    resamples: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    n = data["logits"].shape[1]
    keep = np.setdiff1d(np.arange(n), population) if population is not None else np.arange(n)
    shadow_scores = scaled_confidence(data["logits"], data["labels"])[:, keep]
    results, curves, saved = {}, {}, {"ids": data["ids"][keep]}
    for attack in attacks:
        if attack == "rmia":
            runs = _rmia_leave_one_out(data, population, rmia, keep)
        else:
            runs = leave_one_out(shadow_scores, data["mask"][:, keep], attack, variance)
        results[attack] = {
            **_mean_over_targets([attack_metrics(s, m) for s, m in runs]),
            **leave_one_out_intervals(runs, DEFAULT_FPRS, resamples, seed),
        }
        curves[attack] = roc_curve(np.concatenate([s for s, _ in runs]), np.concatenate([m for _, m in runs]))
        saved[attack] = np.stack([s for s, _ in runs])
    return results, curves, saved


def _mean_over_targets(per_target: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every figure over the leave-one-out targets; a TPR unsupported for any target stays None."""
    unsupported = sorted({f for r in per_target for f in r["unsupported_fprs"]}, reverse=True)
    result: dict[str, Any] = {}
    for key, _value in per_target[0].items():
        if key == "unsupported_fprs":
            result[key] = unsupported
        elif key.startswith("tpr@") and any(r[key] is None for r in per_target):
            result[key] = None
        else:
            result[key] = float(np.mean([r[key] for r in per_target]))
    result["targets"] = len(per_target)
    return result


def _ci(r: dict[str, Any], key: str) -> str:
    if r.get(key) is None:
        return "unsupported"
    low, high = r[f"{key}_ci95"]
    return f"{r[key]:.4f} [{low:.4f}, {high:.4f}]"


def _print_summary(results: dict[str, Any], attacks: list[str]) -> None:
    for attack in attacks:
        r = results[attack]
        accuracy = r["balanced_accuracy"]
        print(f"{attack:8s} AUC {_ci(r, 'auc')}  balanced acc {accuracy:.4f}  TPR@1%FPR {_ci(r, 'tpr@0.01')}")
    first = results[attacks[0]]
    if first["unsupported_fprs"]:
        fprs = ", ".join(f"{f:g}" for f in first["unsupported_fprs"])
        print(
            f"note: TPR at FPR {fprs} not reported: {first['non_members']:g} non-members support FPRs down to "
            f"{1 / first['non_members']:.2g} only (an FPR f needs at least 1/f); intervals: 95 % bootstrap"
        )
