"""Report inputs (issue 10, items 9-12): intervals, unsupported TPRs, seeds, accuracy unit, Markdown escaping,
config-relative paths, format-2 attack folders, RMIA rows and the W&B credential check, for privacy-report and
feature-report. Attack folders are written here in the attack's format 2, so no attack runs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cli import main
from tools.feature_report import FeatureEntry, _lira, _test_metrics
from tools.feature_report import markdown_table as feature_table
from tools.privacy_report import ReportEntry, privacy_report
from tools.report_inputs import md_escape
from tools.wandb_check import has_wandb_credentials, require_wandb_credentials

METHOD = "stratified bootstrap over examples (members and non-members resampled separately), 95 % percentile interval"


def write_attack(
    folder: Path,
    *,
    auc: float = 0.6,
    auc_ci: tuple[float, float] = (0.58, 0.62),
    tpr: dict[float, float | None] | None = None,
    non_members: int = 1000,
    attacks: tuple[str, ...] = ("online", "offline", "global"),
    target_checkpoint: str | None = None,
    fmt: int | None = 2,
) -> Path:
    """An attack folder as `synthpriv attack` writes it (format 2): metrics.json and roc.npz."""
    tpr = {0.1: 0.21, 0.01: 0.059, 0.001: 0.011} if tpr is None else tpr
    metrics: dict[str, Any] = {
        "auc": auc,
        "auc_ci95": list(auc_ci),
        "balanced_accuracy": 0.57,
        "members": 1000,
        "non_members": non_members,
        "unsupported_fprs": [],
    }
    for fpr in (0.1, 0.01, 0.001, 1e-4, 1e-5):
        value = tpr.get(fpr) if non_members * fpr >= 1 else None
        metrics[f"tpr@{fpr:g}"] = value
        metrics[f"tpr@{fpr:g}_ci95"] = None if value is None else [max(value - 0.01, 0), min(value + 0.01, 1)]
        if value is None:
            metrics["unsupported_fprs"].append(fpr)
    record: dict[str, Any] = {
        "settings": {"variance": "fixed", **({"rmia": {"gamma": 1.0, "offline_a": None}} if "rmia" in attacks else {})},
        "shadows": 16,
        "target_checkpoint": target_checkpoint,
        "intervals": {"method": METHOD, "resamples": 1000, "seed": 0},
        "metrics": {name: dict(metrics) for name in attacks},
    }
    if fmt is not None:
        record = {"format": fmt, **record}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(record))
    curve = np.array([0.0, 0.001, 0.01, 0.1, 1.0]), np.array([0.0, 0.011, 0.059, 0.21, 1.0])
    np.savez(folder / "roc.npz", **{f"{a}_{k}": v for a in attacks for k, v in zip(("fpr", "tpr"), curve)})
    return folder


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in json.loads((out / "report.json").read_text())["rows"]}


def _table_row(table: str, label_cell: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {label_cell} |"))


def _cells(line: str) -> list[str]:
    """Cells of a Markdown row, splitting only at unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


# ---- accuracy unit, AOP and its interval ------------------------------------------------------------------
def test_accuracy_is_a_fraction_and_aop_follows(tmp_path: Path) -> None:
    folder = write_attack(tmp_path / "a")
    with pytest.raises(
        ValueError,
        match=re.escape("entry 'teacher': accuracy must be a fraction in [0, 1] (e.g. 0.85 for 85 %); found 85"),
    ):
        privacy_report(str(tmp_path / "r"), [ReportEntry("teacher", str(folder), accuracy=85)])
    assert not (tmp_path / "r").exists()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="accuracy must be a fraction in"):
            privacy_report(str(tmp_path / "r"), [ReportEntry("teacher", str(folder), accuracy=bad)])
    with pytest.raises(ValueError, match="give accuracy or test_metrics, not both"):
        privacy_report(str(tmp_path / "r"), [ReportEntry("t", str(folder), accuracy=0.85, test_metrics="m.json")])
    privacy_report(str(tmp_path / "r"), [ReportEntry("teacher", folder, accuracy=0.85)])  # a pathlib.Path works
    row = _rows(tmp_path / "r")["teacher"]
    assert row["accuracy_pct"] == pytest.approx(85.0)
    assert row["aop"] == pytest.approx(85 * (50 / 60) ** 2) and round(row["aop"], 2) == 59.03
    # AOP falls as AUC rises: its interval is AOP at the AUC interval's ends [0.58, 0.62], accuracy fixed.
    assert row["aop_ci95"] == pytest.approx([85 * (50 / 62) ** 2, 85 * (50 / 58) ** 2])  # [55.28, 63.17]
    table = (tmp_path / "r" / "report.md").read_text()
    assert "| teacher | 85.00 | 60.00 [58.00, 62.00] | 1.10 [0.10, 2.10] | 5.90 [4.90, 6.90] | " in table
    assert "59.03 [55.28, 63.17]" in table
    assert METHOD in table and "accuracy held fixed" in table


def test_accuracy_read_from_test_metrics_is_checked(tmp_path: Path) -> None:
    folder = write_attack(tmp_path / "a")
    metrics = tmp_path / "m.json"
    for value, found in ((85, "found 85"), (None, "found None"), ("0.9", "found '0.9'")):
        metrics.write_text(json.dumps({"metrics": {"test/acc": value}}))
        with pytest.raises(ValueError, match=rf"entry 'x': .*m\.json 'test/acc' must be a fraction .*{found}"):
            privacy_report(str(tmp_path / "r"), [ReportEntry("x", str(folder), test_metrics=str(metrics))])
    metrics.write_text('{"metrics": {"test/acc": NaN}}')  # what json.dumps writes for a NaN
    with pytest.raises(ValueError, match=r"must be a fraction in .*found nan"):
        privacy_report(str(tmp_path / "r"), [ReportEntry("x", str(folder), test_metrics=str(metrics))])
    metrics.write_text("[0.9]")
    with pytest.raises(ValueError, match=r"m\.json must hold a JSON object; found list"):
        privacy_report(str(tmp_path / "r"), [ReportEntry("x", str(folder), test_metrics=str(metrics))])
    metrics.write_text("{not json")
    with pytest.raises(ValueError, match=r"m\.json is not valid JSON"):
        privacy_report(str(tmp_path / "r"), [ReportEntry("x", str(folder), test_metrics=str(metrics))])
    assert not (tmp_path / "r").exists()


def test_missing_target_test_metrics_is_an_error_unless_accuracy_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = write_attack(Path("a"), target_checkpoint="runs/q/teacher/checkpoints/best-epoch012.ckpt")
    with pytest.raises(
        FileNotFoundError,
        match=r"target test metrics of .*runs/q/teacher/test/metrics\.json.*"
        r"accuracy: none",
    ):
        privacy_report("r", [ReportEntry("teacher", "a")])
    loo = write_attack(Path("loo"))  # leave-one-out: no target checkpoint
    with pytest.raises(ValueError, match=r"no target checkpoint .* accuracy: none"):
        privacy_report("r", [ReportEntry("loo", "loo")])
    assert not Path("r").exists()
    (Path("runs/q/teacher/test")).mkdir(parents=True)
    Path("runs/q/teacher/test/metrics.json").write_text(json.dumps({"metrics": {"test/acc": 0.9}}))
    privacy_report("r", [ReportEntry("teacher", str(folder)), ReportEntry("loo", str(loo), accuracy="none")])
    rows = _rows(Path("r"))
    assert rows["teacher"]["accuracy_pct"] == pytest.approx(90.0)
    assert rows["teacher"]["test_metrics"] == str(Path.cwd() / "runs/q/teacher/test/metrics.json")
    assert rows["loo"]["accuracy_pct"] is None and rows["loo"]["aop"] is None
    assert "| loo | – |" in Path("r/report.md").read_text()


# ---- Markdown escaping ------------------------------------------------------------------------------------
def test_labels_and_titles_are_escaped(tmp_path: Path) -> None:
    folder = write_attack(tmp_path / "a")
    privacy_report(str(tmp_path / "r"), [ReportEntry("a|b\nc", str(folder), accuracy=0.5)], title="t|1\nx")
    table = (tmp_path / "r" / "report.md").read_text()
    assert table.startswith("# t\\|1 x\n")
    line = _table_row(table, "a\\|b c")
    header = _cells(next(ln for ln in table.splitlines() if ln.startswith("| run |")))
    assert len(_cells(line)) == len(header) == 7
    assert md_escape("a|b") == "a\\|b"
    assert _rows(tmp_path / "r")["a|b\nc"]["label"] == "a|b\nc"  # the JSON keeps the label as given


# ---- unsupported TPRs, intervals, RMIA --------------------------------------------------------------------
def test_unsupported_tpr_is_flagged_not_printed(tmp_path: Path) -> None:
    small = write_attack(tmp_path / "small", non_members=200, attacks=("online", "rmia"))
    privacy_report(
        str(tmp_path / "r"),
        [ReportEntry("small", str(small), accuracy=0.9), ReportEntry("rmia", str(small), "rmia", accuracy=0.9)],
    )
    rows = _rows(tmp_path / "r")
    small_row = rows["small"]
    assert small_row["tpr_at_0.1pct_fpr_unsupported"] is True and small_row["tpr_at_0.1pct_fpr_pct"] is None
    assert small_row["tpr_at_0.1pct_fpr_ci95_pct"] is None
    assert small_row["tpr_at_1pct_fpr_unsupported"] is False  # 200 non-members support 1 % (needs 100)
    assert small_row["tpr_at_1pct_fpr_pct"] == pytest.approx(5.9)
    assert small_row["auc_mia_ci95_pct"] == pytest.approx([58.0, 62.0])
    assert rows["rmia"]["attack"] == "RMIA"
    table = (tmp_path / "r" / "report.md").read_text()
    cells = _cells(_table_row(table, "small"))
    assert cells[3] == "unsupported (n=200)" and cells[4] == "5.90 [4.90, 6.90]"
    assert "fewer than 1/FPR" in table
    assert _cells(_table_row(table, "rmia"))[6] == "RMIA (K=16, gamma=1, online)"
    assert _cells(_table_row(table, "small"))[6] == "LiRA online (K=16, fixed)"


def test_attack_folder_errors(tmp_path: Path) -> None:
    def report(folder: Path, attack: str = "online") -> None:
        privacy_report(str(tmp_path / "r"), [ReportEntry("x", str(folder), attack, accuracy=0.5)])

    old = write_attack(tmp_path / "old", fmt=None)
    with pytest.raises(ValueError, match=r"has no 'format'.*rerun `synthpriv attack` with the same arguments"):
        report(old)
    no_roc = write_attack(tmp_path / "no_roc")
    (no_roc / "roc.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_roc/roc\.npz does not exist"):
        report(no_roc)
    with pytest.raises(ValueError, match=r"has no 'rmia' attack \(has \['global', 'offline', 'online'\]\)"):
        report(write_attack(tmp_path / "lira"), "rmia")
    shape = tmp_path / "shape"
    shape.mkdir()
    (shape / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object; found list"):
        report(shape)
    (shape / "metrics.json").write_text(
        json.dumps({"format": 2, "intervals": {"method": "m"}, "metrics": {"online": {"auc": 0.6}}})
    )
    with pytest.raises(ValueError, match=r"metrics\['online'\] has no 'auc_ci95'"):
        report(shape)
    bad_auc = write_attack(tmp_path / "bad_auc", auc=60.0)
    with pytest.raises(ValueError, match=r"\['auc'\] must be a fraction in \[0, 1\] .*found 60"):
        report(bad_auc)
    bad_roc = write_attack(tmp_path / "bad_roc")
    np.savez(bad_roc / "roc.npz", online_fpr=np.zeros(3), online_tpr=np.zeros(4))
    with pytest.raises(ValueError, match="two finite 1-D arrays"):
        report(bad_roc)
    (bad_roc / "roc.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"roc\.npz is not a readable \.npz file"):
        report(bad_roc)
    assert not (tmp_path / "r").exists()


# ---- seeds ------------------------------------------------------------------------------------------------
def test_seeds_give_mean_and_sample_std(tmp_path: Path) -> None:
    folders = [
        str(write_attack(tmp_path / f"s{i}", auc=auc, auc_ci=(auc - 0.01, auc + 0.01)))
        for i, auc in enumerate((0.60, 0.62, 0.64))
    ]
    entry = ReportEntry("teacher", folders, accuracy=[0.8, 0.9, 1.0])
    privacy_report(str(tmp_path / "r"), [entry, ReportEntry("one", folders[0], accuracy=0.8)])
    row = _rows(tmp_path / "r")["teacher"]
    assert row["seeds"] == 3 and len(row["per_seed"]) == 3
    assert row["auc_mia_pct"] == pytest.approx(62.0) and row["auc_mia_pct_std"] == pytest.approx(2.0)  # ddof=1
    assert row["accuracy_pct"] == pytest.approx(90.0) and row["accuracy_pct_std"] == pytest.approx(10.0)
    aops = [100 * a * (50 / (100 * u)) ** 2 for a, u in ((0.8, 0.6), (0.9, 0.62), (1.0, 0.64))]
    assert row["aop"] == pytest.approx(np.mean(aops)) and row["aop_std"] == pytest.approx(np.std(aops, ddof=1))
    assert row["per_seed"][1]["auc_mia_ci95_pct"] == pytest.approx([61.0, 63.0])
    assert row["attack_dir"] == folders
    table = (tmp_path / "r" / "report.md").read_text()
    cells = _cells(_table_row(table, "teacher"))
    assert cells[1] == "90.00 ± 10.00 (n=3)" and cells[2] == "62.00 ± 2.00 (n=3)"
    assert "sample standard deviation (ddof=1)" in table
    with pytest.raises(ValueError, match="accuracy lists 2 values but attack_dir lists 3 folders"):
        privacy_report(str(tmp_path / "r2"), [ReportEntry("t", folders, accuracy=[0.8, 0.9])])
    # A seed without a supported TPR makes the seeded row unsupported.
    small = write_attack(tmp_path / "small", non_members=500)
    privacy_report(str(tmp_path / "r3"), [ReportEntry("t", [folders[0], str(small)], accuracy=0.8)])
    row = _rows(tmp_path / "r3")["t"]
    assert row["tpr_at_0.1pct_fpr_unsupported"] and row["non_members"] == 500
    assert _cells(_table_row((tmp_path / "r3" / "report.md").read_text(), "t"))[3] == "unsupported (n=500)"


# ---- paths relative to the config file --------------------------------------------------------------------
def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = tmp_path / "study"
    write_attack(study / "attack-teacher")
    (study / "acc.json").write_text(json.dumps({"metrics": {"test/acc": 0.75}}))
    config = study / "report.yaml"
    entries = [{"label": "teacher", "attack_dir": "attack-teacher", "test_metrics": "acc.json"}]
    config.write_text(yaml.safe_dump({"out": "out", "entries": entries}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    main(["privacy-report", "--config", str(config)])
    row = _rows(elsewhere / "out")["teacher"]  # out: relative to the working directory
    assert row["attack_dir"] == str(study / "attack-teacher") and row["accuracy_pct"] == pytest.approx(75.0)
    # The working directory comes first (the study configs name runs/... from the repository root).
    write_attack(elsewhere / "attack-teacher", auc=0.7, auc_ci=(0.69, 0.71))
    main(["privacy-report", "--config", str(config)])
    assert _rows(elsewhere / "out")["teacher"]["auc_mia_pct"] == pytest.approx(70.0)
    entries[0]["attack_dir"] = "attack-missing"
    config.write_text(yaml.safe_dump({"out": "out2", "entries": entries}))
    with pytest.raises(FileNotFoundError) as err:
        main(["privacy-report", "--config", str(config)])
    assert str(elsewhere / "attack-missing") in str(err.value) and str(study / "attack-missing") in str(err.value)
    assert "entry 'teacher' attack_dir" in str(err.value)
    assert not (elsewhere / "out2").exists()


def test_bad_input_ends_in_one_line_from_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_attack(tmp_path / "a")
    config = tmp_path / "report.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "r"),
                "entries": [{"label": "teacher", "attack_dir": str(tmp_path / "a"), "accuracy": 85}],
            }
        )
    )
    monkeypatch.setattr(sys, "argv", ["synthpriv", "privacy-report", "--config", str(config)])
    monkeypatch.delenv("SYNTHPRIV_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == (
        "synthpriv: error: entry 'teacher': accuracy must be a fraction in [0, 1] (e.g. 0.85 for 85 %); found 85"
    )
    config.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "r"),
                "entries": [{"label": "teacher", "attack_dir": str(tmp_path / "a"), "accuracy": "none"}],
            }
        )
    )
    main(["privacy-report", "--config", str(config)])
    assert "| teacher | – | 60.00 [58.00, 62.00] |" in capsys.readouterr().out


# ---- W&B --------------------------------------------------------------------------------------------------
def _no_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def test_wandb_online_without_a_key_is_refused_before_any_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("WANDB_MODE", "online")
    folder = write_attack(tmp_path / "a")
    entry = ReportEntry("x", str(folder), accuracy=0.5)
    with pytest.raises(ValueError, match=r"^privacy-report: WANDB_MODE=online but no W&B API key was found"):
        privacy_report(str(tmp_path / "r"), [entry], wandb_project="p")
    with pytest.raises(ValueError, match=r"^feature-report: WANDB_MODE=online but no W&B API key"):
        from tools.feature_report import feature_report

        feature_report(str(tmp_path / "f"), [FeatureEntry("x", str(tmp_path))], wandb_project="p")
    assert not (tmp_path / "r").exists() and not (tmp_path / "f").exists()
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(ValueError, match=r"WANDB_MODE must be one of online, .*; found 'onlin'"):
        privacy_report(str(tmp_path / "r"), [entry], wandb_project="p")
    monkeypatch.setenv("WANDB_MODE", "offline")
    require_wandb_credentials("privacy-report")  # offline needs no key
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    require_wandb_credentials("privacy-report")


def test_wandb_key_in_netrc_is_found_as_wandb_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb.sdk.lib.wbauth import read_netrc_auth

    home = tmp_path / "home"
    _no_credentials(monkeypatch, home)
    assert not has_wandb_credentials() and read_netrc_auth(host="https://api.wandb.ai") is None
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (home / ".netrc").chmod(0o600)
    assert has_wandb_credentials() and read_netrc_auth(host="https://api.wandb.ai") == "k" * 40
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host does not count
    assert not has_wandb_credentials() and read_netrc_auth(host="https://wandb.example.org") is None


# ---- feature-report ---------------------------------------------------------------------------------------
def _probe_run(folder: Path, metrics: dict[str, Any]) -> Path:
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    return folder


def test_feature_report_test_metrics_are_checked(tmp_path: Path) -> None:
    good = {"test/sigma0/auroc": 0.95, "test/sigma0/acc": 0.9, "test/sigma2/auroc": 0.8, "test/sigma2/acc": 0.7}
    levels, _ = _test_metrics(FeatureEntry("ok", "p"), _probe_run(tmp_path / "ok", good))
    assert levels == {0.0: {"auroc": 0.95, "acc": 0.9}, 2.0: {"auroc": 0.8, "acc": 0.7}}
    cases = {
        "pct": ({**good, "test/sigma0/acc": 90}, r"sigma=0 acc must be a fraction in \[0, 1\].*found 90"),
        "nan": ({**good, "test/sigma2/auroc": float("nan")}, "sigma=2 auroc must be a fraction .*found nan"),
        "noacc": ({"test/sigma0/auroc": 0.9}, "has no test accuracy at sigma=0"),
        "badkey": ({**good, "test/sigmaX/auroc": 0.9}, r"key 'test/sigmaX/auroc' names no noise level"),
    }
    for name, (metrics, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            _test_metrics(FeatureEntry(name, "p"), _probe_run(tmp_path / name, metrics))


def test_feature_report_lira_columns_carry_intervals_seeds_and_unsupported(tmp_path: Path) -> None:
    real = write_attack(tmp_path / "real", non_members=50)  # 50 < 100: TPR@1 % FPR unsupported
    seeds = [
        str(write_attack(tmp_path / f"aware{i}", auc=a, auc_ci=(a - 0.02, a + 0.02))) for i, a in enumerate((0.5, 0.54))
    ]
    entry = FeatureEntry("ksame|2", "p", attack_dir=str(real), aware_attack_dir=seeds)
    lira, aware = _lira(entry, entry.attack_dir, "attack_dir"), _lira(entry, entry.aware_attack_dir, "aware")
    assert lira["auc_mia_ci95_pct"] == pytest.approx([58.0, 62.0]) and lira["tpr_at_1pct_fpr_unsupported"]
    assert aware["seeds"] == 2 and aware["auc_mia_pct"] == pytest.approx(52.0)
    assert aware["auc_mia_pct_std"] == pytest.approx(np.std([50, 54], ddof=1))  # 2.83
    row = {
        "label": "ksame|2",
        "train_size": 60,
        "auroc_pct": {0.0: 95.0},
        "auroc_real_pct": {},
        "acc_pct": 90.0,
        "min_distance": 0.5,
        "dcr": {"share": 0.4, "baseline": 0.5},
        "noise_scale": 1.0,
        "anonymiser": "ksame",
        "k": 2,
        "lira": lira,
        "lira_aware": aware,
    }
    table = feature_table([row], [0.0], "t|x")
    assert table.startswith("# t\\|x\n")
    main_row = _cells(_table_row(table, "ksame\\|2"))
    assert len(main_row) == 8 and main_row[-2:] == ["60.00 [58.00, 62.00]", "unsupported (n=50)"]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ksame\\|2 |")]
    assert _cells(lines[1]) == [
        "ksame\\|2",
        "60.00 [58.00, 62.00]",
        "unsupported (n=50)",
        "52.00 ± 2.83 (n=2)",
        "5.90 ± 0.00 (n=2)",
    ]
    assert METHOD in table and "ddof=1" in table
    with pytest.raises(ValueError, match=r"entry 'x' attack_dir: attack must be one of"):
        _lira(FeatureEntry("x", "p", attack="lira"), str(real), "attack_dir")  # type: ignore[arg-type]


# ---- issue 11 item 7: one checkpoint per row; AOP below chance ---------------------------------------------
def test_accuracy_must_be_the_attacked_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpts = Path("runs/s/teacher/checkpoints")
    ckpts.mkdir(parents=True)
    for name in ("best-epoch003.ckpt", "last.ckpt"):
        (ckpts / name).write_bytes(b"x")
    test = Path("runs/s/teacher/test")
    test.mkdir()
    # The attack queried last.ckpt; the run was tested with its best checkpoint.
    folder = write_attack(Path("attack"), target_checkpoint=str(ckpts / "last.ckpt"))
    (test / "metrics.json").write_text(
        json.dumps({"ckpt_path": str(ckpts / "best-epoch003.ckpt"), "metrics": {"test/acc": 0.9}})
    )
    with pytest.raises(
        ValueError,
        match=r"the attack queried .*last.ckpt but .*metrics.json holds the test of "
        r".*best-epoch003.ckpt",
    ):
        privacy_report("r", [ReportEntry("teacher", str(folder))])
    assert not Path("r").exists()
    # Tested with the attacked checkpoint: the row uses that accuracy.
    (test / "metrics.json").write_text(
        json.dumps({"ckpt_path": str(ckpts / "last.ckpt"), "metrics": {"test/acc": 0.9}})
    )
    privacy_report("r", [ReportEntry("teacher", str(folder))])
    assert _rows(Path("r"))["teacher"]["accuracy_pct"] == pytest.approx(90.0)


def test_aop_uses_the_attacks_better_side_below_chance(tmp_path: Path) -> None:
    # AUC 39 %: TCKR's formula gives 94 x (50/39)^2 = 154.5 > accuracy; the better side is 61 %:
    # AOP = 94 x (50/61)^2 = 63.16, flagged. Its interval over AUC [37, 41] % mirrors to [59, 63] %.
    folder = write_attack(tmp_path / "a", auc=0.39, auc_ci=(0.37, 0.41))
    privacy_report(str(tmp_path / "r"), [ReportEntry("weird", str(folder), accuracy=0.94)])
    row = _rows(tmp_path / "r")["weird"]
    assert row["aop"] == pytest.approx(94 * (50 / 61) ** 2) and round(row["aop"], 2) == 63.16
    assert row["auc_below_chance"] is True
    assert row["aop_ci95"] == pytest.approx([94 * (50 / 63) ** 2, 94 * (50 / 59) ** 2])
    table = (tmp_path / "r" / "report.md").read_text()
    assert "39.00 [37.00, 41.00] †" in table and "max(AUC, 100 - AUC)" in table
    # An interval holding 50 % tops out at the accuracy (AOP peaks there).
    folder = write_attack(tmp_path / "b", auc=0.51, auc_ci=(0.49, 0.53))
    privacy_report(str(tmp_path / "r2"), [ReportEntry("chance", str(folder), accuracy=0.8)])
    assert _rows(tmp_path / "r2")["chance"]["aop_ci95"] == pytest.approx([80 * (50 / 53) ** 2, 80.0])
