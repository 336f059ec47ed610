"""`synthpriv privacy-report`: table figures from attack folders, accuracy lookup, AOP, errors; demo configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_attack_tool import _shadow_file

from cli import main
from privacy.metrics import aop

REPO = Path(__file__).resolve().parent.parent


def _attack(tmp_path: Path, name: str, leak: float) -> Path:
    shadows = _shadow_file(tmp_path / f"{name}.npz", leak=leak, n=200)
    main(["attack", str(shadows), str(tmp_path / name)])
    return tmp_path / name


def test_report_table_json_and_roc(tmp_path: Path) -> None:
    leaky, private = _attack(tmp_path, "leaky", 2.0), _attack(tmp_path, "private", 0.0)
    metrics = tmp_path / "test_metrics.json"
    metrics.write_text(json.dumps({"metrics": {"test/acc": 0.9}}))
    config = {
        "out": str(tmp_path / "report"),
        "title": "t",
        "wandb_project": "synthpriv-test",
        "entries": [
            {"label": "leaky", "attack_dir": str(leaky), "test_metrics": str(metrics)},
            {"label": "private", "attack_dir": str(private), "attack": "offline", "accuracy": 0.8},
            {"label": "no accuracy", "attack_dir": str(private), "attack": "global"},
        ],
    }
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(config))
    main(["privacy-report", "--config", str(tmp_path / "report.yaml")])
    rows = {r["label"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    leaky_auc = json.loads((leaky / "metrics.json").read_text())["metrics"]["online"]["auc"]
    assert rows["leaky"]["auc_mia_pct"] == pytest.approx(100 * leaky_auc)
    assert rows["leaky"]["accuracy_pct"] == pytest.approx(90.0)
    assert rows["leaky"]["aop"] == pytest.approx(aop(90.0, 100 * leaky_auc))
    assert rows["leaky"]["auc_mia_pct"] > rows["private"]["auc_mia_pct"]
    assert rows["private"]["attack"] == "LiRA offline" and rows["private"]["accuracy_pct"] == pytest.approx(80.0)
    assert rows["no accuracy"]["aop"] is None
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| leaky | 90.00 |" in table and "| no accuracy | – |" in table
    assert (tmp_path / "report" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "report" / "wandb").glob("offline-run-*/run-*.wandb"))  # table + figure logged offline


def _report(tmp_path: Path, entries: list[dict]) -> None:
    config = tmp_path / "report_config.yaml"
    config.write_text(yaml.safe_dump({"out": str(tmp_path / "r"), "entries": entries}))
    main(["privacy-report", "--config", str(config)])


def test_report_errors(tmp_path: Path) -> None:
    leaky = _attack(tmp_path, "leaky", 2.0)
    with pytest.raises(FileNotFoundError, match="attack_dir"):
        _report(tmp_path, [{"label": "x", "attack_dir": str(tmp_path / "no")}])
    with pytest.raises(ValueError, match="unique"):
        _report(tmp_path, [{"label": "x", "attack_dir": str(leaky)}] * 2)
    bad = tmp_path / "bad_metrics.json"
    bad.write_text(json.dumps({"metrics": {"val/acc": 0.5}}))
    with pytest.raises(ValueError, match=r"no 'test/acc'.*accuracy_key"):
        _report(tmp_path, [{"label": "x", "attack_dir": str(leaky), "test_metrics": str(bad)}])


def test_report_accuracy_key_reads_a_noise_level(tmp_path: Path) -> None:
    """Probes tested at several noise levels log test/sigma<s>/acc and no plain test/acc."""
    leaky = _attack(tmp_path, "leaky", 2.0)
    metrics = tmp_path / "probe_metrics.json"
    metrics.write_text(json.dumps({"metrics": {"test/sigma0/acc": 0.75, "test/sigma5/acc": 0.4}}))
    entry = {"label": "probe", "attack_dir": str(leaky), "test_metrics": str(metrics)}
    _report(tmp_path, [{**entry, "accuracy_key": "test/sigma0/acc"}])
    row = json.loads((tmp_path / "r" / "report.json").read_text())["rows"][0]
    assert row["accuracy_pct"] == pytest.approx(75.0)


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
