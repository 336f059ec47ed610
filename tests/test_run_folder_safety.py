"""Run-folder safety (issue 11 items 2 and 3): a failed start does not block its run name, and no rerun destroys
an earlier fit's results (tools/run_dirs.py, callbacks/run_dir.py)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from cli_helpers import tiny_config, tiny_dataset
from lightning.pytorch.callbacks import Callback

import callbacks.run_dir as run_dir_callback
import tools.run_dirs as run_dirs
from cli import main
from tools.run_dirs import RUNNING_MARKER, RunExistsError, prepare_fit


class FailOnTrainStart(Callback):
    """A fit that fails after the run folder, its config and trained ids are written, before any checkpoint."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        raise RuntimeError("simulated failed start")


class RecordFitEnd(Callback):
    """Records which hooks ran and the metrics Lightning hands to on_fit_end."""

    seen: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        RecordFitEnd.seen.append(("on_train_start", {}))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        RecordFitEnd.seen.append(("on_fit_end", dict(trainer.callback_metrics)))


FAIL = ["--trainer.callbacks+=test_run_folder_safety.FailOnTrainStart"]
RECORD = ["--trainer.callbacks+=test_run_folder_safety.RecordFitEnd"]


def _run(tmp_path: Path, name: str = "r") -> list[str]:
    return ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", name]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def test_failed_start_is_moved_aside_and_the_corrected_fit_runs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(tiny_config(tmp_path / "c.yaml", data))
    run_dir = tmp_path / "runs" / "s" / "r"
    other_data = tiny_dataset(tmp_path / "other", {"ant": 4, "bee": 4, "cow": 4})
    first = ["--model.init_args.lr", "0.5", "--data.init_args.train_roots", str(other_data / "train")]
    with pytest.raises(RuntimeError, match="simulated failed start"):
        main(["fit", "--config", config, *_run(tmp_path), *first, *FAIL])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "trained_ids.txt").is_file()
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    assert not (run_dir / RUNNING_MARKER).exists()  # removed when the fit failed
    first_config = (run_dir / "config.yaml").read_text()
    capsys.readouterr()

    # The advice of the old message (--ckpt_path last) now works too; other options than the failed start's
    # (lr) are no resume change, and this attempt fails as well.
    with pytest.raises(RuntimeError, match="simulated failed start"):
        main(["fit", "--config", config, *_run(tmp_path), "--ckpt_path", "last", *FAIL])
    out = capsys.readouterr().out
    assert f"{run_dir} holds a failed start" in out and f"moved its files to {run_dir / 'failed-start-1'}" in out
    assert (run_dir / "failed-start-1" / "config.yaml").read_text() == first_config
    assert yaml.safe_load(first_config)["model"]["init_args"]["lr"] == 0.5

    # The corrected command: other training data than the failed start recorded is no resume either.
    main(["fit", "--config", config, *_run(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("failed start") == 1 and str(run_dir / "failed-start-2") in out
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "fit_summary.json").read_text())["metrics"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]["lr"] != 0.5
    assert not (run_dir / "config.resume.yaml").exists()
    aside = run_dir / "failed-start-1"
    assert {p.name for p in aside.iterdir()} >= {"config.yaml", "trained_ids.txt", "trained_ids.json", "logs"}
    assert len((aside / "trained_ids.txt").read_text().splitlines()) == 12  # the other data's 3 x 4 images
    assert len((run_dir / "trained_ids.txt").read_text().splitlines()) == 24
    assert not (run_dir / RUNNING_MARKER).exists()


def test_a_fit_still_running_in_the_folder_is_not_moved(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: {}\n")
    alive = os.getppid()  # a live process of this host that is not this one
    (run_dir / RUNNING_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": alive}))
    with pytest.raises(RunExistsError, match=rf"a fit is still running in it \(pid {alive} on this host"):
        prepare_fit(run_dir, "error", None)
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "failed-start-1").exists()
    (run_dir / RUNNING_MARKER).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(RunExistsError, match=r"pid 1 on host elsewhere.*delete"):
        prepare_fit(run_dir, "resume", "last")


def test_a_checkpoint_from_another_run_never_overwrites_a_fit(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunExistsError, match=r"already holds a fit, whose checkpoints a fit from .* would overwrite"):
        prepare_fit(run_dir, "error", str(tmp_path / "other" / "checkpoints" / "last.ckpt"))


@pytest.fixture(scope="module")
def finished(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 1-epoch fit (cosine schedule over max_epochs)."""
    tmp = tmp_path_factory.mktemp("finished")
    config = tiny_config(tmp / "c.yaml", data, max_epochs=1)
    main(["fit", "--config", str(config), *_run(tmp)])
    return {"config": config, "root": tmp, "run": tmp / "runs" / "s" / "r"}


def _copy(finished: dict[str, Path], tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(finished["run"], tmp_path / "runs" / "s" / "r")
    return tmp_path / "runs" / "s" / "r"


def test_resuming_a_finished_run_changes_nothing(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ckpt_path last / --run.if_exists resume with nothing left to train: one line, and Lightning's fit returns
    at once (no on_train_start) yet still calls on_fit_end, with no metrics; fit_summary.json and the checkpoints
    stay byte for byte, and no config.resume.yaml claims a resume."""
    run_dir = _copy(finished, tmp_path)
    files = sorted([run_dir / "fit_summary.json", *(run_dir / "checkpoints").glob("*.ckpt")])
    before = {f: f.read_bytes() for f in files}
    assert json.loads(before[run_dir / "fit_summary.json"])["metrics"]
    base = ["fit", "--config", str(finished["config"]), *_run(tmp_path)]
    capsys.readouterr()
    for resume in (["--ckpt_path", "last"], ["--run.if_exists", "resume"]):
        RecordFitEnd.seen.clear()
        main([*base, *resume, *RECORD])
        assert RecordFitEnd.seen == [("on_fit_end", {})]
        out = capsys.readouterr().out
        assert f"{run_dir} already finished at epoch 1 (fit_summary.json kept as it is); nothing to train" in out
        assert "raise --trainer.max_epochs" in out
    with pytest.raises(RunExistsError, match=r"already holds a finished fit \(fit_summary\.json\)"):
        main(base)
    assert {f: f.read_bytes() for f in files} == before
    assert sorted([run_dir / "fit_summary.json", *(run_dir / "checkpoints").glob("*.ckpt")]) == files
    assert not list(run_dir.glob("fit_summary.*.json"))
    assert not list(run_dir.glob("config.resume*.yaml"))
    assert not (run_dir / RUNNING_MARKER).exists()


def test_the_summary_guard_alone_keeps_the_summary(
    finished: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the finished check is bypassed, RunDirectory does not replace the summary after a fit that
    trained no step."""
    run_dir = _copy(finished, tmp_path)
    before = (run_dir / "fit_summary.json").read_bytes()
    monkeypatch.setattr(run_dirs, "finished_reason", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_dir_callback, "finished_reason", lambda *args, **kwargs: None)
    main(["fit", "--config", str(finished["config"]), *_run(tmp_path), "--ckpt_path", "last"])
    assert (run_dir / "fit_summary.json").read_bytes() == before
    assert not list(run_dir.glob("fit_summary.*.json"))


def test_training_more_epochs_keeps_the_earlier_summary(finished: dict[str, Path], tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    before = (run_dir / "fit_summary.json").read_bytes()
    more = ["--ckpt_path", "last", "--trainer.max_epochs", "2", "--run.allow_changes", "true"]
    main(["fit", "--config", str(finished["config"]), *_run(tmp_path), *more])
    summary = json.loads((run_dir / "fit_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["metrics"]
    assert summary["previous"] == ["fit_summary.1.json"]
    assert (run_dir / "fit_summary.1.json").read_bytes() == before
    assert json.loads(before)["epochs"] == 1 and "val/acc" in json.loads(before)["metrics"]
    assert not (run_dir / RUNNING_MARKER).exists()


def test_a_run_ended_by_early_stopping_is_not_resumed(data: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "c.yaml", data, max_epochs=3)
    stop = [
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor",
        "val/acc",
        "--trainer.callbacks.mode",
        "max",
        "--trainer.callbacks.stopping_threshold",
        "0.0",  # val/acc >= 0 always: stops after the first epoch
    ]
    base = ["fit", "--config", str(config), *_run(tmp_path)]
    main([*base, *stop])
    run_dir = tmp_path / "runs" / "s" / "r"
    before = (run_dir / "fit_summary.json").read_bytes()
    assert json.loads(before)["epochs"] == 1
    with pytest.raises(RunExistsError, match=rf"{run_dir} was ended by early stopping at epoch 1 .*stop again"):
        main([*base, *stop, "--ckpt_path", "last"])
    assert (run_dir / "fit_summary.json").read_bytes() == before
