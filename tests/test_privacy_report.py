"""`synthpriv privacy-report`: table figures from attack folders, accuracy lookup, AOP, errors; demo configs.

Attack folders are written in the attack's format 2 by ``test_report_inputs.write_attack``; the input rules
themselves (intervals, unsupported TPRs, seeds, paths, escaping, W&B) are tested in test_report_inputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_report_inputs import write_attack

from cli import main
from privacy.metrics import aop

REPO = Path(__file__).resolve().parent.parent


def test_report_table_json_and_roc(tmp_path: Path) -> None:
    leaky = write_attack(tmp_path / "leaky", auc=0.8, auc_ci=(0.78, 0.82))
    private = write_attack(tmp_path / "private", auc=0.5, auc_ci=(0.48, 0.52))
    metrics = tmp_path / "test_metrics.json"
    metrics.write_text(json.dumps({"metrics": {"test/acc": 0.9}}))
    config = {
        "out": str(tmp_path / "report"),
        "title": "t",
        "wandb_project": "synthpriv-test",
        "entries": [
            {"label": "leaky", "attack_dir": str(leaky), "test_metrics": str(metrics)},
            {"label": "private", "attack_dir": str(private), "attack": "offline", "accuracy": 0.8},
            {"label": "no accuracy", "attack_dir": str(private), "attack": "global", "accuracy": "none"},
        ],
    }
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(config))
    main(["privacy-report", "--config", str(tmp_path / "report.yaml")])
    rows = {r["label"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert rows["leaky"]["auc_mia_pct"] == pytest.approx(80.0)
    assert rows["leaky"]["auc_mia_ci95_pct"] == pytest.approx([78.0, 82.0])
    assert rows["leaky"]["accuracy_pct"] == pytest.approx(90.0)
    assert rows["leaky"]["aop"] == pytest.approx(aop(90.0, 80.0))  # 90 x (50 / 80)^2 = 35.16
    assert rows["leaky"]["test_metrics"] == str(metrics)
    assert rows["private"]["attack"] == "LiRA offline" and rows["private"]["accuracy_pct"] == pytest.approx(80.0)
    assert rows["no accuracy"]["aop"] is None and rows["no accuracy"]["attack"] == "global threshold"
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| leaky | 90.00 | 80.00 [78.00, 82.00] |" in table and "| no accuracy | – |" in table
    assert "35.16 [33.46, 36.98]" in table  # AOP at the AUC interval's ends, 90 x (50 / 82)^2 .. (50 / 78)^2
    assert (tmp_path / "report" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "report" / "wandb").glob("offline-run-*/run-*.wandb"))  # table + figure logged offline


def _report(tmp_path: Path, entries: list[dict]) -> None:
    config = tmp_path / "report_config.yaml"
    config.write_text(yaml.safe_dump({"out": str(tmp_path / "r"), "entries": entries}))
    main(["privacy-report", "--config", str(config)])


def test_report_errors(tmp_path: Path) -> None:
    leaky = write_attack(tmp_path / "leaky")
    with pytest.raises(FileNotFoundError, match="attack_dir"):
        _report(tmp_path, [{"label": "x", "attack_dir": str(tmp_path / "no")}])
    with pytest.raises(ValueError, match="unique"):
        _report(tmp_path, [{"label": "x", "attack_dir": str(leaky)}] * 2)
    bad = tmp_path / "bad_metrics.json"
    bad.write_text(json.dumps({"metrics": {"val/acc": 0.5}}))
    with pytest.raises(ValueError, match=r"no 'test/acc'.*accuracy_key"):
        _report(tmp_path, [{"label": "x", "attack_dir": str(leaky), "test_metrics": str(bad)}])
    assert not (tmp_path / "r").exists()


def test_report_accuracy_key_reads_a_noise_level(tmp_path: Path) -> None:
    """Probes tested at several noise levels log test/sigma<s>/acc and no plain test/acc."""
    leaky = write_attack(tmp_path / "leaky")
    metrics = tmp_path / "probe_metrics.json"
    metrics.write_text(json.dumps({"metrics": {"test/sigma0/acc": 0.75, "test/sigma5/acc": 0.4}}))
    entry = {"label": "probe", "attack_dir": str(leaky), "test_metrics": str(metrics)}
    _report(tmp_path, [{**entry, "accuracy_key": "test/sigma0/acc"}])
    row = json.loads((tmp_path / "r" / "report.json").read_text())["rows"][0]
    assert row["accuracy_pct"] == pytest.approx(75.0)


@pytest.mark.parametrize(
    "config", ["configs/quickstart/privacy_report.yaml", "configs/lira/report.yaml", "configs/cvae/privacy_report.yaml"]
)
def test_study_report_configs_parse(config: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The studies' report configs still fit the entry types (paths, attack names, accuracy options)."""
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["privacy-report", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["entries"] and all(e["attack_dir"].startswith("runs/") for e in printed["entries"])


def test_quickstart_shadows_copy_the_teacher_recipe_and_data() -> None:
    """LiRA needs shadows trained like the target: the two quickstart configs must not drift apart."""
    teacher = yaml.safe_load((REPO / "configs/quickstart/teacher.yaml").read_text())
    shadows = yaml.safe_load((REPO / "configs/quickstart/shadows.yaml").read_text())
    assert shadows["data"]["init_args"]["source"] == teacher["data"]
    recipe = dict(teacher["model"]["init_args"])
    shadow_model = shadows["model"]["init_args"]
    assert {k: shadow_model[k] for k in recipe} == recipe
    assert shadows["trainer"]["max_epochs"] == teacher["trainer"]["max_epochs"]
    assert shadows["data"]["init_args"]["batch_size"] == teacher["data"]["init_args"]["batch_size"]
    assert shadows["seed_everything"] == teacher["seed_everything"]
