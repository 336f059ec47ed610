"""The README's commands, run as written: own images (train, test, attack, report), LiRA, and DDP launches.

The code blocks are read from README.md itself, so an example that stops working fails here. The only things
provided by the test are what a user provides: their image folder (``my_data``, tiny) and the working folder.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from cli_helpers import tiny_dataset

from cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[list[str]]:
    """synthpriv argv lists of a bash block: continuation lines joined, comments skipped, ``S=...`` expanded."""
    variables: dict[str, str] = {}
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"(\w+)=(\S+)", line)
        if assignment:
            variables[assignment[1]] = assignment[2]
            continue
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        words = shlex.split(line)
        assert Path(words[0]).name == "synthpriv", f"README command does not start with synthpriv: {line}"
        commands.append(words[1:])
    return commands


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the repository's configs/ and a small image folder my_data/{train,val,test}."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    tiny_dataset(tmp_path / "my_data", {"face": 8, "other": 8}, size=16)
    return tmp_path


@pytest.mark.slow
def test_own_images_and_lira_sections_run_as_written(user_folder: Path) -> None:
    section = _section("Train on your own images")
    config = next(b for b in _blocks(section, "yaml") if b.startswith("# my_teacher.yaml"))
    (user_folder / "my_teacher.yaml").write_text(config)
    own = next(b for b in _blocks(section, "bash") if "shadows-config" in b)
    commands = _commands(own)
    assert [c[0] for c in commands] == ["fit", "test", "shadows-config", "fit", "predict", "attack", "privacy-report"]
    stray = ROOT / "runs" / "mine"  # where W&B's service wrote a relative save_dir (its own working directory)
    stray_before = stray.exists()
    for argv in commands:
        main(argv)
    assert stray_before or not stray.exists(), f"a run wrote into {stray} instead of {user_folder}"

    teacher = user_folder / "runs" / "mine" / "teacher"
    # What the section promises in the run folder (the quickstart's listing).
    for name in (
        "config.yaml",
        "fit_summary.json",
        "trained_ids.txt",
        "test/metrics.json",
        "test/summary.md",
        "test/predictions.png",
        "checkpoints/last.ckpt",
    ):
        assert (teacher / name).exists(), name
    assert any((teacher / "wandb").glob("offline-run-*"))
    report = json.loads((user_folder / "runs/mine/report/report.json").read_text())["rows"][0]
    tested = json.loads((teacher / "test" / "metrics.json").read_text())
    assert report["accuracy_pct"] == pytest.approx(100 * tested["metrics"]["test/acc"])
    low, high = report["auc_mia_ci95_pct"]
    assert low <= report["auc_mia_pct"] <= high
    # 16 validation images are the non-members: too few for 1 % FPR (needs 100), as the section says.
    assert report["non_members"] == 16 and report["tpr_at_1pct_fpr_unsupported"] is True

    # The LiRA section's three steps against the same teacher (earlier outputs moved aside, never overwritten).
    for name in ("teacher-shadows", "attack-teacher", "report"):
        (user_folder / "runs" / "mine" / name).rename(user_folder / "runs" / "mine" / f"{name}-own")
    lira = _blocks(_section("Membership inference (LiRA, RMIA)"), "bash")[0]
    for argv in _commands(lira):
        main(argv)
    again = json.loads((user_folder / "runs/mine/report/report.json").read_text())["rows"][0]
    assert again["auc_mia_pct"] == pytest.approx(report["auc_mia_pct"])  # same seeds, same shadows, same figure


def test_ddp_commands_of_the_readme_are_the_ones_tested() -> None:
    """tests/test_ddp_preset.py launches these two commands (plus a tiny my_teacher.yaml and a run folder)."""
    section = " ".join(" ".join(_blocks(_section("Several GPUs and nodes"), "bash")).replace("\\\n", " ").split())
    assert (
        "synthpriv fit --config configs/trainer/ddp.yaml --trainer.devices 2 --config my_teacher.yaml "
        "--trainer.accelerator cpu" in section
    )
    assert (
        "torchrun --standalone --nnodes 1 --nproc_per_node 2 -m cli fit --config configs/trainer/ddp.yaml "
        "--trainer.devices 2 --trainer.num_nodes 1 --config my_teacher.yaml --trainer.accelerator cpu" in section
    )
