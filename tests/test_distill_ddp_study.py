"""Teacher -> student distillation, DDP on CPU (subprocess), and the study runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from cli_helpers import tiny_config, tiny_dataset

from cli import main
from lightning_modules import ImageClassifier
from tools.study import load_study, run_study

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, name: str) -> list[str]:
    return ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", name]


def test_teacher_to_student_distillation(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data))
    main(["fit", "--config", config, *_run(tmp_path, "teacher")])
    teacher_ckpt = tmp_path / "runs" / "s" / "teacher" / "checkpoints" / "last.ckpt"
    main(
        [
            "fit",
            "--config",
            config,
            *_run(tmp_path, "student"),
            "--model.init_args.teacher_checkpoint",
            str(teacher_ckpt),
            "--model.init_args.distill_temperature",
            "2.0",
        ]
    )
    student = torch.load(
        tmp_path / "runs" / "s" / "student" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert not any("teacher" in key for key in student["state_dict"])  # the teacher is not stored
    assert student["hyper_parameters"]["teacher_checkpoint"] == str(teacher_ckpt)
    # Testing the student needs no teacher file.
    teacher_ckpt.rename(teacher_ckpt.with_suffix(".moved"))
    main(["test", "--config", config, *_run(tmp_path, "student"), "--ckpt_path", "last"])


def test_distillation_loss_is_soft_label_cross_entropy() -> None:
    torch.manual_seed(0)
    student = ImageClassifier(backbone="resnet8-1", num_classes=3, teacher_checkpoint=None, distill_temperature=2.0)
    teacher = ImageClassifier(backbone="resnet8-1", num_classes=3).eval()
    student._teacher = teacher
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    logits = student(images)
    soft = F.softmax(teacher(images) / 2.0, dim=1)
    expected = -(soft * F.log_softmax(logits / 2.0, dim=1)).sum(dim=1).mean() * 4.0
    torch.testing.assert_close(student._distillation_loss(logits, images, labels), expected)


def test_teacher_with_other_classes_is_refused(tmp_path: Path) -> None:
    three = tiny_dataset(tmp_path / "three")
    four = tiny_dataset(tmp_path / "four", {"ant": 4, "bee": 4, "cow": 4, "dog": 4})
    main(["fit", "--config", str(tiny_config(tmp_path / "a.yaml", three)), *_run(tmp_path, "teacher")])
    ckpt = tmp_path / "runs" / "s" / "teacher" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="3 classes but the student has 4"):
        main(
            [
                "fit",
                "--config",
                str(tiny_config(tmp_path / "b.yaml", four)),
                *_run(tmp_path, "student"),
                "--model.init_args.teacher_checkpoint",
                str(ckpt),
            ]
        )


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}
    }
    env["WANDB_DIR"] = str(tmp_path)
    return env


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data", {"ant": 9, "bee": 9, "cow": 9})
    config = str(tiny_config(tmp_path / "c.yaml", data, max_epochs=2))
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    env = _clean_env(tmp_path)
    for command in (
        ["fit", "--config", config, *_run(tmp_path, "ddp"), *ddp],
        [
            "predict",
            "--config",
            config,
            *_run(tmp_path, "ddp"),
            *ddp,
            "--ckpt_path",
            "last",
            "--trainer.callbacks+=PredictionWriter",
        ],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "cli", *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "s" / "ddp"
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["epochs"] == 2
    assert "distributed_backend=gloo" in result.stderr or "ddp" in (run_dir / "config.yaml").read_text()
    with np.load(run_dir / "predict" / "predictions.npz") as pred:
        assert list(pred["index"]) == list(range(27))  # every test example exactly once, padding dropped
        assert len(set(pred["ids"])) == 27
    assert not list((run_dir / "predict").glob(".*rank*"))  # shards merged and removed


def test_study_runner_skips_finished_steps(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "digits"
    fit_config = tiny_config(tmp_path / "fit.yaml", data)
    study = {
        "study": "mini",
        "steps": [
            {
                "name": "data",
                "command": "data",
                "args": {"dataset": "digits", "out": str(data), "per_class": 6},
                "outputs": [str(data / "manifest.json")],
            },
            {
                "name": "fit",
                "command": "fit",
                "configs": [str(fit_config)],
                "args": {"run.root": str(tmp_path / "runs"), "run.name": "m", "trainer.max_epochs": 1},
                "outputs": [str(tmp_path / "runs" / "mini" / "m" / "fit_summary.json")],
            },
        ],
    }
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    run_study(str(study_file), status_dir=str(tmp_path / "runs"))
    first = capfd.readouterr().out
    assert "run  data" in first and "run  fit" in first
    stamp = (tmp_path / "runs" / "mini" / "m" / "fit_summary.json").stat().st_mtime_ns
    run_study(str(study_file), status_dir=str(tmp_path / "runs"))
    second = capfd.readouterr().out
    assert "skip data" in second and "skip fit" in second
    assert (tmp_path / "runs" / "mini" / "m" / "fit_summary.json").stat().st_mtime_ns == stamp
    status = json.loads((tmp_path / "runs" / "mini" / "study_status.json").read_text())
    assert status["fit"]["state"] == "done"


def test_study_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"study": "x", "steps": [{"name": "a", "command": "fit"}]}))
    with pytest.raises(ValueError, match="needs 'outputs'"):
        load_study(bad)
    bad.write_text(
        yaml.safe_dump({"steps": [{"name": "a", "command": "fit", "outputs": ["o"], "configs": ["nope.yaml"]}]})
    )
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_study(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_study(tmp_path / "missing.yaml")
