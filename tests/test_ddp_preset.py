"""configs/trainer/ddp.yaml on CPU: sync BN turned off there, and the README's two DDP launches run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import tiny_config, tiny_dataset
from lightning.pytorch.accelerators import CPUAccelerator, MPSAccelerator

from tools import trainer_presets
from tools.trainer_presets import adapt_trainer_config, resolved_accelerator

ROOT = Path(__file__).resolve().parents[1]
PRESET = "configs/trainer/ddp.yaml"  # relative, as in the README (the commands run from the repository root)
SYNC_BN_OFF = "synthpriv: sync_batchnorm turned off: the accelerator is cpu"


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    logged: list[str] = []
    monkeypatch.setattr(trainer_presets, "rank_zero_info", logged.append)
    return logged


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: False))


# --------------------------------------------------------------------------- adapt_trainer_config


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "GPU"])
def test_gpu_keeps_sync_batchnorm(accelerator: str, messages: list[str], no_gpu: None) -> None:
    """On GPUs the preset is used as written (a "gpu" run without a GPU is Lightning's error to report)."""
    config = {"accelerator": accelerator, "strategy": "ddp", "sync_batchnorm": True, "precision": "bf16-mixed"}
    assert adapt_trainer_config(config) is config
    assert config["sync_batchnorm"] is True and messages == []


@pytest.mark.parametrize("accelerator", ["cpu", CPUAccelerator(), "mps"])
def test_cpu_turns_sync_batchnorm_off_with_a_message(accelerator: object, messages: list[str]) -> None:
    config = {"accelerator": accelerator, "strategy": "ddp", "sync_batchnorm": True, "precision": "bf16-mixed"}
    adapted = adapt_trainer_config(config)
    assert adapted["sync_batchnorm"] is False
    assert {k: v for k, v in adapted.items() if k != "sync_batchnorm"} == {
        k: v for k, v in config.items() if k != "sync_batchnorm"
    }  # precision and the rest untouched
    assert config["sync_batchnorm"] is True  # the caller's dict is not modified
    kind = "mps" if accelerator == "mps" else "cpu"
    assert len(messages) == 1 and f"the accelerator is {kind}" in messages[0] and "CUDA" in messages[0]


def test_auto_resolves_on_this_machine(messages: list[str], monkeypatch: pytest.MonkeyPatch, no_gpu: None) -> None:
    assert resolved_accelerator("auto") == resolved_accelerator(None) == "cpu"
    assert adapt_trainer_config({"accelerator": "auto", "sync_batchnorm": True})["sync_batchnorm"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolved_accelerator("auto") == "cuda"
    assert adapt_trainer_config({"accelerator": "auto", "sync_batchnorm": True})["sync_batchnorm"] is True
    assert len(messages) == 1


def test_without_sync_batchnorm_nothing_changes(messages: list[str]) -> None:
    for config in ({"accelerator": "cpu"}, {"accelerator": "cpu", "sync_batchnorm": False}):
        assert adapt_trainer_config(config) is config
    assert messages == []


# --------------------------------------------------------------------------- the README's commands on CPU


def _env(tmp_path: Path) -> dict[str, str]:
    skip = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env.update(WANDB_DIR=str(tmp_path), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return env


def _tiny(tmp_path: Path) -> str:
    """my_teacher.yaml of the README: a tiny one-epoch classifier whose trainer section leaves accelerator and
    devices to the preset and the command line."""
    path = tiny_config(tmp_path / "my_teacher.yaml", tiny_dataset(tmp_path / "data"))
    config = yaml.safe_load(path.read_text())
    del config["trainer"]["accelerator"], config["trainer"]["devices"]
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _launch(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _check_run(run_dir: Path, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "SyncBatchNorm layers only work with GPU modules" not in output
    assert output.count(SYNC_BN_OFF) == 1  # said once, by rank zero
    assert "Starting with 2 processes" in output  # really two DDP processes
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["epochs"] == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]  # one run folder, made by rank zero only
    saved = (run_dir / "config.yaml").read_text()
    assert "strategy: ddp" in saved and "accelerator: cpu" in saved


@pytest.mark.slow
def test_lightning_launched_ddp_preset_on_cpu(tmp_path: Path) -> None:
    """README: `synthpriv fit --config configs/trainer/ddp.yaml --trainer.devices N --config my_teacher.yaml`,
    here with --trainer.accelerator cpu and 2 processes started by Lightning."""
    script = Path(sys.executable).with_name("synthpriv")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "cli"]
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "t", "--run.name", "lightning"]
    readme = ["fit", "--config", PRESET, "--trainer.devices", "2", "--config", _tiny(tmp_path)]
    result = _launch([*entry, *readme, "--trainer.accelerator", "cpu", *run], tmp_path)
    _check_run(tmp_path / "runs" / "t" / "lightning", result)


@pytest.mark.slow
def test_torchrun_ddp_preset_on_one_cpu_node(tmp_path: Path) -> None:
    """README: `torchrun --nnodes M --nproc_per_node N ... -m cli fit --config configs/trainer/ddp.yaml
    --trainer.devices N --trainer.num_nodes M --config my_teacher.yaml`, one node (--standalone picks a free
    local rendezvous port), 2 processes, --trainer.accelerator cpu."""
    torchrun = Path(sys.executable).with_name("torchrun")
    entry = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "t", "--run.name", "torchrun"]
    launcher = [*entry, "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    readme = ["-m", "cli", "fit", "--config", PRESET, "--trainer.devices", "2", "--trainer.num_nodes", "1"]
    tiny = ["--config", _tiny(tmp_path), "--trainer.accelerator", "cpu"]
    result = _launch([*launcher, *readme, *tiny, *run], tmp_path)
    _check_run(tmp_path / "runs" / "t" / "torchrun", result)
