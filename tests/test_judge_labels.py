"""`synthpriv judge-labels` (tools/judge_labels.py): the labelling rule on fabricated inversion folders with a tiny
judge trained here through cli.main, the bundles HumanAnnotationDataModule reads, the split by original, reruns,
the one-line refusals, and that every config of configs/semsim/cpu_study.yaml parses (in-process --print_config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import one_line_error, printed_config, study_steps, tiny_config, tiny_dataset
from PIL import Image

from cli import main
from tools.commands import TOOLS
from tools.judge_labels import judge_labels, split_originals
from tools.study import TRAINING_COMMANDS
from tools.study_plan import step_argv

ROOT = Path(__file__).resolve().parents[1]
STUDY = "configs/semsim/cpu_study.yaml"
CLASSES = {"ant": 8, "bee": 8, "cow": 8}


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, judge run folder): a resnet8-1 trained 4 epochs on the tiny train split (a few seconds)."""
    tmp = tmp_path_factory.mktemp("judge")
    data = tiny_dataset(tmp / "data", CLASSES, size=16)
    config = tiny_config(tmp / "fit.yaml", data, backbone="resnet8-1", max_epochs=4, lr=0.01)
    runs = tmp / "runs"
    main(["fit", "--config", str(config), "--run.root", str(runs), "--run.study", "s", "--run.name", "judge"])
    return data, runs / "s" / "judge"


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _inversion(
    folder: Path, root: Path, backbone: str = "convnet-64", victim: Path | None = None, copy: bool = True
) -> Path:
    """An InversionWriter-like folder over every image of ``root``: original = the image; reconstruction = the
    image itself (``copy``) or another class's image."""
    names = sorted(p.name for p in root.iterdir())
    files = [f"{c}/{p.name}" for c in names for p in sorted((root / c).iterdir())]
    ids = [f"{i:06d}" for i in range(len(files))]
    for k, (i, f) in enumerate(zip(ids, files, strict=True)):
        label = names.index(f.split("/")[0])
        image = np.asarray(Image.open(root / f).convert("RGB").resize((32, 32)))
        other = np.asarray(Image.open(root / files[(k + 8) % len(files)]).convert("RGB").resize((32, 32)))
        _png(folder / f"{i}_{label}_ori.png", image)
        _png(folder / f"{i}_{label}_rec.png", image if copy else other)
    manifest = {"victim": {"backbone": backbone, "class_names": names}, "complete": True,
                "victim_checkpoint_path": str(victim) if victim else None,
                "data": {"root": str(root.resolve()), "ids": ids, "files": files, "class_names": names}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _expected(run: Path, rec: Path, label: int, threshold: float, structure_check: bool = False) -> bool:
    """The rule recomputed: the judge's top class is the original's class with softmax >= threshold."""
    from datamodules.folders import load_rgb
    from datamodules.transforms import build_transform
    from lightning_modules.inversion import load_victim

    net, _, _ = load_victim(str(run))
    transform = build_transform("none", 32, resize=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                train=False)  # fmt: skip
    x = transform(load_rgb(rec))[None]
    with torch.no_grad():
        p = torch.softmax(net.eval()(x), dim=1)[0]
        flat = torch.softmax(net(x.mean(dim=(2, 3), keepdim=True).expand_as(x)), dim=1)[0]
    blank = structure_check and int(flat.argmax()) == label and float(flat.max()) >= threshold
    return int(p.argmax()) == label and float(p.max()) >= threshold and not blank


def test_rule_bundles_split_and_rerun(judge: tuple[Path, Path], tmp_path: Path, capsys: Any) -> None:
    from datamodules.human_annotations import HumanAnnotationDataModule

    data, run = judge
    entries = [
        {"label": "a", "inversion_dir": str(_inversion(tmp_path / "inv-a", data / "test"))},
        {"label": "b", "inversion_dir": str(_inversion(tmp_path / "inv-b", data / "test", "resnet20-4", copy=False))},
    ]
    out = tmp_path / "out"
    # the tiny classes differ by colour, so the structure check (flat colour must not name the class) is off here
    manifest = judge_labels(str(run), entries, str(out), threshold=0.4, split_seed=3, structure_check=False)
    assert manifest["judge_backbone"] == "resnet8-1" and manifest["unchecked"] == [
        f"entry '{e['label']}' ({e['inversion_dir']}/manifest.json): the victim's training images are unrecorded"
        for e in entries
    ]
    by_entry = {
        e: [json.loads(line) for line in (out / e / "labels.jsonl").read_text().splitlines()] for e in ("a", "b")
    }
    rows = by_entry["a"]
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(24)]
    for e, entry_rows in by_entry.items():
        for r in entry_rows:
            rec = tmp_path / f"inv-{e}" / f"{r['id']}_{r['label']}_rec.png"
            assert r["recognisable"] == _expected(run, rec, r["label"], 0.4)
            assert r["recognisable"] == (r["judge_class"] == r["label"] and r["confidence"] >= 0.4)
    # copies are mostly recognised, other classes' images mostly not
    assert sum(r["recognisable"] for r in rows) > sum(r["recognisable"] for r in by_entry["b"])
    # split by original: disjoint, complete, and each bundle holds only its own originals
    train = (out / "originals_train.txt").read_text().split()
    held = (out / "originals_heldout.txt").read_text().split()
    assert not set(train) & set(held) and sorted(train + held) == [r["id"] for r in rows] and len(held) == 12
    assert (train, held) == split_originals([r["id"] for r in rows], 0.5, 3)
    for name, ids in (("bundle_train", train), ("bundle_heldout", held)):
        root = out / name / "train_with_ori"
        assert {d.name.lstrip("-") for d in root.iterdir()} == {str(int(i)) for i in ids}
        for e, entry_rows in by_entry.items():
            for r in (r for r in entry_rows if r["id"] in ids):
                folder = root / (str(int(r["id"])) if r["recognisable"] else f"-{int(r['id'])}")
                assert (folder / f"{r['id']}_{e}_rec.png").is_file()
                assert (root / str(int(r["id"])) / f"{r['id']}_ori.png").is_file()
        dm = HumanAnnotationDataModule(root=str(root), val_fraction=0.0, test_fraction=0.0, image_size=16)
        dm.setup("fit")
        positives = {int(r["id"]) for e in by_entry for r in by_entry[e] if r["id"] in ids and r["recognisable"]}
        assert {g.group_id for g in dm.groups} <= positives and len(dm.groups) >= 1
    # a rerun with the same inputs does nothing; other inputs into the same folder are refused
    stamp = (out / "manifest.json").stat().st_mtime_ns
    judge_labels(str(run), entries, str(out), threshold=0.4, split_seed=3, structure_check=False)
    assert "up to date" in capsys.readouterr().out and (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"holds labels of other inputs \(differs: threshold\)"):
        judge_labels(str(run), entries, str(out), threshold=0.9, split_seed=3, structure_check=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left behind
    # with the structure check: a class the judge also gives to the flat (mean-colour) image is not recognised
    judge_labels(str(run), entries[:1], str(tmp_path / "flat"), threshold=0.4)
    for r in map(json.loads, (tmp_path / "flat" / "a" / "labels.jsonl").read_text().splitlines()):
        blank = r["flat_class"] == r["label"] and r["flat_confidence"] >= 0.4
        assert r["recognisable"] == (r["judge_class"] == r["label"] and r["confidence"] >= 0.4 and not blank)
        rec = tmp_path / "inv-a" / f"{r['id']}_{r['label']}_rec.png"
        assert r["recognisable"] == _expected(run, rec, r["label"], 0.4, True)


def _error(call: Any) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.startswith("judge-labels: ")
    return message


def test_refusals_each_one_line(judge: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = judge
    same = [{"label": "v", "inversion_dir": str(_inversion(tmp_path / "same", data / "test", "resnet8-1"))}]
    assert "the same architecture as the victim of entry 'v'" in _error(
        lambda: judge_labels(str(run), same, str(tmp_path / "o1"))
    )
    on_targets = [{"label": "v", "inversion_dir": str(_inversion(tmp_path / "t", data / "train"))}]
    message = _error(lambda: judge_labels(str(run), on_targets, str(tmp_path / "o2")))
    assert "was trained on 24 of the inversion targets of entry 'v'" in message
    victim = tmp_path / "victim"  # a victim run trained on the judge's training images
    shutil.copytree(run, victim, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    shared = [
        {
            "label": "v",
            "inversion_dir": str(_inversion(tmp_path / "s", data / "test", victim=victim / "checkpoints/x.ckpt")),
        }
    ]
    assert "were trained on 24 common images" in _error(lambda: judge_labels(str(run), shared, str(tmp_path / "o3")))
    missing = [{"label": "v", "inversion_dir": str(tmp_path / "nowhere")}]
    assert "inversion_dir" in _error(lambda: judge_labels(str(run), missing, str(tmp_path / "o4")))
    ok = [{"label": "v", "inversion_dir": str(_inversion(tmp_path / "ok", data / "test"))}]
    assert "does not exist" in _error(lambda: judge_labels(str(tmp_path / "no-judge"), ok, str(tmp_path / "o5")))
    next((tmp_path / "ok").glob("*_ori.png")).unlink()
    assert "has no original" in _error(lambda: judge_labels(str(run), ok, str(tmp_path / "o6")))


def test_command_line_error_is_one_line(judge: tuple[Path, Path], tmp_path: Path, monkeypatch: Any) -> None:
    data, run = judge
    folder = _inversion(tmp_path / "v", data / "test", "resnet8-1")
    entries = [{"label": "v", "inversion_dir": str(folder)}]
    config = {"judge_checkpoint": str(run), "out": str(tmp_path / "o"), "entries": entries}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    message = one_line_error(monkeypatch, ["judge-labels", "--config", str(tmp_path / "c.yaml")])
    assert "same architecture" in message


# the study's configs parse ------------------------------------------------------------------------------------


def test_every_study_config_exists_and_is_used() -> None:
    study, steps = study_steps(STUDY)
    used = {c for s in steps for c in s.configs}
    for path in (ROOT / "configs/semsim/cpu").glob("*.yaml"):
        assert f"configs/semsim/cpu/{path.name}" in used, f"{path.name} is used by no step"
    assert study == "semsim_cpu" and len([s for s in steps if s.name.startswith("victim-")]) >= 4


@pytest.mark.parametrize("name", [s.name for s in study_steps(STUDY)[1] if s.command != "data"])
def test_study_step_parses(name: str) -> None:
    study, steps = study_steps(STUDY)
    step = next(s for s in steps if s.name == name)
    if step.command not in TRAINING_COMMANDS and step.command not in TOOLS:
        pytest.skip(f"synthpriv {step.command} is not registered yet")
    printed = printed_config(step_argv(study, step))
    if step.name == "judge":
        assert printed["model"]["init_args"]["backbone"] == "resnet20-2"
        assert printed["data"]["init_args"]["train_roots"] == "data/animal-mnist/val"
    if step.name.startswith("victim-"):
        args = printed["data"]["init_args"]
        assert args["train_roots"] == "data/animal-mnist/train" and args["val_root"] is None
        assert printed["model"]["init_args"]["backbone"] in ("convnet-32", "convnet-16", "resnet8-1")
        early = step.name.endswith("_early")
        assert printed["trainer"]["limit_train_batches"] == (1 if early else None)
        assert printed["trainer"]["max_epochs"] == (1 if early else 3)
    if step.command == "judge-labels":
        assert printed["threshold"] == 0.5 and len(printed["entries"]) >= 4
    if step.name.startswith("invert-"):  # the attack's augmentation is its victim's
        victim = next(s for s in steps if s.name == step.needs[0])
        victim_args = printed_config(step_argv(study, victim))["data"]["init_args"]
        assert printed["data"]["init_args"]["train_transform"] == victim_args["transform"]
    if step.command == "metric-agreement":  # semsim comes from the checkpoint, scored on held-out originals only
        assert printed["semsim_checkpoint"] in {o for s in steps for o in s.outputs}
        assert printed["originals"].endswith("judge-labels/originals_heldout.txt")
