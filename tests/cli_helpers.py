"""Shared helpers for tests that drive `cli.main` with tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from fixtures_images import make_image_tree
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"ant": 8, "bee": 8, "cow": 8}
ALL_BACKBONES = [
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "resnet20-4",
    "resnet8-1",
    "convnet-64",
]


def tiny_dataset(root: Path, classes: dict[str, int] | None = None, size: int = 16) -> Path:
    """train/val/test class folders of small PNGs under ``root``."""
    classes = classes or CLASSES
    for offset, split in enumerate(("train", "val", "test")):
        make_image_tree(root / split, classes, size=size, seed=offset)
    return root


def tiny_config(
    path: Path, data_root: Path, backbone: str = "resnet8-1", max_epochs: int = 1, **model_args: Any
) -> Path:
    """A complete fit/test config for a tiny run on CPU."""
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": max_epochs,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/acc", "mode": "max"},
                }
            ],
        },
        "model": {"class_path": "ImageClassifier", "init_args": {"backbone": backbone, **model_args}},
        "data": {
            "class_path": "ImageFolderDataModule",
            "init_args": {
                "train_roots": str(data_root / "train"),
                "val_root": str(data_root / "val"),
                "test_root": str(data_root / "test"),
                "batch_size": 8,
                "image_size": 32,
            },
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def state_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Model weights stored in a Lightning checkpoint."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


class CrashAtEpoch(Callback):
    """Simulates a crash at the start of a given epoch (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def quiet_cpu_trainer(callbacks: list[Any]) -> dict[str, Any]:
    """The ``trainer`` section of a test config: one CPU device, no logger, progress bar or model summary."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": callbacks,
    }


def run_cli_process(
    argv: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m cli ARGV` in a fresh process (DDP launches need one), without the test process's DDP variables,
    plus ``env``; asserts it exits 0 and returns it (stdout, stderr captured)."""
    clean = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"}}
    result = subprocess.run(
        [sys.executable, "-m", "cli", *argv],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_line_error(monkeypatch: Any, argv: list[str]) -> str:
    """Run the console entry point as the shell would: it must exit with one line, no traceback."""
    from cli import main

    monkeypatch.setattr(sys, "argv", ["synthpriv", *argv])
    monkeypatch.delenv("SYNTHPRIV_DEBUG", raising=False)
    try:
        main()
    except SystemExit as exit_info:
        message = str(exit_info.code)
    else:
        raise AssertionError(f"synthpriv {' '.join(argv)} did not exit with an error")
    assert message.startswith("synthpriv: error: ") and "\n" not in message and "Traceback" not in message
    return message


def printed_config(argv: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``synthpriv <argv> --print_config`` run in this process from the repository root, as a dict (parse only:
    nothing is instantiated); a non-zero exit fails the test, naming the command."""
    import contextlib
    import io

    import pytest

    from cli import main

    out, old = io.StringIO(), Path.cwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main([*argv, "--print_config"])
    finally:
        os.chdir(old)
    assert exit_info.value.code in (0, None), f"synthpriv {' '.join(argv)}: exit {exit_info.value.code}"
    return yaml.safe_load(out.getvalue())


def study_steps(path: str) -> tuple[str, list[Any]]:
    """(study name, steps) of the study file ``path`` (relative to the repository root), as the runner reads it."""
    from tools.study import load_study

    old = Path.cwd()
    os.chdir(ROOT)
    try:
        return load_study(Path(path))
    finally:
        os.chdir(old)
