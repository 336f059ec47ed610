"""`synthpriv judge-labels`: stand-in "recognisable" labels for reconstructions, from an independent classifier.

The human bundle of SemSim cannot be downloaded here, so the CPU study labels its own reconstructions: a
reconstruction is **recognisable** when an independent judge (an ``ImageClassifier``) predicts the ORIGINAL's class
from it with softmax confidence >= ``threshold``. The judge must be of another architecture than every victim and
trained on other images than the victims and the inversion targets; what can be checked is checked, and a
violation is refused with the reason:

* architecture: each inversion folder's ``manifest.json`` names its victim's backbone (``victim.backbone``);
* structure: the class must come from the reconstruction's content, not its colour: with ``structure_check``
  the judge must NOT also name the original's class from the reconstruction's flat (mean-colour) version;
* images: the judge's ``trained_ids.txt`` (resolved to files through its run's ``config.yaml``) against the target
  files (``data.root`` + ``data.files`` of each manifest) and against each victim run's ``trained_ids.txt``;
  a side without a record cannot be checked and is reported under ``unchecked`` in the manifest.

Inputs: ``entries: [{label, inversion_dir}]`` (InversionWriter folders: ``<id>_<cls>_{ori,rec}.png``). Outputs
(``out``; written in a temporary folder beside it and renamed into place, so ``out`` is whole or absent)::

    <label>/labels.jsonl          {id, recognisable, judge_class, confidence, label, p_label, flat_*} per rec.
    bundle_train/train_with_ori/  HumanAnnotationDataModule's layout for the TRAIN originals: N/<id>_ori.png +
    bundle_heldout/train_with_ori/  recognisable <id>_<label>_rec.png, -N/ the unrecognisable ones (N = int(id))
    originals_train.txt           original ids SemSim may train on (seeded split BY ORIGINAL, ``heldout_fraction``)
    originals_heldout.txt         original ids held out for the agreement (metric-agreement's ``originals``)
    manifest.json                 inputs (judge sha256, manifests' sha256, threshold, split), counts, judge accuracy
                                  on the originals, unchecked independence conditions

A rerun with the same inputs does nothing; other inputs into an existing ``out`` are refused (nothing is
overwritten). HumanAnnotationDataModule cannot restrict itself to a list of groups, hence two bundles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tools.files import file_sha256, write_json_atomic, write_text_atomic

_REC = re.compile(r"^(\d+)_(\d+)_rec\.png$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fail(message: str) -> None:
    raise ValueError(f"judge-labels: {message}")


def _run_config(checkpoint: Path) -> dict[str, Any]:
    """The data init_args of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or {}."""
    config = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return {}
    return ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("init_args") or {}


def trained_files(checkpoint: Path) -> set[Path] | None:
    """Absolute files a run trained on: its trained_ids.txt (``train<k>/<cls>/<file>``, ``val/...``) mapped
    through its config's train_roots / val_root; None when not recorded."""
    from tools.trained_ids import read_trained_ids, run_folder_of

    run = run_folder_of(checkpoint)
    ids = read_trained_ids(run) if (run / "trained_ids.txt").is_file() else None
    data = _run_config(checkpoint)
    if ids is None or not data:
        return None
    roots = data.get("train_roots") or []
    roots = [roots] if isinstance(roots, str) else list(roots)
    files = set()
    for i in ids:
        tag, rest = i.split("/", 1)
        if tag.startswith("train") and tag[5:].isdigit() and int(tag[5:]) < len(roots):
            base = roots[int(tag[5:])]
        elif tag in ("val", "test") and data.get(f"{tag}_root"):
            base = data[f"{tag}_root"]
        else:
            return None  # an id this mapping does not know: not checkable
        files.add((Path(base).expanduser() / rest).resolve())
    return files


def _read_entry(entry: dict[str, Any], k: int) -> dict[str, Any]:
    if not isinstance(entry, dict) or set(entry) != {"label", "inversion_dir"}:
        _fail(f"entries[{k}] must be {{label, inversion_dir}}; found {entry!r}")
    label, folder = str(entry["label"]), Path(entry["inversion_dir"])
    if not _LABEL.match(label):
        _fail(f"entries[{k}].label {label!r} must be a plain name (letters, digits, . _ -): it names a folder")
    if not folder.is_dir():
        _fail(f"entries[{k}] ({label}): inversion_dir {folder} does not exist; expected an InversionWriter folder")
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        _fail(f"entries[{k}] ({label}): {manifest_file} is missing; is {folder} an inversion folder?")
    manifest = json.loads(manifest_file.read_text())
    if not manifest.get("complete"):
        _fail(f"entries[{k}] ({label}): {manifest_file} is not complete; finish the inversion first")
    recs = {}
    for f in sorted(folder.glob("*_rec.png")):
        match = _REC.match(f.name)
        if match:
            ori = folder / f"{match[1]}_{match[2]}_ori.png"
            if not ori.is_file():
                _fail(f"entries[{k}] ({label}): reconstruction {f} has no original {ori.name} beside it")
            recs[match[1]] = (int(match[2]), f, ori)
    if not recs:
        _fail(f"entries[{k}] ({label}): {folder} holds no <id>_<label>_rec.png reconstruction")
    data = manifest.get("data") or {}
    sources = dict(zip(data.get("ids") or [], data.get("files") or [], strict=False))
    root = data.get("root")
    targets = {i: (Path(root) / sources[i]).resolve() for i in recs if root and i in sources}
    return {"label": label, "dir": folder, "manifest": manifest, "manifest_file": manifest_file, "recs": recs,
            "targets": targets}  # fmt: skip


def check_independence(judge_hp: dict[str, Any], judge_file: Path, entries: list[dict[str, Any]]) -> list[str]:
    """Refuse a judge that shares a victim's architecture or images; return what could not be checked."""
    unchecked, backbone = [], judge_hp.get("backbone")
    judge_files = trained_files(judge_file)
    if judge_files is None:
        unchecked.append(f"judge {judge_file}: no trained_ids.txt/config.yaml, its training images are unchecked")
    for e in entries:
        victim = e["manifest"].get("victim") or {}
        where = f"entry '{e['label']}' ({e['manifest_file']})"
        if victim.get("backbone") is None:
            unchecked.append(f"{where}: no victim.backbone in the manifest")
        elif victim["backbone"] == backbone:
            _fail(f"judge_checkpoint {judge_file} is a {backbone!r} classifier, the same architecture as the victim "
                  f"of {where}; the judge must be of another architecture than every victim")  # fmt: skip
        names = (e["manifest"].get("data") or {}).get("class_names")
        if (
            names is not None
            and judge_hp.get("class_names") is not None
            and list(names) != list(judge_hp["class_names"])
        ):
            _fail(f"judge_checkpoint {judge_file} classifies {list(judge_hp['class_names'])}; the targets of {where} "
                  f"have classes {list(names)}")  # fmt: skip
        if judge_files is None:
            continue
        if len(e["targets"]) < len(e["recs"]):
            unchecked.append(f"{where}: target source files not in the manifest")
        shared = sorted(set(e["targets"].values()) & judge_files)
        if shared:
            _fail(f"the judge {judge_file} was trained on {len(shared)} of the inversion targets of {where} (e.g. "
                  f"{shared[0]}); train the judge on images disjoint from the targets")  # fmt: skip
        victim_ckpt = e["manifest"].get("victim_checkpoint_path")
        victim_files = trained_files(Path(victim_ckpt)) if victim_ckpt else None
        if victim_files is None:
            unchecked.append(f"{where}: the victim's training images are unrecorded")
            continue
        shared = sorted(victim_files & judge_files)
        if shared:
            _fail(f"the judge {judge_file} and the victim of {where} were trained on {len(shared)} common images "
                  f"(e.g. {shared[0]}); train the judge on images disjoint from every victim's")  # fmt: skip
    return unchecked


@torch.no_grad()
def _judge(
    net: torch.nn.Module, transform: Any, files: list[Path], batch_size: int, flat: bool = False
) -> torch.Tensor:
    """Softmax probabilities of the judge for each image file (``flat``: each image replaced by its per-channel
    mean, i.e. its colour without any structure)."""
    from datamodules.folders import load_rgb

    probs = []
    for start in range(0, len(files), batch_size):
        batch = torch.stack([transform(load_rgb(f)) for f in files[start : start + batch_size]])
        if flat:
            batch = batch.mean(dim=(2, 3), keepdim=True).expand_as(batch)
        probs.append(torch.softmax(net(batch).float(), dim=1))
    return torch.cat(probs)


def split_originals(ids: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of original ids into (train, held-out), both sorted and non-empty."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_held = min(max(round(heldout_fraction * len(ids)), 1), len(ids) - 1)
    held = sorted(ids[i] for i in order[:n_held])
    return sorted(set(ids) - set(held)), held


def _fingerprint(judge_file: Path, entries: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "judge_checkpoint_sha256": file_sha256(judge_file),
        "entries": [
            {
                "label": e["label"],
                "inversion_dir": str(e["dir"].resolve()),
                "manifest_sha256": file_sha256(e["manifest_file"]),
                "reconstructions": len(e["recs"]),
            }
            for e in entries
        ],
        **settings,
    }


def judge_labels(
    judge_checkpoint: str,
    entries: list[dict[str, Any]],
    out: str,
    threshold: float = 0.5,
    heldout_fraction: float = 0.5,
    split_seed: int = 0,
    batch_size: int = 64,
    structure_check: bool = True,
) -> dict[str, Any]:
    """Label reconstructions recognisable or not with an independent judge classifier (see the module docstring).

    Args:
        judge_checkpoint: the judge, an ImageClassifier run folder (best, else last checkpoint) or .ckpt file; of
            another architecture than every victim, trained on images disjoint from the victims' and the targets.
        entries: ``[{label, inversion_dir}]``: one InversionWriter folder per victim configuration.
        out: output folder (labels per entry, the two bundles, the split of originals, manifest.json).
        threshold: a reconstruction is recognisable when the judge's top class is the original's class AND its
            softmax probability is >= threshold (0.5 by default: a majority of the judge's belief on 10 classes).
        heldout_fraction: share of originals held out from SemSim training (the agreement is measured on them).
        split_seed: seed of the split by original.
        batch_size: images per judge forward pass.
        structure_check: also require that the judge does NOT name the original's class (with p >= threshold)
            from the reconstruction's flat version (its per-channel mean colour): a classifier gives a confident
            class to a blank or grey image (on animal-mnist a flat grey image is 'zebra' at p ~0.97), and that
            class must not count as recognised from a reconstruction that shows nothing.
    """
    from datamodules.transforms import build_transform
    from lightning_modules.inversion import load_victim, victim_training_data

    if not 0.0 < threshold <= 1.0:
        _fail(f"threshold must be in (0, 1]; got {threshold}")
    if not 0.0 < heldout_fraction < 1.0:
        _fail(f"heldout_fraction must be in (0, 1); got {heldout_fraction}")
    if not entries:
        _fail("entries is empty; give [{label, inversion_dir}, ...]")
    read = [_read_entry(e, k) for k, e in enumerate(entries)]
    labels = [e["label"] for e in read]
    if len(set(labels)) != len(labels):
        _fail(f"entry labels must be distinct; found {labels}")
    if not Path(judge_checkpoint).exists():
        _fail(f"judge_checkpoint {judge_checkpoint} does not exist (an ImageClassifier run folder or .ckpt file)")
    try:
        net, judge_hp, file = load_victim(judge_checkpoint)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err).replace("model.victim_checkpoint", "judge_checkpoint"))
    judge_file = Path(file)
    unchecked = check_independence(judge_hp, judge_file, read)
    settings = {"threshold": threshold, "heldout_fraction": heldout_fraction, "split_seed": split_seed,
                "structure_check": structure_check}  # fmt: skip
    identity = _fingerprint(judge_file, read, settings)
    out_dir = Path(out)
    if (out_dir / "manifest.json").is_file():
        old = json.loads((out_dir / "manifest.json").read_text())
        if {k: old.get(k) for k in identity} == identity:
            print(f"judge-labels: {out_dir} is up to date (same judge, inversions and settings); nothing to do")
            return old
        differs = [k for k in identity if old.get(k) != identity[k]]
        _fail(f"{out_dir} holds labels of other inputs (differs: {', '.join(differs)}); choose another out")
    if out_dir.exists() and any(out_dir.iterdir()):
        _fail(f"{out_dir} exists and holds files but no manifest.json; choose another out (nothing is overwritten)")

    # the same original id must be the same image in every entry
    sources: dict[str, tuple[int, Path]] = {}
    for e in read:
        for i, (cls, _, ori) in e["recs"].items():
            if i in sources and sources[i][0] != cls:
                _fail(f"original {i} has class {sources[i][0]} in one entry and {cls} in '{e['label']}'")
            sources.setdefault(i, (cls, ori))
    seen = victim_training_data(str(judge_file)) or {}
    norm = seen.get("normalize", True)
    mean = seen.get("mean") if norm else None
    std = seen.get("std") if norm else None
    size = int(judge_hp.get("image_size") or _run_config(judge_file).get("image_size") or 32)
    transform = build_transform("none", size, resize=True, mean=mean, std=std, train=False)
    net.eval()
    ids = sorted(sources)
    ori_probs = _judge(net, transform, [sources[i][1] for i in ids], batch_size)
    ori_correct = sum(int(ori_probs[k].argmax()) == sources[i][0] for k, i in enumerate(ids))
    train_ids, held_ids = split_originals(ids, heldout_fraction, split_seed)
    held = set(held_ids)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        counts = {}
        for e in read:
            rec_ids = sorted(e["recs"])
            probs = _judge(net, transform, [e["recs"][i][1] for i in rec_ids], batch_size)
            flat = _judge(net, transform, [e["recs"][i][1] for i in rec_ids], batch_size, flat=True)
            rows = []
            for k, i in enumerate(rec_ids):
                cls, rec, _ = e["recs"][i]
                judge_class, confidence = int(probs[k].argmax()), float(probs[k].max())
                blank = structure_check and int(flat[k].argmax()) == cls and float(flat[k].max()) >= threshold
                good = judge_class == cls and confidence >= threshold and not blank
                rows.append(
                    {"id": i, "recognisable": good, "judge_class": judge_class, "confidence": confidence, "label": cls,
                     "p_label": float(probs[k][cls]), "flat_class": int(flat[k].argmax()),
                     "flat_confidence": float(flat[k].max())}
                )  # fmt: skip
                group = tmp / ("bundle_heldout" if i in held else "bundle_train") / "train_with_ori"
                folder = group / (str(int(i)) if good else f"-{int(i)}")
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(rec, folder / f"{i}_{e['label']}_rec.png")
            write_text_atomic(tmp / e["label"] / "labels.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            counts[e["label"]] = {"reconstructions": len(rows), "recognisable": sum(r["recognisable"] for r in rows)}
        for i in ids:
            group = tmp / ("bundle_heldout" if i in held else "bundle_train") / "train_with_ori" / str(int(i))
            group.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources[i][1], group / f"{i}_ori.png")
        write_text_atomic(tmp / "originals_train.txt", "".join(f"{i}\n" for i in train_ids))
        write_text_atomic(tmp / "originals_heldout.txt", "".join(f"{i}\n" for i in held_ids))
        manifest = {
            **identity,
            "judge_checkpoint_path": str(judge_file.resolve()),
            "judge_backbone": judge_hp.get("backbone"),
            "judge_accuracy_on_originals": ori_correct / len(ids),
            "rule": "recognisable = judge's top class is the original's class with softmax >= threshold"
            + (", and not so for the reconstruction's flat (mean-colour) version" if structure_check else ""),
            "counts": counts,
            "originals": {"train": len(train_ids), "heldout": len(held_ids)},
            "unchecked": unchecked,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        os.chmod(tmp, 0o777 & ~_umask())
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    summary = ", ".join(f"{k} {v['recognisable']}/{v['reconstructions']} recognisable" for k, v in counts.items())
    print(
        f"judge-labels: {out_dir}: judge {judge_hp.get('backbone')} names {ori_correct}/{len(ids)} originals; {summary}"
    )
    for note in unchecked:
        print(f"judge-labels: unchecked: {note}")
    return manifest
