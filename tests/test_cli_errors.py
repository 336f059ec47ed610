"""Issue 11 items 1, 9, 10: one-line errors that name the option, light start-up, one low-FPR note per attack.

Errors are driven through the shell path (``cli.main()`` with no args, ``sys.argv`` patched): the message
must be one line starting ``synthpriv: error:``, with no usage dump and no traceback on stderr.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import tiny_config, tiny_dataset

from cli import main
from privacy.membership import balanced_mask

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the console entry point as the shell would: it must exit with one line, no usage, no traceback."""
    monkeypatch.setattr(sys, "argv", ["synthpriv", *argv])
    monkeypatch.delenv("SYNTHPRIV_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = str(exit_info.value.code)
    assert message.startswith("synthpriv: error: ") and "\n" not in message, message
    assert "Traceback" not in message and "Union subtypes" not in message and "Given value" not in message
    err = capsys.readouterr().err
    assert "usage:" not in err and "error:" not in err and "Traceback" not in err, err
    return message


@pytest.fixture
def config(tmp_path: Path) -> list[str]:
    data = tiny_dataset(tmp_path / "data")
    path = tiny_config(tmp_path / "c.yaml", data)
    return ["--config", str(path), "--run.root", str(tmp_path / "runs")]


# ----------------------------------------------------------------------------------- 1. errors


@pytest.mark.parametrize(
    ("option", "typo", "closest"),
    [
        ("--data.init_args.batch_sise", "data.init_args.batch_sise", "data.init_args.batch_size"),
        ("--model.init_args.lrr", "model.init_args.lrr", "model.init_args.lr"),
        ("--trainer.max_epohcs", "trainer.max_epohcs", "trainer.max_epochs"),
    ],
)
def test_typoed_key_names_it_and_the_closest_option(
    config: list[str],
    option: str,
    typo: str,
    closest: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, option, "3"])
    assert re.search(rf"unknown option '(--)?{re.escape(typo)}'", message), message
    assert re.search(rf"did you mean (--)?{re.escape(closest)}\?", message), message


def test_typoed_key_in_a_yaml_file(
    config: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "typo.yaml").write_text("data:\n  init_args:\n    batch_sise: 3\n")
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, "--config", str(tmp_path / "typo.yaml")])
    assert "unknown option 'data.init_args.batch_sise'" in message
    assert "did you mean data.init_args.batch_size?" in message


def test_typoed_tool_option_and_unknown_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _one_line_error(monkeypatch, capsys, ["attack", "a.npz", str(tmp_path), "--resamplse", "200"])
    assert "unknown option '--resamplse' (did you mean --resamples?)" in message
    # A positional parameter written as an option is named as such (it used to read "did you mean --out?").
    message = _one_line_error(monkeypatch, capsys, ["attack", "a.npz", "--out", str(tmp_path)])
    assert "'--out' is a positional argument here: give its value without '--out'" in message
    message = _one_line_error(monkeypatch, capsys, ["fitt"])
    assert "unknown command 'fitt'" in message and "did you mean fit?" in message


def test_missing_data_root_names_the_option_and_path(
    config: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "my_data" / "train"
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, "--data.init_args.train_roots", str(missing)])
    assert "data.train_roots[0]" in message and str(missing) in message and "does not exist" in message


def test_empty_class_folder_names_it(
    config: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "data" / "train"
    (train / "deer").mkdir()
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, "--data.init_args.train_roots", str(train)])
    assert "data.train_roots[0]" in message and "'deer'" in message and "hold no images" in message


def test_batch_size_zero_names_the_option(
    config: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, "--data.init_args.batch_size", "0"])
    assert "data.batch_size" in message and "found 0" in message


def test_max_epochs_zero_names_the_option(
    config: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, "--trainer.max_epochs", "0"])
    assert message.startswith("synthpriv: error: trainer.max_epochs:") and "found 0" in message
    assert not (tmp_path / "runs").exists()  # refused before the run folder is made


def test_cosine_schedule_without_an_epoch_limit_names_max_epochs(
    config: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--trainer.max_epochs", "-1", "--trainer.max_steps", "1", "--model.init_args.scheduler", "cosine"]
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, *options])
    assert message.startswith("synthpriv: error: trainer.max_epochs:") and "found -1 (no limit)" in message


def test_bad_value_names_the_option(
    config: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _one_line_error(monkeypatch, capsys, ["fit", *config, "--data.init_args.batch_size", "many"])
    assert "data.init_args.batch_size: " in message and "many" in message


def test_debug_keeps_the_full_error(config: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["synthpriv", "fit", *config, "--data.init_args.batch_size", "0"])
    monkeypatch.setenv("SYNTHPRIV_DEBUG", "1")
    with pytest.raises(ValueError, match="Union subtypes") as err:
        main()
    assert "data.batch_size" in str(err.value.__cause__)


def test_help_and_print_config_still_work(config: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0 and "--data.help" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *config, "--print_config"])
    assert exit_info.value.code == 0 and "batch_size: 8" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- 9. start-up


@pytest.mark.parametrize("argv", [["--help"], [], ["attack", "--help"], ["run", "--help"], ["data", "--help"]])
def test_help_and_tools_start_without_lightning_or_torch(argv: list[str]) -> None:
    code = (
        "import sys, cli\n"
        f"sys.argv = ['synthpriv', *{argv!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
        "print(sorted(m for m in ('torch', 'lightning', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_overview_does_not_import_jsonargparse() -> None:
    code = "import sys, cli\ncli.main(['--help'])\nprint('jsonargparse' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_synthpriv_cli_class_is_still_importable_from_cli() -> None:
    from cli import SynthPrivCLI
    from tools.training_cli import SynthPrivCLI as Training

    assert SynthPrivCLI is Training


# ----------------------------------------------------------------------------------- 10. noise


def test_attack_prints_the_low_fpr_note_once_and_no_repeated_warnings(tmp_path: Path) -> None:
    k, n, c, q = 8, 120, 4, 2
    rng = np.random.default_rng(0)
    mask = balanced_mask(k, n, 0)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, q, c))
    boost = rng.normal(0, 1, n)[None, :, None] + np.where(mask, 2.0, 0.0)[..., None]
    logits += boost[..., None] * np.eye(c)[labels][None, :, None, :]
    ids = np.asarray([f"x{i:04d}" for i in range(n)])
    np.savez(tmp_path / "shadows.npz", logits=logits, labels=labels, ids=ids, mask=mask)
    # Leave-one-out: every shadow is a target in turn (8 evaluations per attack, 3 attacks).
    argv = ["attack", str(tmp_path / "shadows.npz"), str(tmp_path / "out"), "--resamples", "100"]
    result = subprocess.run([sys.executable, "-m", "cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("note: TPR at FPR") == 1, output
    assert "not reported" in output and "non-members support FPRs down to" in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), output  # nothing printed twice
    assert "Warning" not in output, output
