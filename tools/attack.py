"""`synthpriv attack SHADOWS OUT [--target T --members_file M]`: membership inference from saved logits.

Writes per-example scores, metrics (AUC, balanced accuracy, TPR at low FPR) and a log-log ROC plot.

Inputs (npz):
  shadows: ``logits`` (K, N, Q, C), ``labels`` (N,), ``ids`` (N,), ``mask`` (K, N) bool, every shadow model's
      outputs on all N examples under Q query augmentations, and which examples each model trained on.
  target (optional): ``logits`` (N, C) or (N, Q, C) and ``ids`` (N,), e.g. the PredictionWriter's file.
      With a target, ``members_file`` lists (one id per line) the examples the target trained on.
      Without a target, each shadow in turn is the target and the others are references (leave-one-out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from privacy.lira import Variance, global_threshold, leave_one_out, lira_offline, lira_online, scaled_confidence
from privacy.membership import check_disjoint, ids_hash
from privacy.metrics import attack_metrics, plot_roc, roc_curve
from tools.files import file_sha256, write_bytes_atomic, write_json_atomic

Attack = Literal["online", "offline", "global"]


def _load(path: str, keys: set[str], what: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--{what}: {file} does not exist")
    with np.load(file, allow_pickle=False) as data:
        missing = keys - set(data.files)
        if missing:
            raise ValueError(f"--{what}: {file} lacks {sorted(missing)} (has {sorted(data.files)})")
        return {k: data[k] for k in data.files}


def load_shadows(path: str) -> dict[str, np.ndarray]:
    """Read and check a shadow-logits file."""
    data = _load(path, {"logits", "labels", "ids", "mask"}, "shadows")
    logits, mask = data["logits"], data["mask"]
    if logits.ndim == 3:
        logits = data["logits"] = logits[:, :, None, :]
    if logits.ndim != 4:
        raise ValueError(f"--shadows: logits must be (K, N, Q, C); got shape {logits.shape}")
    k, n = logits.shape[:2]
    if mask.shape != (k, n):
        raise ValueError(f"--shadows: mask has shape {mask.shape} but the logits are for K={k} models, N={n} examples")
    if len(data["ids"]) != n or len(data["labels"]) != n:
        raise ValueError(f"--shadows: {len(data['ids'])} ids and {len(data['labels'])} labels for N={n} examples")
    if "ids_hash" in data and str(data["ids_hash"]) != ids_hash([str(i) for i in data["ids"]]):
        raise ValueError(f"--shadows: {path} ids do not match its ids_hash (the file was edited or reordered)")
    return data


def run_attack(
    shadows: str,
    out: str,
    target: str | None = None,
    target_checkpoint: str | None = None,
    members_file: str | None = None,
    non_members_file: str | None = None,
    attacks: list[Attack] | None = None,
    variance: Variance = "fixed",
    device: str = "cpu",
) -> Path:
    """Score membership with LiRA (online, offline) and the global-threshold baseline.

    Writes ``out/metrics.json``, ``out/scores.npz``, ``out/roc.npz`` and ``out/roc.png``. A rerun with the
    same inputs does nothing; with other inputs it stops instead of overwriting.

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
        attacks: which attacks to run; default all three.
        variance: per_example, fixed (recommended below 64 shadows) or tckr_global.
        device: where the target checkpoint runs (cpu, cuda).
    """
    attacks = list(attacks or ["online", "offline", "global"])
    out_dir = Path(out)
    if target is not None and target_checkpoint is not None:
        raise ValueError("give --target (saved logits) or --target_checkpoint, not both")
    if target_checkpoint is not None:
        from tools.target_logits import resolve_target_checkpoint

        target_checkpoint = resolve_target_checkpoint(target_checkpoint)
    if (target or target_checkpoint) and members_file is None:
        members_file, non_members_file = _design_member_files(shadows, non_members_file)
    inputs = {
        p: file_sha256(p) for p in (shadows, target, target_checkpoint, members_file, non_members_file) if p is not None
    }
    settings = {"inputs": inputs, "attacks": attacks, "variance": variance}
    done = out_dir / "metrics.json"
    if done.is_file():
        if json.loads(done.read_text()).get("settings") == settings:
            print(f"{done} already holds these results; nothing to do")
            return out_dir
        raise FileExistsError(f"{out_dir} holds results of other inputs or settings; choose another --out")
    data = load_shadows(shadows)
    k = data["logits"].shape[0]
    if "online" in attacks and (k < 2 or k % 2):
        raise ValueError(
            f"online LiRA needs an even number K >= 2 of shadows (each example IN for exactly half); got K={k}"
        )
    if target_checkpoint is not None:
        from tools.target_logits import compute_target_logits

        target = str(compute_target_logits(target_checkpoint, shadows, out_dir / "target_logits.npz", device))
    shadow_scores = scaled_confidence(data["logits"], data["labels"])
    results, curves, saved = {}, {}, {}
    if target is None:
        for attack in attacks:
            runs = leave_one_out(shadow_scores, data["mask"], attack, variance)
            per_target = [attack_metrics(s, m) for s, m in runs]
            results[attack] = {key: float(np.mean([r[key] for r in per_target])) for key in per_target[0]}
            results[attack]["targets"] = len(runs)
            curves[attack] = roc_curve(np.concatenate([s for s, _ in runs]), np.concatenate([m for _, m in runs]))
            saved[attack] = np.stack([s for s, _ in runs])
    else:
        target_scores, is_member, keep = _target_inputs(target, members_file, non_members_file, data)
        shadow_scores, mask = shadow_scores[:, keep], data["mask"][:, keep]
        for attack in attacks:
            if attack == "online":
                scores = lira_online(target_scores, shadow_scores, mask, variance)
            elif attack == "offline":
                scores = lira_offline(target_scores, shadow_scores, mask, variance)
            else:
                scores = global_threshold(target_scores)
            results[attack] = attack_metrics(scores, is_member)
            curves[attack] = roc_curve(scores, is_member)
            saved[attack] = scores
        saved["is_member"] = is_member
    saved["ids"] = data["ids"] if target is None else data["ids"][keep]
    write_bytes_atomic(out_dir / "scores.npz", lambda handle: np.savez(handle, **saved))
    roc = {f"{a}_{axis}": curve for a in attacks for axis, curve in zip(("fpr", "tpr"), curves[a])}
    write_bytes_atomic(out_dir / "roc.npz", lambda handle: np.savez(handle, **roc))
    plot_roc({f"{a} (AUC {results[a]['auc']:.3f})": curves[a] for a in attacks}, out_dir / "roc.png", "membership")
    record = {"settings": settings, "shadows": int(k), "target_checkpoint": target_checkpoint, "metrics": results}
    write_json_atomic(done, record)
    for attack in attacks:
        r = results[attack]
        print(
            f"{attack:8s} AUC {r['auc']:.4f}  balanced acc {r['balanced_accuracy']:.4f}  TPR@1%FPR {r['tpr@0.01']:.4f}"
        )
    return out_dir


def _design_member_files(shadows: str, non_members_file: str | None) -> tuple[str, str | None]:
    """The member lists the shadows' MembershipDataModule wrote for the target (``--members_file`` unset)."""
    folder = Path(shadows).parent / "membership"
    members = folder / "target_members.txt"
    if not members.is_file():
        raise ValueError(
            f"--members_file is required with a target: {members} does not exist; give the ids the target trained "
            "on, one per line"
        )
    if non_members_file is None and (folder / "target_non_members.txt").is_file():
        non_members_file = str(folder / "target_non_members.txt")
    return str(members), non_members_file


def _read_ids(path: str, option: str, known: list[str]) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--{option}: {file} does not exist")
    ids = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    unknown = sorted(set(ids) - set(known))
    if unknown:
        raise ValueError(f"--{option}: {len(unknown)} ids are not among the examples, e.g. {unknown[:3]}")
    return ids


def _target_inputs(
    target: str, members_file: str | None, non_members_file: str | None, shadows: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target scores (M, Q), membership (M,) and the evaluated example positions (M,) in the shadows' order."""
    data = _load(target, {"logits", "ids"}, "target")
    logits = data["logits"][:, None, :] if data["logits"].ndim == 2 else data["logits"]
    if ids_hash([str(i) for i in data["ids"]]) != ids_hash([str(i) for i in shadows["ids"]]):
        raise ValueError(
            f"--target: {target} holds logits for other examples or in another order than --shadows; "
            "predict on the same split with the same data settings"
        )
    if logits.shape[-1] != shadows["logits"].shape[-1]:
        raise ValueError(f"--target has {logits.shape[-1]} classes but the shadows have {shadows['logits'].shape[-1]}")
    if members_file is None:
        raise ValueError("--members_file is required with --target: the ids the target trained on, one per line")
    ids = [str(i) for i in shadows["ids"]]
    members = _read_ids(members_file, "members_file", ids)
    if non_members_file is None:
        non_members = [i for i in ids if i not in set(members)]
    else:
        non_members = _read_ids(non_members_file, "non_members_file", ids)
        check_disjoint(members, non_members)
    keep = np.flatnonzero(np.isin(ids, members) | np.isin(ids, non_members))
    is_member = np.isin(np.asarray(ids)[keep], members)
    return scaled_confidence(logits, shadows["labels"])[keep], is_member, keep
