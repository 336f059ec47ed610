"""Study runner: fingerprints, stale steps (status, stop, move aside and rerun), legacy status files, seeds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import tools.study
from tools.study import load_study, run_study, step_argv


class FakeCli:
    """Stands in for ``subprocess.run`` in tools.study: writes each step's output and records its argv."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], check: bool = False) -> subprocess.CompletedProcess:
        argv = cmd[3:]  # after python -m cli
        self.calls.append(argv)
        opts = dict(zip(argv[1::2], argv[2::2]))
        if argv[0] in ("fit", "test"):
            run = Path(opts.get("--run.root", "runs")) / opts["--run.study"] / opts["--run.name"]
            target = run / ("fit_summary.json" if argv[0] == "fit" else "test/metrics.json")
            if argv[0] == "fit":
                (run / "checkpoints").mkdir(parents=True, exist_ok=True)
                (run / "checkpoints" / "last.ckpt").write_text("weights")
        else:
            target = Path(opts["--out"]) / "done.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(argv))
        return subprocess.CompletedProcess(cmd, 0)

    def names(self) -> list[str]:
        """The ``--out`` (tools) or ``--run.name`` (training) of each call, in order."""
        found = []
        for argv in self.calls:
            opts = dict(zip(argv[1::2], argv[2::2]))
            found.append(opts.get("--out") or f"{argv[0]}:{opts['--run.name']}")
        return found


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCli:
    monkeypatch.chdir(tmp_path)
    cli = FakeCli()
    monkeypatch.setattr(tools.study.subprocess, "run", cli)
    return cli


def _write(path: str, data: Any) -> str:
    Path(path).write_text(yaml.safe_dump(data))
    return path


def _chain_study() -> str:
    """a -> b (its config names a's output) -> c (its args name b's folder); d is independent."""
    _write("a.yaml", {"dataset": "digits", "per_class": 5})
    _write("b.yaml", {"shadows": "work/a/done.txt", "variance": "fixed"})
    steps = [
        {
            "name": "a",
            "command": "data",
            "configs": ["a.yaml"],
            "args": {"out": "work/a"},
            "outputs": ["work/a/done.txt"],
        },
        {
            "name": "b",
            "command": "attack",
            "configs": ["b.yaml"],
            "args": {"out": "work/b"},
            "outputs": ["work/b/done.txt"],
        },
        {
            "name": "c",
            "command": "privacy-report",
            "args": {"out": "work/c", "attack_dir": ["work/b"]},
            "outputs": ["work/c/done.txt"],
        },
        {"name": "d", "command": "data", "args": {"out": "work/d"}, "outputs": ["work/d/done.txt"]},
    ]
    return _write("study.yaml", {"study": "s", "steps": steps})


def _status() -> dict[str, Any]:
    return json.loads(Path("runs/s/study_status.json").read_text())


def test_edited_config_stops_the_run_then_reruns_exactly_the_stale_steps(
    fake: FakeCli, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _chain_study()
    run_study(study)
    assert fake.names() == ["work/a", "work/b", "work/c", "work/d"]
    record = _status()["b"]
    assert record["state"] == "done" and len(record["fingerprint"]) == 64
    assert record["inputs"]["upstream"] == {"a": _status()["a"]["fingerprint"]}
    assert set(record["inputs"]["files"]) == {"b.yaml"}
    assert _status()["c"]["inputs"]["upstream"] == {"b": record["fingerprint"]}
    old_a = Path("work/a/done.txt").read_text()
    capsys.readouterr()

    _write("a.yaml", {"dataset": "digits", "per_class": 6})
    run_study(study, status=True)
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert "stale: a.yaml changed" in lines["a"]
    assert "stale: upstream a changed" in lines["b"]
    assert "stale: upstream b changed" in lines["c"]
    assert lines["d"].split()[2] == "done"

    with pytest.raises(SystemExit) as stop:
        run_study(study)
    message = str(stop.value)
    assert (
        "  a: a.yaml changed" in message
        and "  b: upstream a changed" in message
        and "  c: upstream b changed" in message
    )
    assert "  d:" not in message and "--rerun_stale true" in message
    assert len(fake.calls) == 4  # nothing ran

    run_study(study, rerun_stale=True)
    assert fake.names()[4:] == ["work/a", "work/b", "work/c"]
    assert Path("work/a.stale-1/done.txt").read_text() == old_a  # moved aside, content kept
    assert Path("work/b.stale-1/done.txt").is_file() and Path("work/c.stale-1/done.txt").is_file()
    assert not Path("work/d.stale-1").exists()
    assert _status()["a"]["moved_aside"] == [str(Path("work/a.stale-1").resolve())]

    run_study(study)
    assert len(fake.calls) == 7  # now up to date
    _write("a.yaml", {"dataset": "digits", "per_class": 7})
    run_study(study, rerun_stale=True)
    assert Path("work/a.stale-2/done.txt").is_file()  # the next free name; stale-1 untouched
    assert Path("work/a.stale-1/done.txt").read_text() == old_a


def test_unchanged_study_reruns_nothing(fake: FakeCli, capsys: pytest.CaptureFixture[str]) -> None:
    study = _chain_study()
    run_study(study)
    Path("a.yaml").write_text("# a comment and other layout\n" + Path("a.yaml").read_text().replace(": ", ":   "))
    before = _status()
    capsys.readouterr()
    run_study(study)
    assert len(fake.calls) == 4
    out = capsys.readouterr().out
    assert out.count("skip") == 4 and "all steps done" in out
    assert _status() == before
    run_study(study, status=True)
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == ["done"] * 4


def test_changed_argument_and_fit_run_folder(fake: FakeCli, capsys: pytest.CaptureFixture[str]) -> None:
    _write("fit.yaml", {"model": {"lr": 0.1}})
    steps = [
        {"name": "m", "command": "fit", "configs": ["fit.yaml"], "args": {"run.name": "m"},
         "outputs": ["runs/s/m/fit_summary.json"]},
        {"name": "m-test", "command": "test", "configs": ["fit.yaml"], "args": {"run.name": "m", "ckpt_path": "last"},
         "outputs": ["runs/s/m/test/metrics.json"]},
    ]  # fmt: skip
    study = _write("study.yaml", {"study": "s", "steps": steps})
    run_study(study)
    assert _status()["m-test"]["inputs"]["upstream"] == {"m": _status()["m"]["fingerprint"]}  # via run.name

    steps[1]["args"]["ckpt_path"] = "best"  # only the test changes: the fit's folder stays
    _write(study, {"study": "s", "steps": steps})
    capsys.readouterr()
    run_study(study, status=True)
    out = capsys.readouterr().out
    assert "m-test                   stale: argument --ckpt_path last -> best" in out
    assert "m                        done" in out
    run_study(study, rerun_stale=True)
    assert fake.names()[2:] == ["test:m"]
    assert Path("runs/s/m/test.stale-1/metrics.json").is_file() and Path("runs/s/m/fit_summary.json").is_file()

    steps[0]["args"]["trainer.max_epochs"] = 3  # the fit changes: its whole run folder moves, the test follows
    _write(study, {"study": "s", "steps": steps})
    with pytest.raises(SystemExit, match=r"m: argument --trainer.max_epochs 3 added"):
        run_study(study)
    run_study(study, rerun_stale=True)
    assert fake.names()[3:] == ["fit:m", "test:m"]
    assert Path("runs/s/m.stale-1/checkpoints/last.ckpt").is_file()  # a resumed fit would have reused it
    assert Path("runs/s/m.stale-1/test.stale-1/metrics.json").is_file()
    assert Path("runs/s/m/checkpoints/last.ckpt").is_file() and Path("runs/s/m/test/metrics.json").is_file()
    assert Path("runs/s/study_status.json").is_file()  # the status folder itself is never moved


def test_upstream_that_has_to_run_again_makes_finished_downstream_stale(fake: FakeCli) -> None:
    study = _chain_study()
    run_study(study)
    Path("work/a/done.txt").unlink()  # a must run again; b and c were computed from its old output
    with pytest.raises(SystemExit, match="b: upstream a has to run"):
        run_study(study)
    run_study(study, rerun_stale=True)
    assert fake.names()[4:] == ["work/a", "work/b", "work/c"]
    assert Path("work/b.stale-1/done.txt").is_file() and not Path("work/a.stale-1").exists()


def test_upstream_rerun_alone_marks_downstream_stale(fake: FakeCli, capsys: pytest.CaptureFixture[str]) -> None:
    study = _chain_study()
    run_study(study)
    _write("a.yaml", {"dataset": "digits", "per_class": 9})
    run_study(study, only=["a"], rerun_stale=True)  # b and c are not selected, so they stay
    assert fake.names()[4:] == ["work/a"]
    capsys.readouterr()
    run_study(study, status=True)
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["a"].split()[2] == "done"
    assert "stale: upstream a changed" in lines["b"]  # its recorded upstream fingerprint differs


def test_legacy_status_file_is_adopted(fake: FakeCli, capsys: pytest.CaptureFixture[str]) -> None:
    study = _chain_study()
    run_study(study)
    legacy = {name: {"state": "done", "seconds": 1.0} for name in "abc"}  # d: outputs but no record at all
    Path("runs/s/study_status.json").write_text(json.dumps(legacy))
    capsys.readouterr()
    run_study(study, status=True)
    assert capsys.readouterr().out.count(" done: outputs predate fingerprints (adopted)") == 4
    run_study(study)
    assert len(fake.calls) == 4
    assert capsys.readouterr().out.count("predate fingerprints; recorded as done") == 4
    status = _status()
    assert all(status[n]["adopted"] is True and len(status[n]["fingerprint"]) == 64 for n in "abcd")
    assert status["b"]["upstream_finished"] == {"a": status["a"]["finished"]}
    run_study(study)
    assert len(fake.calls) == 4
    _write("b.yaml", {"shadows": "work/a/done.txt", "variance": "online"})
    with pytest.raises(SystemExit, match=r"b: b\.yaml changed"):
        run_study(study)

    Path("runs/s/study_status.json").write_text(json.dumps(legacy))
    Path("work/c/done.txt").unlink()  # a legacy step half done: it runs (resumes), nothing is stale
    run_study(study)
    assert fake.names()[4:] == ["work/c"]


def test_seeds_expand_into_one_step_per_seed(fake: FakeCli) -> None:
    _write("fit.yaml", {"model": {"lr": 0.1}})
    _write("report.yaml", {"entries": [{"attack_dir": ["work/att-seed0", "work/att-seed1"]}]})
    steps = [
        {"name": "t", "command": "fit", "seeds": [0, 1], "configs": ["fit.yaml"], "args": {"run.name": "t-seed{seed}"},
         "outputs": ["runs/s/t-seed{seed}/fit_summary.json"]},
        {"name": "u", "command": "fit", "seeds": [3], "configs": ["fit.yaml"],
         "args": {"run.name": "u{seed}", "seed_everything": 7}, "outputs": ["runs/s/u{seed}/fit_summary.json"]},
        {"name": "att", "command": "attack", "seeds": [0, 1], "needs": ["t-seed{seed}"],
         "args": {"out": "work/att-seed{seed}", "target_checkpoint": "runs/s/t-seed{seed}/checkpoints/last.ckpt"},
         "outputs": ["work/att-seed{seed}/done.txt"]},
        {"name": "report", "command": "privacy-report", "configs": ["report.yaml"], "needs": ["u"],
         "args": {"out": "work/report"}, "outputs": ["work/report/done.txt"]},
    ]  # fmt: skip
    study = _write("study.yaml", {"study": "s", "steps": steps})
    name, loaded = load_study(Path(study))
    assert [s.name for s in loaded] == ["t-seed0", "t-seed1", "u-seed3", "att-seed0", "att-seed1", "report"]
    t1 = loaded[1]
    assert t1.seed == 1 and t1.outputs == ["runs/s/t-seed1/fit_summary.json"]
    argv = step_argv(name, t1)
    assert argv[argv.index("--run.name") + 1] == "t-seed1" and argv[argv.index("--seed_everything") + 1] == "1"
    u = step_argv(name, loaded[2])
    assert u.count("--seed_everything") == 1 and u[u.index("--seed_everything") + 1] == "7"  # the user's own
    assert loaded[3].needs == ["t-seed0"] and loaded[3].args["out"] == "work/att-seed0"
    assert loaded[5].needs == ["u-seed3"]

    run_study(study)
    assert fake.names() == ["fit:t-seed0", "fit:t-seed1", "fit:u3", "work/att-seed0", "work/att-seed1", "work/report"]
    status = _status()
    assert list(status["att-seed1"]["inputs"]["upstream"]) == ["t-seed1"]  # seed 1 reads seed 1 only
    assert list(status["report"]["inputs"]["upstream"]) == ["u-seed3", "att-seed0", "att-seed1"]  # from report.yaml

    run_study(study, only=["att"], status=True)
    _write("fit.yaml", {"model": {"lr": 0.2}})
    with pytest.raises(SystemExit) as stop:
        run_study(study)
    assert all(f"  {n}: " in str(stop.value) for n in ["t-seed0", "t-seed1", "att-seed0", "att-seed1", "report"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"step 'b' has unknown keys \['colour'\]"),
        ({"args": {"out": "work/b-{seed}"}}, r"step 'b': uses \{seed\} in args but has no 'seeds' list"),
        ({"needs": ["nope"]}, r"step 'b': needs 'nope', which names no earlier step"),
        ({"needs": ["c"]}, r"step 'b': needs 'c', which names no earlier step"),
        ({"seeds": [0, "1"]}, r"step 'b': 'seeds' must be a non-empty list of distinct integers"),
        ({"seeds": [0, 0]}, r"step 'b': 'seeds' must be a non-empty list of distinct integers"),
        ({"seeds": [0, 1]}, r"step 'b': has seeds, so every output must contain \{seed\}"),
        ({"needs": "a"}, r"step 'b': 'needs' must be a list of strings"),
        ({"command": "fit", "seeds": [0], "outputs": ["r/{seed}.json"]}, r"step 'b': has seeds, so args 'run.name'"),
    ],
)
def test_bad_study_files_name_the_file_and_step(fake: FakeCli, change: dict[str, Any], message: str) -> None:
    study = _chain_study()
    data = yaml.safe_load(Path(study).read_text())
    data["steps"][1].update(change)
    _write(study, data)
    with pytest.raises(ValueError, match=message) as err:
        load_study(Path(study))
    assert str(err.value).startswith("study.yaml: ") and "\n" not in str(err.value)


def test_real_data_step_goes_stale_and_reruns_into_a_fresh_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real `data` command: an edited config is caught, the old folder moves aside, the new one is made."""
    from cli import main

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(repo))
    _write("data.yaml", {"dataset": "digits", "per_class": 5, "out": "d"})
    steps = [{"name": "data", "command": "data", "configs": ["data.yaml"], "outputs": ["d/manifest.json"]}]
    study = _write("study.yaml", {"study": "s", "steps": steps})
    run_study(study)
    _write("data.yaml", {"dataset": "digits", "per_class": 6, "out": "d"})
    capsys.readouterr()
    main(["run", study, "--status", "true"])
    assert "data                     stale: data.yaml changed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"data: data\.yaml changed"):
        main(["run", study])
    main(["run", study, "--rerun_stale", "true"])
    assert json.loads(Path("d.stale-1/manifest.json").read_text())["options"]["per_class"] == 5
    assert json.loads(Path("d/manifest.json").read_text())["options"]["per_class"] == 6
