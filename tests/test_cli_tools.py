"""The console entry point: overview, tool help, clean errors; the W&B preset writes an offline run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
from cli_helpers import tiny_config, tiny_dataset

from cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_overview_lists_training_commands_and_tools(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "data", "run"):
        assert f"  {command} " in out or f"  {command}  " in out


def test_tool_help_comes_from_the_signature(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--dataset" in out and "animal-mnist" in out and "--per_class" in out


def test_console_errors_are_one_line_messages(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(tmp_path / "missing.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "synthpriv: error: study file" in result.stderr
    assert "Traceback" not in result.stderr


def test_wandb_preset_writes_an_offline_run_with_the_full_config(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data))
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", "w"]
    main(["fit", "--config", config, "--config", str(ROOT / "configs/logger/wandb.yaml"), *run])
    run_dir = tmp_path / "runs" / "s" / "w"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert offline[0].name.endswith(run_id)
    wandb.finish()  # flush the run, as process exit would
    # wandb-core may still be writing the file after finish() returns (seen once in CI): wait for it, briefly.
    deadline = time.monotonic() + 20
    while True:
        sent = next(offline[0].glob("run-*.wandb")).read_bytes()
        if (b"train_roots" in sent and b"if_exists" in sent) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"train_roots" in sent and b"if_exists" in sent  # data and run sections of the resolved config


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [("tckr_classifier.yaml", "transform: tckr"), ("semsim_victim.yaml", "scheduler: multistep")],
)
def test_recipe_presets_compose_with_a_study_config(
    recipe: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = [
        "--config",
        str(ROOT / "configs/quickstart/teacher.yaml"),
        "--config",
        str(ROOT / "configs/recipes" / recipe),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--print_config"])
    assert exit_info.value.code == 0
    assert expected in capsys.readouterr().out


def test_online_wandb_without_a_key_stops_a_fit_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 10: `--trainer.logger.init_args.offline false` without credentials is one line, before the run folder."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("SYNTHPRIV_DEBUG", raising=False)
    argv = [
        "synthpriv",
        "fit",
        "--config",
        str(ROOT / "configs/quickstart/teacher.yaml"),
        "--config",
        str(ROOT / "configs/logger/wandb.yaml"),
        "--trainer.logger.init_args.offline",
        "false",
        "--run.name",
        "online",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = str(exit_info.value.code)
    assert message.startswith("synthpriv: error: synthpriv fit (trainer.logger WandbLogger): WANDB_MODE=online")
    assert "no W&B API key" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()


def test_callbacks_preset_without_a_logger_drops_the_lr_monitor(tmp_path: Path, capsys) -> None:
    """configs/callbacks/default.yaml with --trainer.logger false: Lightning would refuse LearningRateMonitor."""
    data = tiny_dataset(tmp_path / "data")
    config = str(tiny_config(tmp_path / "c.yaml", data))
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", "quiet", "--trainer.logger", "false"]
    run += ["--trainer.enable_progress_bar", "true"]  # the preset brings its own progress bar
    main(["fit", "--config", config, "--config", str(ROOT / "configs/callbacks/default.yaml"), *run])
    assert "LearningRateMonitor left out" in capsys.readouterr().err
    assert (tmp_path / "runs" / "s" / "quiet" / "fit_summary.json").is_file()
