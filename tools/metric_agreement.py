"""`synthpriv metric-agreement --config agreement.yaml`: which reconstruction metric agrees with people (SemSim §2.6).

Each entry is one victim configuration: an InversionWriter folder (``<id>_<label>_{ori,target,rec}.png``) and a
JSONL file of labels ``{"id": "00003", "recognisable": true}`` for its reconstructions (human judgements or a
stand-in judge). Every labelled reconstruction is scored **from the saved PNGs**, ``_rec`` against ``_ori`` (the
un-augmented original, never the augmented ``_target``), paired strictly by the ``<id>_<label>_`` prefix; a
reconstruction without its original, a pair of different sizes, a label for an id the folder lacks, or one original
id whose ``_ori`` pixels differ between entries is refused by name. Reconstructions without a label are left out and
counted. Statistics and their intervals: ``privacy.agreement`` (metrics are compared in their leakage-oriented
direction: lower MSE / LPIPS / ST-LPIPS / SemSim distance and higher PSNR / SSIM = more leakage).

Outputs in ``out``: ``agreement.json``, ``agreement.md``, ``scatter_<metric>.png`` (metric mean vs leakage rate,
one point per configuration), all written atomically; with ``wandb_project`` also a W&B run (offline unless
WANDB_MODE says otherwise). A rerun with the same inputs and settings does nothing; ``out`` holding results of
other inputs is refused.

SemSim on its training images would flatter it: with ``semsim_checkpoint``, ``originals`` (ids held out from
SemSim's training) is required unless ``allow_semsim_train_overlap: true`` is stated.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from privacy.agreement import CORRELATIONS, best_metric, image_level, model_level
from tools.agreement_outputs import METHOD, log_wandb, markdown, scatter
from tools.agreement_scorers import semsim_scorer, victim_of, victim_sha
from tools.files import file_sha256, finished_record, json_plain, write_json_atomic, write_text_atomic
from tools.report_inputs import ConfigPath, resolve_input
from tools.wandb_check import require_wandb_credentials

FORMAT = 1
DEFAULT_METRICS = ("mse", "psnr", "ssim", "stlpips")
IMAGE_METRICS = ("mse", "psnr", "ssim", "stlpips", "lpips")
VICTIM_METRICS = ("feature_mse", "agreement")  # through each entry's own victim (its inversion manifest)
VICTIM_UNITS = ("feature_mse",)  # in the victim's own feature units: not comparable between victims
_UNITS_REASON = (
    "in each victim's own feature units, and the entries attack different victims: no correlation "
    "across them; pairwise agreement only between reconstructions attacked through the same victim"
)
REC = re.compile(r"^(?P<id>.+)_(?P<label>-?\d+)_rec\.png$")


@dataclass
class AgreementEntry:
    """One victim configuration.

    Args:
        label: configuration name (row / point label).
        inversion_dir: folder written by InversionWriter (``<id>_<label>_ori.png`` / ``_rec.png``).
        labels: JSONL file, one ``{"id": ..., "recognisable": true|false}`` per judged reconstruction.
    """

    label: str
    inversion_dir: ConfigPath
    labels: ConfigPath


def _read_labels(path: Path, what: str) -> dict[str, bool]:
    labels: dict[str, bool] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{what}: {path} line {number} is not JSON ({err})") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("recognisable"), bool):
            raise ValueError(f'{what}: {path} line {number}: expected {{"id": ..., "recognisable": true|false}}')
        key = str(row["id"])
        if key in labels:
            raise ValueError(f"{what}: {path} labels id {key!r} twice (line {number})")
        labels[key] = row["recognisable"]
    if not labels:
        raise ValueError(f"{what}: {path} holds no labels")
    return labels


def _pairs(folder: Path, what: str) -> dict[str, tuple[Path, Path]]:
    """{id: (ori, rec)} of an inversion folder, paired by the ``<id>_<label>_`` prefix."""
    pairs: dict[str, tuple[Path, Path]] = {}
    for rec in sorted(folder.glob("*_rec.png")):
        match = REC.match(rec.name)
        if match is None:
            raise ValueError(f"{what}: {rec} is not named <id>_<label>_rec.png")
        ori = rec.with_name(f"{match['id']}_{match['label']}_ori.png")
        if not ori.is_file():
            raise FileNotFoundError(f"{what}: reconstruction {rec} has no original {ori.name} next to it")
        if match["id"] in pairs:
            raise ValueError(
                f"{what}: id {match['id']!r} has two reconstructions ({pairs[match['id']][1].name}, {rec.name})"
            )
        pairs[match["id"]] = (ori, rec)
    if not pairs:
        raise FileNotFoundError(f"{what}: {folder} holds no <id>_<label>_rec.png files")
    rows = folder / "metrics.jsonl"
    if rows.is_file():  # the writer's own record must name the same targets
        listed = {
            str(json.loads(line)["id"]): int(json.loads(line)["label"])
            for line in rows.read_text().splitlines()
            if line.strip()
        }
        for key, (_, rec) in pairs.items():
            if key in listed and not rec.name.startswith(f"{key}_{listed[key]}_"):
                raise ValueError(f"{what}: {rec.name} disagrees with metrics.jsonl (id {key} has label {listed[key]})")
    return pairs


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_originals(path: Path) -> set[str]:
    ids = {line.split("#")[0].strip() for line in path.read_text().splitlines()}
    ids.discard("")
    if not ids:
        raise ValueError(f"originals: {path} lists no ids (one original id per line)")
    return ids


def _gather(entries: list[AgreementEntry], keep: set[str] | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Per entry: ids, (ori, rec) uint8 arrays and labels of the labelled, kept reconstructions; input hashes."""
    gathered, hashes, ori_hash = [], {}, {}
    for entry in entries:
        what = f"entry {entry.label!r}"
        folder = resolve_input(entry.inversion_dir, f"{what} inversion_dir")
        label_file = resolve_input(entry.labels, f"{what} labels", kind="file")
        pairs, labels = _pairs(folder, what), _read_labels(label_file, what)
        unknown = sorted(set(labels) - set(pairs))
        if unknown:
            raise ValueError(f"{what}: {label_file} labels ids not in {folder}: {unknown[:5]} ({len(unknown)} in all)")
        ids = [i for i in pairs if i in labels and (keep is None or i in keep)]
        if not ids:
            raise ValueError(f"{what}: no labelled reconstruction left (restricted to the listed originals)")
        digest = hashlib.sha256()
        images = []
        for i in ids:
            ori, rec = (_load(p) for p in pairs[i])
            if ori.shape != rec.shape:
                raise ValueError(
                    f"{what}: {pairs[i][1].name} is {rec.shape[1]}x{rec.shape[0]} px but its original "
                    f"{pairs[i][0].name} is {ori.shape[1]}x{ori.shape[0]} px"
                )
            key = hashlib.sha256(ori.tobytes() + str(ori.shape).encode()).hexdigest()
            if ori_hash.setdefault(i, (key, folder))[0] != key:
                raise ValueError(
                    f"original id {i!r} shows different images in {ori_hash[i][1]} and {folder}: entries "
                    "must attack the same targets under the same ids to pair their reconstructions"
                )
            digest.update(f"{i}:{key}:".encode() + rec.tobytes())
            images.append((ori, rec))
        gathered.append(
            {
                "label": entry.label,
                "ids": ids,
                "images": images,
                "recognisable": np.array([labels[i] for i in ids]),
                "unlabelled": len([i for i in pairs if i not in labels]),
                "folder": str(folder),
            }
        )
        hashes[entry.label] = f"images {digest.hexdigest()} labels {file_sha256(label_file)}"
    return gathered, hashes


def _score(
    gathered: list[dict[str, Any]],
    metrics: list[str],
    lpips_backbone_file: str | None,
    semsim: Any,
    semsim_distance: str,
    psnr_max_db: float,
) -> None:
    """Adds ``values`` {metric: (n,) array} to every entry (images grouped by size into batches)."""
    import torch

    from privacy.similarity import compute_metrics

    pixel = [m for m in metrics if m in IMAGE_METRICS]
    through_victim = [m for m in metrics if m in VICTIM_METRICS]
    lpips = stlpips = None
    if "lpips" in pixel:
        from privacy.perceptual import LPIPS

        lpips = LPIPS(backbone_file=lpips_backbone_file)
    if "stlpips" in pixel:
        from privacy.perceptual import STLPIPS

        stlpips = STLPIPS("alex")
    for g in gathered:
        victim = victim_of(Path(g["folder"]), g["label"]) if through_victim else None
        values = {m: np.empty(len(g["ids"])) for m in [*pixel, *through_victim, *(["semsim"] if semsim else [])]}
        shapes = sorted({ori.shape for ori, _ in g["images"]})
        for shape in shapes:
            where = [k for k, (ori, _) in enumerate(g["images"]) if ori.shape == shape]
            a, b = (
                torch.from_numpy(np.stack([g["images"][k][j] for k in where])).permute(0, 3, 1, 2).float() / 255
                for j in (0, 1)
            )
            asked = [*pixel, *through_victim]
            out = compute_metrics(asked, a, b, victim=victim, psnr_max_db=psnr_max_db, stlpips=stlpips, lpips=lpips)
            if semsim is not None:
                out["semsim"] = semsim(a, b, semsim_distance)
            for m in values:
                values[m][where] = out[m].double().cpu().numpy()
        g["values"] = values


def metric_agreement(
    out: str,
    entries: list[AgreementEntry],
    metrics: list[str] | None = None,
    lpips_backbone_file: str | None = None,
    semsim_checkpoint: str | None = None,
    semsim_distance: Literal["normalized", "raw"] = "normalized",
    originals: str | None = None,
    allow_semsim_train_overlap: bool = False,
    psnr_max_db: float = 100.0,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
    title: str = "Metric agreement with recognisability labels",
    wandb_project: str | None = None,
) -> Path:
    """Model-level correlations and image-level pairwise agreement of each metric with the labels.

    Args:
        out: output folder.
        entries: one per victim configuration (label, inversion_dir, labels); see AgreementEntry.
        metrics: from mse, psnr, ssim, stlpips, lpips, feature_mse, agreement (default mse, psnr, ssim, stlpips);
            lpips needs lpips_backbone_file; feature_mse (penultimate features) and agreement (same predicted class)
            go through each entry's own victim, found from its inversion folder's manifest.json.
        lpips_backbone_file: torchvision AlexNet ImageNet weights for LPIPS (privacy.perceptual.LPIPS).
        semsim_checkpoint: a SemSimNet checkpoint; adds the metric 'semsim' (its distance; lower = more similar).
        semsim_distance: 'normalized' (between L2-normalised embeddings, as trained) or 'raw'.
        originals: file of original ids (one per line) to restrict to, e.g. those held out from SemSim's
            training; required with semsim_checkpoint unless allow_semsim_train_overlap.
        allow_semsim_train_overlap: accept scoring SemSim on images it may have been trained on.
        psnr_max_db: PSNR cap (an exact copy has infinite PSNR, which no mean survives).
        resamples: bootstrap draws (at least 100).
        bootstrap_seed: seed of the draws.
        title: heading of the table and plots.
        wandb_project: also log the table and plots to this W&B project.
    """
    if wandb_project is not None:
        require_wandb_credentials("metric-agreement")
    metrics = list(metrics if metrics is not None else DEFAULT_METRICS)
    bad = [m for m in metrics if m not in IMAGE_METRICS + VICTIM_METRICS]
    if bad or not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(
            f"--metrics {metrics}: give distinct names from {', '.join(IMAGE_METRICS + VICTIM_METRICS)} (SemSim comes "
            "with --semsim_checkpoint)"
        )
    if "lpips" in metrics and lpips_backbone_file is None:
        raise ValueError(
            "metric lpips needs --lpips_backbone_file (torchvision's AlexNet ImageNet weights; see "
            "privacy/perceptual.py)"
        )
    if resamples < 100:
        raise ValueError(f"--resamples must be at least 100 for a 95 % percentile interval; got {resamples}")
    labels = [e.label for e in entries]
    if not entries or len(set(labels)) != len(labels):
        raise ValueError(f"metric-agreement: give entries with unique labels; got {labels}")
    if semsim_checkpoint is not None and originals is None and not allow_semsim_train_overlap:
        raise ValueError(
            "--semsim_checkpoint needs --originals, the ids of originals held out from SemSim's training, "
            "so that SemSim is not scored on its training images (or state --allow_semsim_train_overlap true)"
        )
    keep = _read_originals(resolve_input(originals, "originals", kind="file")) if originals is not None else None
    semsim_path = resolve_input(semsim_checkpoint, "semsim_checkpoint", kind="file") if semsim_checkpoint else None
    gathered, hashes = _gather(entries, keep)
    names = metrics + (["semsim"] if semsim_path else [])
    settings = json_plain(
        {
            "inputs": hashes,
            "metrics": names,
            "semsim_checkpoint": semsim_path and file_sha256(semsim_path),
            "semsim_distance": semsim_distance if semsim_path else None,
            "originals": sorted(keep) if keep else None,
            "lpips_backbone": lpips_backbone_file and file_sha256(lpips_backbone_file),
            "victims": {g["label"]: victim_sha(Path(g["folder"])) for g in gathered}
            if any(m in VICTIM_METRICS for m in metrics)
            else None,
            "psnr_max_db": psnr_max_db,
            "bootstrap": {"resamples": resamples, "seed": bootstrap_seed},
        }
    )
    out_dir = Path(out)
    if finished_record(out_dir / "agreement.json", FORMAT, settings, "metric-agreement results"):
        return out_dir
    semsim = semsim_scorer(semsim_path) if semsim_path else None
    _score(gathered, metrics, lpips_backbone_file, semsim, semsim_distance, psnr_max_db)
    from privacy.similarity import HIGHER_IS_MORE_SIMILAR

    higher = {**HIGHER_IS_MORE_SIMILAR, "semsim": False}
    rec = [g["recognisable"] for g in gathered]
    groups = np.concatenate([g["ids"] for g in gathered])
    victims = [victim_sha(Path(g["folder"])) for g in gathered]
    results, restricted = {}, set()
    for name in names:
        vals = [g["values"][name] for g in gathered]
        ml = model_level(vals, rec, higher[name], resamples, bootstrap_seed)
        pair_groups = groups
        if name in VICTIM_UNITS and len(set(victims)) > 1:
            restricted.add(name)
            # in each victim's own feature units: only reconstructions attacked through one victim compare
            ml = {**ml, **{c: None for c in CORRELATIONS}, "unavailable": _UNITS_REASON.format(name=name)}
            pair_groups = np.concatenate([[f"{v}:{i}" for i in g["ids"]] for v, g in zip(victims, gathered)])
        results[name] = {
            "higher_is_more_similar": higher[name],
            "model_level": ml,
            "image_level": image_level(
                np.concatenate(vals), np.concatenate(rec), pair_groups, higher[name], resamples, bootstrap_seed
            ),
        }
    best = {
        "kendall": best_metric({n: r["model_level"]["kendall"] for n, r in results.items()}),
        "image": best_metric(  # only metrics scored on the same pairs compete
            {
                n: {"value": r["image_level"]["agreement"], "ci95": r["image_level"]["ci95"]}
                for n, r in results.items()
                if n not in restricted
            }
        ),
    }
    record = {
        "format": FORMAT,
        "title": title,
        "settings": settings,
        "method": METHOD,
        "metrics": results,
        "best": best,
        "entries": [
            {
                "label": g["label"],
                "inversion_dir": g["folder"],
                "reconstructions": len(g["ids"]),
                "unlabelled": g["unlabelled"],
                "leakage": float(g["recognisable"].mean()),
            }
            for g in gathered
        ],
    }
    table = markdown(record)
    for name, result in results.items():
        scatter(out_dir, name, result, record["entries"], title)
    write_text_atomic(out_dir / "agreement.md", table)
    write_json_atomic(out_dir / "agreement.json", record)  # last: its presence marks the results complete
    print(table)
    if wandb_project is not None:
        log_wandb(wandb_project, out_dir, title, results)
    return out_dir
