"""spinml-leakage and spinml-report on a tiny husky-layout fixture, and every step of configs/spinml/cpu_study.yaml
parses (in-process --print_config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cli_helpers import printed_config, study_steps

from privacy.image_leakage import wilson_interval
from tools.commands import TOOLS
from tools.spinml_demo_data import build_spinml_demo
from tools.spinml_leakage import spinml_leakage
from tools.spinml_report import SpinMLRun, spinml_report
from tools.study import TRAINING_COMMANDS
from tools.study_plan import step_argv

ROOT = Path(__file__).resolve().parents[1]
STUDY = "configs/spinml/cpu_study.yaml"
CLASSES = ["cat", "dog"]
FAST = {"embedder_weights": None, "embed_resolution": 32, "canvas": 64, "resamples": 100, "pairs_shown": 4}


@pytest.fixture(scope="module")
def husky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 6 images at 32 px: real/ plus the builder's hand-made L0/L1/L2 levels (README layout)."""
    return build_spinml_demo(str(tmp_path_factory.mktemp("spinml") / "husky"), classes=CLASSES, per_class=6, size=32)


@pytest.fixture(scope="module")
def leakage(husky: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spinml_leakage(str(husky), str(tmp_path_factory.mktemp("leak") / "out"), **FAST)


def test_leakage_mi_sim_and_nearest(leakage: Path) -> None:
    record = json.loads((leakage / "leakage.json").read_text())
    levels = record["levels"]
    assert list(levels) == ["L0_L0", "L1_L0", "L2_L0"] and record["real_images"] == 12
    for part in ("foreground", "background"):
        assert levels["L0_L0"]["mi"][part]["mean"] == 0.0  # by construction: nothing image-like is released
        assert levels["L2_L0"]["mi"][part]["mean"] > levels["L1_L0"]["mi"][part]["mean"] > 0.0
        low, high = levels["L2_L0"]["mi"][part]["ci95"]
        assert low <= levels["L2_L0"]["mi"][part]["mean"] <= high
    for r in levels.values():
        assert r["images"] == 12 and set(r["sim"]) == {"image", "foreground", "background"}
        low, high = r["sim"]["image"]["ci95"]
        assert -1.0 <= low <= r["sim"]["image"]["sim"] <= high <= 1.0
        near = r["nearest_real"]
        assert 0.0 <= near["ci95"][0] <= near["share"] <= near["ci95"][1] <= 1.0
        assert len(near["closest"]) == 4 and (leakage / near["png"]).stat().st_size > 1000
    md = (leakage / "leakage.md").read_text()
    assert "| L2_L0 | 12 |" in md and "0 by construction" in md


def test_leakage_copies_are_near_copies_clean_layout(husky: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(husky, tmp_path / "husky"))
    shutil.copytree(root / "real" / "raw", root / "synthetic" / "L2_L2" / "clean")  # composites = the real images
    out = spinml_leakage(str(root), str(tmp_path / "out"), levels=["L2_L2"], **FAST)
    level = json.loads((out / "leakage.json").read_text())["levels"]["L2_L2"]
    assert level["nearest_real"]["share"] == 1.0 and level["nearest_real"]["mean_cosine"] == pytest.approx(1.0)
    assert set(level["sim"]) == {"image"}  # no segments in clean/: no per-part SIM
    assert level["mi"]["foreground"]["mean"] > 0.0 and "background level above L0" in level["mi"]["note"]


def test_leakage_resume_and_refusal(husky: Path, leakage: Path, tmp_path: Path, capsys: Any) -> None:
    before = (leakage / "leakage.json").stat().st_mtime_ns
    spinml_leakage(str(husky), str(leakage), **FAST)
    assert "nothing to do" in capsys.readouterr().out
    assert (leakage / "leakage.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        spinml_leakage(str(husky), str(leakage), **{**FAST, "threshold": 0.5})
    changed = Path(shutil.copytree(husky, tmp_path / "husky"))
    png = next((changed / "synthetic" / "L1_L0" / "foreground").iterdir())
    png.write_bytes((changed / "real" / "raw" / png.name).read_bytes())  # another input file, same name
    with pytest.raises(FileExistsError, match="other inputs"):
        spinml_leakage(str(changed), str(leakage), **FAST)
    with pytest.raises(FileNotFoundError, match="L9_L0"):
        spinml_leakage(str(husky), str(tmp_path / "o"), levels=["L9_L0"], **FAST)


def _run(folder: Path, root: Path, alpha: float, second: str | None, correct: int, n: int = 12) -> Path:
    data = {"root": str(root), "alpha": alpha, "first_level": "L0_L0", "second_level": second}
    (folder / "test").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"class_path": "SpinMLDataModule", "init_args": data}}))
    metrics = {"ckpt_path": "x", "metrics": {"test/acc": float(np.float32(correct / n)), "test/loss": 1.0}}
    (folder / "test" / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_report_rows_intervals_and_resume(husky: Path, leakage: Path, tmp_path: Path, capsys: Any) -> None:
    runs = {
        "L0": _run(tmp_path / "l0", husky, 1.0, None, 6),
        "L2": _run(tmp_path / "l2", husky, 0.0, "L2_L0", 9),
        "mix": _run(tmp_path / "mix", husky, 0.5, "L2_L0", 8),
    }
    entries = [SpinMLRun(label, str(folder)) for label, folder in runs.items()]
    out = spinml_report(str(tmp_path / "report"), str(leakage), entries)
    record = json.loads((out / "report.json").read_text())
    leak = json.loads((leakage / "leakage.json").read_text())["levels"]
    rows = {r["label"]: r for r in record["rows"]}
    assert rows["L0"]["accuracy"] == {"acc": 0.5, "ci95": wilson_interval(6, 12), "correct": 6, "n": 12}
    assert rows["L2"]["accuracy"]["correct"] == 9 and rows["L0"]["mix"] == {"L0_L0": 12}
    assert rows["L0"]["mi"]["foreground"]["mean"] == 0.0 and rows["L0"]["mi_level"] == "L0_L0"
    assert rows["L2"]["mi"] == leak["L2_L0"]["mi"] and rows["mix"]["mi_level"] == "L2_L0"
    assert rows["L2"]["sim"]["value"] == pytest.approx(leak["L2_L0"]["sim"]["image"]["sim"])
    assert rows["mix"]["mix"] == {"L0_L0": 6, "L2_L0": 6}
    half = (leak["L0_L0"]["sim"]["image"]["sim"] + leak["L2_L0"]["sim"]["image"]["sim"]) / 2
    assert rows["mix"]["sim"]["value"] == pytest.approx(half)
    half_fg = (leak["L0_L0"]["sim"]["foreground"]["sim"] + leak["L2_L0"]["sim"]["foreground"]["sim"]) / 2
    assert rows["mix"]["sim_fg"]["value"] == pytest.approx(half_fg)
    ends = [(leak["L0_L0"]["sim"]["image"]["ci95"][k] + leak["L2_L0"]["sim"]["image"]["ci95"][k]) / 2 for k in (0, 1)]
    assert rows["mix"]["sim"]["ci95"] == pytest.approx(ends)
    share = (leak["L0_L0"]["nearest_real"]["share"] + leak["L2_L0"]["nearest_real"]["share"]) / 2
    assert rows["mix"]["near_real"]["value"] == pytest.approx(share)
    md = (out / "report.md").read_text()
    assert "| mix | L0_L0 (6), L2_L0 (6) | 66.7 [" in md and (out / "privacy_utility.png").stat().st_size > 1000
    spinml_report(str(tmp_path / "report"), str(leakage), entries)
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="other inputs"):
        spinml_report(str(tmp_path / "report"), str(leakage), entries[:2])


def test_report_logs_to_wandb(husky: Path, leakage: Path, tmp_path: Path, monkeypatch: Any) -> None:
    import wandb

    logged: dict[str, Any] = {}
    monkeypatch.setenv("WANDB_MODE", "disabled")
    real_init = wandb.init

    def init(**kwargs: Any) -> Any:
        run = real_init(**kwargs)
        monkeypatch.setattr(run, "log", lambda data, *a, **k: logged.update(data))
        return run

    monkeypatch.setattr(wandb, "init", init)
    run = _run(tmp_path / "l0", husky, 1.0, None, 6)
    spinml_report(str(tmp_path / "r"), str(leakage), [SpinMLRun("L0", str(run))], wandb_project="p")
    table = logged["spinml/report"]
    assert table.columns[:4] == ["run", "alpha", "mix", "accuracy"] and table.data[0][3] == 0.5
    assert "spinml/privacy_utility" in logged


def test_report_refusals(husky: Path, leakage: Path, tmp_path: Path, monkeypatch: Any) -> None:
    bad = _run(tmp_path / "bad", husky, 1.0, None, 6)
    (bad / "test" / "metrics.json").write_text(json.dumps({"metrics": {"test/acc": 0.4242}}))
    with pytest.raises(ValueError, match="no count out of the 12"):
        spinml_report(str(tmp_path / "r"), str(leakage), [SpinMLRun("bad", str(bad))])
    other = _run(tmp_path / "other", tmp_path, 1.0, None, 6)
    with pytest.raises(ValueError, match=r"leakage\.json scores"):
        spinml_report(str(tmp_path / "r"), str(leakage), [SpinMLRun("other", str(other))])
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    good = _run(tmp_path / "good", husky, 1.0, None, 6)
    with pytest.raises(ValueError, match="no W&B API key"):
        spinml_report(str(tmp_path / "r"), str(leakage), [SpinMLRun("g", str(good))], wandb_project="p")
    assert not (tmp_path / "r").exists()


# the study's configs parse ------------------------------------------------------------------------------------


def test_every_study_config_exists_and_is_used() -> None:
    study, steps = study_steps(STUDY)
    used = {c for s in steps for c in s.configs}
    for path in (ROOT / "configs/spinml/cpu").glob("*.yaml"):
        assert f"configs/spinml/cpu/{path.name}" in used, f"{path.name} is used by no step"
    assert study == "spinml_cpu"
    tests = [s for s in steps if s.command == "test"]
    assert len(tests) >= 5 and {s.name for s in steps} >= {"base", "customise", "controlnet", "generate", "report"}
    report = next(s for s in steps if s.name == "report")
    assert set(report.needs) >= {s.name for s in tests} | {"leakage"}


@pytest.mark.parametrize("name", [s.name for s in study_steps(STUDY)[1] if s.command != "data"])
def test_study_step_parses(name: str) -> None:
    study, steps = study_steps(STUDY)
    step = next(s for s in steps if s.name == name)
    assert step.command in TRAINING_COMMANDS or step.command in TOOLS, step.command
    printed = printed_config(step_argv(study, step))
    if step.name.startswith("clf-") and step.command == "fit":
        model, data = printed["model"]["init_args"], printed["data"]["init_args"]
        assert model["backbone"] == "mobilenet_v2" and model["weights"] == "imagenet"
        assert model["optimizer"] == "adamw" and model["weight_decay"] == 0.0 and model["lr"] == 0.001
        assert data["root"] == "runs/spinml_cpu/husky" and data["first_level"] == "L0_L0"
        # SpinML's recipe with batch 16 x 10 epochs for ~108 images (128 x 5 would be 5 optimiser steps in all)
        assert printed["trainer"]["max_epochs"] == 10 and data["batch_size"] == 16
    if step.name == "generate":
        writer = printed["trainer"]["callbacks"][0]["init_args"]
        assert writer["output_dir"] == "runs/spinml_cpu/husky/synthetic" and writer["mask_source"] == "otsu"
        assert printed["model"]["init_args"]["controlnet_path"] == "runs/spinml_cpu/controlnet/adapter"
    if step.name in ("customise", "controlnet", "generate"):
        model = printed["model"]["init_args"]
        # one generator: the TCKR base fine-tuned by "customise"; the later steps load that fine-tune
        expected = "runs/tckr_cpu/base/adapter" if step.name == "customise" else "runs/spinml_cpu/customise/adapter"
        assert model["pretrained_model_path"] == expected and model["adapter_path"] is None
        assert model["finetune"] == {"customise": "full", "controlnet": "controlnet", "generate": "full"}[step.name]
    if step.command == "spinml-report":
        assert len(printed["entries"]) == len([s for s in steps if s.command == "test"])
