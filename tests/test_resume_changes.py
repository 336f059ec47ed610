"""Resuming a fit with changed options: refused with the differing keys, or applied with --run.allow_changes.

Expected learning rates come from the cosine formula lr(e) = lr0 * (1 + cos(pi * e / max_epochs)) / 2 for the
epoch e being trained (CosineAnnealingLR, eta_min 0, stepped once per finished epoch).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cli_helpers import CrashAtEpoch, tiny_config, tiny_dataset
from lightning.pytorch.callbacks import Callback

from cli import main
from tools.resume_changes import Change, config_changes, saved_fit_configs


class RecordLR(Callback):
    """Records (epoch, lr, weight_decay) of the first step of every epoch this process trains."""

    seen: ClassVar[list[tuple[int, float, float]]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            group = trainer.optimizers[0].param_groups[0]
            RecordLR.seen.append((trainer.current_epoch, group["lr"], group["weight_decay"]))


def cosine(lr0: float, epoch: int, max_epochs: int) -> float:
    return lr0 * (1 + math.cos(math.pi * epoch / max_epochs)) / 2


RECORD = ["--trainer.callbacks+=test_resume_changes.RecordLR"]


def _run(root: Path, name: str) -> list[str]:
    return ["--run.root", str(root / "runs"), "--run.study", "s", "--run.name", name]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-epoch teacher: AdamW lr 1e-3, weight decay 5e-5, cosine over 2 epochs."""
    tmp = tmp_path_factory.mktemp("resume")
    config = tiny_config(tmp / "c.yaml", tiny_dataset(tmp / "data"), max_epochs=2)
    main(["fit", "--config", str(config), *_run(tmp, "r")])
    return {"config": config, "run": tmp / "runs" / "s" / "r"}


def _copy(finished: dict[str, Path], tmp_path: Path) -> list[str]:
    shutil.copytree(finished["run"], tmp_path / "runs" / "s" / "r")
    return ["fit", "--config", str(finished["config"]), *_run(tmp_path, "r"), "--ckpt_path", "last"]


def test_changed_lr_is_refused_listing_both_values(finished: dict[str, Path], tmp_path: Path) -> None:
    args = _copy(finished, tmp_path)
    with pytest.raises(ValueError, match=r"model\.init_args\.lr: 0\.001 -> 0\.01\b.*--run\.allow_changes true"):
        main([*args, "--model.init_args.lr", "0.01"])
    with pytest.raises(ValueError, match=r"config\.yaml: trainer\.max_epochs: 2 -> 4\. "):  # cosine over max_epochs
        main([*args, "--trainer.max_epochs", "4"])
    with pytest.raises(ValueError, match=r"model\.init_args\.optimizer: \"adamw\" -> \"sgd\" cannot change"):
        main([*args, "--model.init_args.optimizer", "sgd", "--run.allow_changes", "true"])
    assert not (tmp_path / "runs" / "s" / "r" / "config.resume.yaml").exists()  # refused before anything ran


def test_allowed_changes_take_effect_and_the_schedule_is_stated(finished: dict[str, Path], tmp_path: Path) -> None:
    args = _copy(finished, tmp_path)
    new = ["--trainer.max_epochs", "4", "--model.init_args.lr", "0.01", "--model.init_args.weight_decay", "0.001"]
    RecordLR.seen.clear()
    main([*args, *new, "--run.allow_changes", "true", *RECORD])
    # The fresh cosine over 4 epochs from lr 0.01, at epochs 2 and 3: 0.005 and 0.01 * (1 - cos(pi/4)) / 2.
    assert [epoch for epoch, _, _ in RecordLR.seen] == [2, 3]
    assert RecordLR.seen[0][1] == pytest.approx(0.005, rel=1e-9)
    assert RecordLR.seen[1][1] == pytest.approx(cosine(0.01, 3, 4), rel=1e-9)  # 0.0014645
    assert {wd for _, _, wd in RecordLR.seen} == {0.001}
    run_dir = tmp_path / "runs" / "s" / "r"
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["epochs"] == 4
    note = summary["resume_changes"]["note"]
    assert note.startswith("resuming with changed options (model.init_args.lr, model.init_args.weight_decay, ")
    assert "CosineAnnealingLR rebuilt from the new options and advanced 2 epoch(s) to epoch 2: lr 0.005 now" in note
    assert "annealing to 0 at epoch 4" in note
    assert "model.init_args.lr: 0.001 -> 0.01" in summary["resume_changes"]["changes"]
    # The new options are now the run's: resuming with them again is no change.
    assert [p.name for p in saved_fit_configs(run_dir)] == ["config.yaml", "config.resume.yaml"]
    main([*args, *new])


def test_plain_resume_keeps_the_checkpoints_schedule(tmp_path: Path) -> None:
    config = str(tiny_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data"), max_epochs=3))
    crash = ["--trainer.callbacks+=cli_helpers.CrashAtEpoch", "--trainer.callbacks.epoch", "1"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "--config", config, *_run(tmp_path, "r"), *crash])
    assert CrashAtEpoch  # the class the config names
    RecordLR.seen.clear()
    main(["fit", "--config", config, *_run(tmp_path, "r"), "--ckpt_path", "last", *RECORD])  # callbacks may differ
    expected = [(e, cosine(1e-3, e, 3)) for e in (1, 2)]  # 7.5e-4, 2.5e-4
    assert [(e, pytest.approx(lr, rel=1e-9)) for e, lr, _ in RecordLR.seen] == expected
    assert "resume_changes" not in json.loads((tmp_path / "runs" / "s" / "r" / "fit_summary.json").read_text())


def test_which_keys_count() -> None:
    saved = {
        "trainer": {"max_epochs": 2, "logger": {"save_dir": "a"}, "callbacks": [1], "devices": 1},
        "model": {"init_args": {"scheduler": "none", "lr": 0.1}},
        "run": {"if_exists": "error", "root": "runs"},
        "ckpt_path": None,
    }
    new = {
        "trainer": {"max_epochs": 9, "logger": False, "callbacks": [], "devices": 2},
        "model": {"init_args": {"scheduler": "none", "lr": 0.1, "extra": 1}},
        "run": {"if_exists": "resume", "root": "./runs", "allow_changes": True},
        "ckpt_path": "last.ckpt",
    }
    # No schedule over epochs: max_epochs is only when to stop; logger, callbacks, run and ckpt_path never count.
    assert config_changes(saved, new) == [
        Change("model.init_args.extra", "(absent)", 1),
        Change("trainer.devices", 1, 2),
    ]
    saved["model"]["init_args"]["scheduler"] = new["model"]["init_args"]["scheduler"] = "multistep"
    assert Change("trainer.max_epochs", 2, 9) in config_changes(saved, new)
    saved["model"]["init_args"]["milestones"] = new["model"]["init_args"]["milestones"] = [1]
    assert Change("trainer.max_epochs", 2, 9) not in config_changes(saved, new)
