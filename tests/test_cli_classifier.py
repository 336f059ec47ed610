"""fit / validate / test / predict through cli.main for every backbone, plus run-folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import ALL_BACKBONES, CrashAtEpoch, state_of, tiny_config, tiny_dataset

from cli import main
from tools.run_dirs import RunExistsError

BACKBONES = [b for b in ALL_BACKBONES if b != "resnet8-1"]  # resnet8-1 is the tiny default elsewhere


def _run(tmp_path: Path, name: str = "r") -> list[str]:
    return ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", name]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_stage_for_every_backbone(tmp_path: Path, backbone: str) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data, backbone=backbone))
    base = ["--config", config, *_run(tmp_path), "--trainer.limit_train_batches", "2"]
    run_dir = tmp_path / "runs" / "s" / "r"

    main(["fit", *base])
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / summary["best_checkpoint"]).is_file()
    assert "val/acc" in summary["metrics"]
    assert (run_dir / "config.yaml").is_file()

    main(["validate", *base, "--ckpt_path", "last"])
    assert "val/auroc" in json.loads((run_dir / "validate" / "metrics.json").read_text())["metrics"]

    main(["test", *base, "--ckpt_path", "best"])
    test_metrics = json.loads((run_dir / "test" / "metrics.json").read_text())["metrics"]
    assert {"test/acc", "test/acc_top5", "test/auroc", "test/acc_class/bee"} <= set(test_metrics)

    main(["predict", *base, "--ckpt_path", "last", "--trainer.callbacks+=PredictionWriter"])
    with np.load(run_dir / "predict" / "predictions.npz") as pred:
        assert pred["logits"].shape == (24, 3)
        np.testing.assert_allclose(pred["probs"].sum(axis=1), 1.0, rtol=1e-5)
        assert list(pred["index"]) == list(range(24))
        assert pred["ids"][0].startswith("test/ant/")


def test_rerun_of_a_name_stops_and_resume_continues(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data))
    main(["fit", "--config", config, *_run(tmp_path)])
    with pytest.raises(RunExistsError, match="--ckpt_path last"):
        main(["fit", "--config", config, *_run(tmp_path)])
    more = ["--trainer.max_epochs", "2", "--run.allow_changes", "true"]  # cosine over 2 epochs: a changed option
    main(["fit", "--config", config, *_run(tmp_path), "--ckpt_path", "last", *more])
    run_dir = tmp_path / "runs" / "s" / "r"
    assert json.loads((run_dir / "fit_summary.json").read_text())["epochs"] == 2
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config.resume.yaml").is_file()


def test_resume_after_crash_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data, max_epochs=3, mixup_alpha=0.4))
    main(["fit", "--config", config, *_run(tmp_path, "straight")])
    crash = ["--trainer.callbacks+=cli_helpers.CrashAtEpoch", "--trainer.callbacks.epoch", "2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "--config", config, *_run(tmp_path, "crashed"), *crash])
    assert CrashAtEpoch  # the class the config names
    main(["fit", "--config", config, *_run(tmp_path, "crashed"), "--run.if_exists", "resume"])
    straight = state_of(tmp_path / "runs" / "s" / "straight" / "checkpoints" / "last.ckpt")
    resumed = state_of(tmp_path / "runs" / "s" / "crashed" / "checkpoints" / "last.ckpt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


def test_checkpoint_with_other_num_classes_is_refused(tmp_path: Path) -> None:
    three = tiny_dataset(tmp_path / "three")
    four = tiny_dataset(tmp_path / "four", {"ant": 4, "bee": 4, "cow": 4, "dog": 4})
    main(["fit", "--config", str(tiny_config(tmp_path / "a.yaml", three)), *_run(tmp_path)])
    ckpt = str(tmp_path / "runs" / "s" / "r" / "checkpoints" / "last.ckpt")
    config4 = str(tiny_config(tmp_path / "b.yaml", four))
    with pytest.raises(ValueError, match="num_classes"):
        main(["test", "--config", config4, *_run(tmp_path, "other"), "--ckpt_path", ckpt])


def test_unknown_backbone_is_a_clear_error(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data, backbone="resnet-nope"))
    with pytest.raises(ValueError, match="unknown backbone 'resnet-nope'"):
        main(["fit", "--config", config, *_run(tmp_path)])


def test_ckpt_path_best_without_training_is_a_clear_error(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data))
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        main(["test", "--config", config, *_run(tmp_path), "--ckpt_path", "best"])
