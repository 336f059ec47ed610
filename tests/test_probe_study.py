"""The CVAE study on features: LinearProbe through the CLI, linear shadow probes, LiRA, feature-report, audits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import state_of
from fixtures_features import make_feature_folder

from cli import main
from datamodules import FeatureDataModule
from lightning_modules import LinearProbe
from tools.target_logits import load_run_datamodule

DIM, SIZES = 8, (60, 30, 30)
TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _probe_config(path: Path, feats: Path, epochs: int = 40, **data: Any) -> Path:
    return _write(
        path,
        {
            "seed_everything": 1,
            "trainer": {**TRAINER, "max_epochs": epochs},
            "model": {"class_path": "LinearProbe", "init_args": {"lr": 0.05}},
            "data": {"class_path": "FeatureDataModule", "init_args": {"root": str(feats), "batch_size": 16, **data}},
        },
    )


def _run(root: Path, name: str) -> list[str]:
    return ["--run.root", str(root / "runs"), "--run.name", name]


def _metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "test" / "metrics.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two probes (identity, k-Same k=2) fitted and tested, linear shadow probes, an attack on the identity probe."""
    root = tmp_path_factory.mktemp("study")
    feats = make_feature_folder(root / "feats", dim=DIM, sizes=SIZES)
    out: dict[str, Any] = {"root": root, "feats": feats}
    for name, data, single in (("probe", {}, "0"), ("probe-ksame", {"anonymiser": "ksame", "k": 2}, "0.5")):
        config = _probe_config(root / f"{name}.yaml", feats, **data)
        main(["fit", "--config", str(config), *_run(root, name)])
        run = root / "runs" / "default" / name
        main(["test", "--config", str(config), *_run(root, name), "--ckpt_path", "best", "--data.sigma", single])
        out[f"{name}/single"] = _metrics(run)
        equal = ["--data.equal_noise", "true"] if name == "probe-ksame" else []
        main(
            ["test", "--config", str(config), *_run(root, name), "--ckpt_path", "best", "--data.sigma", "[0,2]", *equal]
        )
        out[name], out[f"{name}/config"] = run, config

    shadows = _write(
        root / "shadows.yaml",
        {
            "seed_everything": 1,
            "trainer": {**TRAINER, "max_epochs": 20, "callbacks": [{"class_path": "ShadowLogitsWriter"}]},
            "model": {
                "class_path": "ShadowEnsemble",
                "init_args": {
                    "backbone": "linear",
                    "group_size": 4,
                    "lr": 0.05,
                    "weight_decay": 0.0,
                    "scheduler": "none",
                },
            },
            "data": {
                "class_path": "MembershipDataModule",
                "init_args": {
                    "source": {"class_path": "FeatureDataModule", "init_args": {"root": str(feats)}},
                    "num_models": 4,
                    "pool_splits": ["train", "val"],
                    "target_split": "train",
                    "batch_size": 16,
                    "queries": "none",
                },
            },
        },
    )
    main(["fit", "--config", str(shadows), *_run(root, "shadows")])
    main(["predict", "--config", str(shadows), *_run(root, "shadows"), "--ckpt_path", "last"])
    out["shadows"] = root / "runs" / "default" / "shadows"
    out["attack"] = root / "attack"
    main(["attack", str(out["shadows"] / "shadows.npz"), str(out["attack"]), "--target_checkpoint", str(out["probe"])])
    # Anonymiser-aware shadows for the k-Same probe: every shadow trains on its members' k-Same centroids.
    aware = ["--data.init_args.source.init_args.anonymiser", "ksame", "--data.init_args.source.init_args.k", "2"]
    aware += ["--data.init_args.anonymise_members", "true"]
    main(["fit", "--config", str(shadows), *_run(root, "shadows-ksame"), *aware])
    main(["predict", "--config", str(shadows), *_run(root, "shadows-ksame"), *aware, "--ckpt_path", "last"])
    out["shadows-ksame"], out["attack-ksame-aware"] = root / "runs" / "default" / "shadows-ksame", root / "aware"
    target = ["--target_checkpoint", str(out["probe-ksame"])]
    main(["attack", str(out["shadows-ksame"] / "shadows.npz"), str(out["attack-ksame-aware"]), *target])
    return out


def _report_config(path: Path, out: Path, entries: list[dict[str, Any]]) -> Path:
    return _write(path, {"out": str(out), "title": "tiny", "entries": entries})


# ---- LinearProbe through the CLI --------------------------------------------------------------------------
def test_probe_learns_blobs_and_keeps_best_and_last_checkpoints(study: dict[str, Any]) -> None:
    for name in ("probe", "probe-ksame"):
        summary = json.loads((study[name] / "fit_summary.json").read_text())
        assert summary["metrics"]["val/auroc"] > 0.95, summary
        assert summary["monitor"] == "val/loss" and summary["best_checkpoint"].startswith("best-epoch")
        ckpts = study[name] / "checkpoints"
        assert (ckpts / summary["best_checkpoint"]).is_file() and (ckpts / "last.ckpt").is_file()
        assert len(list(ckpts.glob("best-epoch*.ckpt"))) == 1


def test_probe_checkpoint_stores_the_data_standardisation(study: dict[str, Any]) -> None:
    for name, data in (("probe", {}), ("probe-ksame", {"anonymiser": "ksame", "k": 2})):
        mean, std = FeatureDataModule(root=str(study["feats"]), **data).standardisation()
        for ckpt in (study[name] / "checkpoints").glob("*.ckpt"):
            state = state_of(ckpt)
            assert torch.equal(state["model.mean"], mean) and torch.equal(state["model.std"], std), ckpt
            assert bool(state["standardised"])
    ksame_std = state_of(study["probe-ksame"] / "checkpoints" / "last.ckpt")["model.std"]
    assert not torch.allclose(ksame_std, state_of(study["probe"] / "checkpoints" / "last.ckpt")["model.std"])
    # The checkpoint takes raw features: its predictions match a by-hand z-scored linear layer.
    probe = LinearProbe.load_from_checkpoint(study["probe"] / "checkpoints" / "last.ckpt", weights_only=True)
    x = torch.from_numpy(np.load(study["feats"] / "test.npz")["embeddings"])
    mean, std = FeatureDataModule(root=str(study["feats"])).standardisation()
    expected = probe.model.fc((x - mean) / std)
    assert torch.allclose(probe(x), expected, atol=1e-6)


def test_probe_test_metrics_per_noise_level(study: dict[str, Any]) -> None:
    metrics = _metrics(study["probe"])
    for sigma in ("0", "2"):
        assert 0 <= metrics[f"test/sigma{sigma}/auroc"] <= 1 and f"test/sigma{sigma}/acc" in metrics
    assert not any(key in metrics for key in ("test/auroc", "test/acc"))
    assert metrics["test/sigma0/auroc"] > 0.95
    assert metrics["test/sigma2/auroc"] <= metrics["test/sigma0/auroc"]
    single = study["probe/single"]
    assert single["test/auroc"] == pytest.approx(metrics["test/sigma0/auroc"])
    assert single["test/acc"] == pytest.approx(metrics["test/sigma0/acc"])
    assert not any("sigma" in key for key in single)
    # One noisy level is named after its sigma, so the report never reads it as the clean test.
    noisy = study["probe-ksame/single"]
    assert {"test/sigma0.5/auroc", "test/sigma0.5/acc", "test/sigma0.5/loss"} <= set(noisy)
    assert not any(key.startswith(("test/auroc", "test/acc")) for key in noisy)
    record = json.loads((study["probe"] / "test" / "metrics.json").read_text())
    assert Path(record["ckpt_path"]).name.startswith("best-epoch")
    # data.equal_noise adds the same sigmas scaled by the real training std (k-Same's own std is smaller).
    ksame = _metrics(study["probe-ksame"])
    assert {"test/sigma2/auroc", "test/real_sigma2/auroc", "test/real_sigma2/acc"} <= set(ksame)
    assert "test/real_sigma0/auroc" not in ksame
    assert ksame["test/real_sigma2/auroc"] <= ksame["test/sigma2/auroc"] + 0.02


def test_probe_checkpoint_for_another_feature_dim(
    study: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    narrow = make_feature_folder(Path("narrow"), dim=6, sizes=SIZES)
    ckpt = str(study["probe"] / "checkpoints" / "last.ckpt")
    config = _probe_config(Path("narrow.yaml"), narrow)
    with pytest.raises(ValueError, match=r"checkpoint has feature_dim=8 but the data give feature_dim=6"):
        main(["test", "--config", str(config), "--run.name", "narrow", "--ckpt_path", ckpt])
    assert not Path("runs/default/narrow/test/metrics.json").exists()
    with pytest.raises(ValueError, match=r"feature_dim=8 .* feature_dim=6"):
        LinearProbe.load_from_checkpoint(ckpt, feature_dim=6, weights_only=True)


# ---- shadow probes and the attack -------------------------------------------------------------------------
def test_linear_shadows_standardise_with_their_own_members(study: dict[str, Any]) -> None:
    run = study["shadows"]
    with np.load(run / "shadows.npz", allow_pickle=False) as saved:
        assert saved["logits"].shape == (4, SIZES[0] + SIZES[1], 1, 3)
        assert saved["mask"].shape == (4, SIZES[0] + SIZES[1]) and (saved["mask"].sum(0) == 2).all()
        assert np.isfinite(saved["logits"]).all()
    datamodule = load_run_datamodule(run)
    datamodule.setup("fit")
    mean, std = datamodule.member_statistics()
    assert mean.shape == std.shape == (4, DIM)
    state = state_of(run / "checkpoints" / "last.ckpt")
    assert torch.equal(state["stats.mean"], mean) and torch.equal(state["stats.std"], std)
    assert not torch.allclose(mean[0], mean[1])  # each model its own members' statistics
    members = (run / "membership" / "target_members.txt").read_text().split()
    assert members == [str(i) for i in np.load(study["feats"] / "train.npz")["ids"]]


def test_anonymiser_aware_shadows_train_on_their_members_k_same(study: dict[str, Any]) -> None:
    """data.anonymise_members: each shadow trains on the k-Same centroids of its own members, as the k-Same
    probe did on its training set, and is queried on the real pool like the real-feature shadows."""
    from privacy.ksame import ksame

    run = study["shadows-ksame"]
    datamodule = load_run_datamodule(run)
    datamodule.setup("fit")
    pool, mask = datamodule.pool, datamodule.mask
    centroids, labels = ksame(pool.inputs[np.flatnonzero(mask[1])].numpy(), pool.labels[mask[1]], 2)
    order = datamodule.epoch_order(0)[1]
    trained = datamodule.train_batch(0, 0, torch.device("cpu"))
    positions = datamodule._training_sets()[1][1]
    assert set(order) == set(positions) and len(positions) == len(labels)
    np.testing.assert_array_equal(datamodule._training_sets()[0].inputs[positions].numpy(), centroids)
    np.testing.assert_array_equal(trained["label"][1].numpy(), datamodule._training_sets()[0].labels[order[:16]])
    mean, std = datamodule.member_statistics()
    np.testing.assert_allclose(mean[1].numpy(), centroids.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    state = state_of(run / "checkpoints" / "last.ckpt")
    assert torch.equal(state["stats.std"], std)
    with (
        np.load(run / "shadows.npz", allow_pickle=False) as aware_file,
        np.load(study["shadows"] / "shadows.npz", allow_pickle=False) as real_file,
    ):
        assert list(aware_file["ids"]) == list(real_file["ids"])  # queried on the same real pool
        np.testing.assert_array_equal(aware_file["mask"], real_file["mask"])
        assert not np.allclose(aware_file["logits"], real_file["logits"])
    record = json.loads((study["attack-ksame-aware"] / "metrics.json").read_text())
    assert 0 <= record["metrics"]["online"]["auc"] <= 1 and record["shadows"] == 4


def test_attack_on_the_probe_run(study: dict[str, Any]) -> None:
    record = json.loads((study["attack"] / "metrics.json").read_text())
    assert record["shadows"] == 4 and Path(record["target_checkpoint"]).name.startswith("best-epoch")
    for attack in ("online", "offline", "global"):
        metrics = record["metrics"][attack]
        assert 0 <= metrics["auc"] <= 1
        assert (metrics["members"], metrics["non_members"]) == (SIZES[0], SIZES[1])
    with np.load(study["attack"] / "target_logits.npz", allow_pickle=False) as target:
        assert target["logits"].shape == (SIZES[0] + SIZES[1], 1, 3)


# ---- feature-report ---------------------------------------------------------------------------------------
def test_feature_report(study: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    entries = [
        {"label": "identity", "probe_run": str(study["probe"]), "attack_dir": str(study["attack"])},
        {
            "label": "ksame k=2",
            "probe_run": str(study["probe-ksame"]),
            "aware_attack_dir": str(study["attack-ksame-aware"]),
        },
    ]
    main(["feature-report", "--config", str(_report_config(Path("report.yaml"), Path("report"), entries))])
    out = Path("report")
    for name in ("auroc_vs_k.png", "auroc_vs_sigma.png", "auc_mia.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert results["sigmas"] == [0.0, 2.0]
    identity, ksame = results["rows"]
    metrics = _metrics(study["probe"])
    for row in results["rows"]:
        assert set(row["auroc_pct"]) == {"0.0", "2.0"}
        assert 0 <= row["dcr"]["share"] <= 1 and row["train_size"] == SIZES[0]
    assert identity["auroc_pct"]["2.0"] == pytest.approx(100 * metrics["test/sigma2/auroc"])
    assert identity["anonymiser"] == "identity" and identity["k"] is None
    assert identity["min_distance"] == 0.0  # exact: faiss's neighbour, distance recomputed in float64
    assert identity["dcr"]["share"] == pytest.approx(1.0)  # every row is a training record
    assert identity["dcr"]["baseline"] == pytest.approx(SIZES[0] / sum(SIZES))  # holdout = val + test
    assert identity["lira"]["shadows"] == 4
    assert ksame["anonymiser"] == "ksame" and ksame["k"] == 2 and ksame["lira"] is None
    aware = json.loads((study["attack-ksame-aware"] / "metrics.json").read_text())["metrics"]["online"]
    assert identity["lira_aware"] is None and ksame["lira_aware"]["auc_mia_pct"] == pytest.approx(100 * aware["auc"])
    assert ksame["min_distance"] > 0
    table = (out / "results.md").read_text()
    assert "# tiny" in table and "| identity | 60 |" in table and "| ksame k=2 | 60 |" in table
    assert "AUROC σ=0 | AUROC σ=2 |" in table and "50.0 % = no copying" in table
    # Robustness at equal raw noise: only the k-Same probe was tested with data.equal_noise.
    assert identity["auroc_real_pct"] == {} and identity["noise_scale"] == pytest.approx(1.0, rel=1e-5)
    assert set(ksame["auroc_real_pct"]) == {"0.0", "2.0"} and ksame["noise_scale"] < 1.0
    real = _metrics(study["probe-ksame"])["test/real_sigma2/auroc"]
    assert ksame["auroc_real_pct"]["2.0"] == pytest.approx(100 * real)
    assert "## Robustness to test noise at equal raw noise" in table
    assert "## Membership inference: shadows on real vs anonymised members" in table
    low, high = (100 * v for v in aware["auc_ci95"])
    # 30 non-members cannot support a TPR at 1 % FPR (needs 100): shown as unsupported, never as a figure.
    assert f"| ksame k=2 | – | – | {100 * aware['auc']:.2f} [{low:.2f}, {high:.2f}] | unsupported (n=30) |" in table
    assert ksame["lira_aware"]["tpr_at_1pct_fpr_unsupported"] and ksame["lira_aware"]["tpr_at_1pct_fpr_pct"] is None
    assert identity["lira"]["auc_mia_ci95_pct"] == pytest.approx(
        [100 * v for v in json.loads((study["attack"] / "metrics.json").read_text())["metrics"]["online"]["auc_ci95"]]
    )
    assert "95 % intervals computed by `synthpriv attack`" in table
    assert f"| ksame k=2 | {ksame['noise_scale']:.3f} |" in table


def test_feature_report_names_a_single_noise_level(
    study: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    noisy = Path("noisy")
    shutil.copytree(study["probe-ksame"], noisy, ignore=shutil.ignore_patterns("test"))
    (noisy / "test").mkdir()
    (noisy / "test" / "metrics.json").write_text(json.dumps({"metrics": study["probe-ksame/single"]}))
    entries = [{"label": "ksame sigma 0.5", "probe_run": str(noisy)}]
    main(["feature-report", "--config", str(_report_config(Path("noisy.yaml"), Path("report"), entries))])
    results = json.loads(Path("report/results.json").read_text())
    assert results["sigmas"] == [0.5]
    row = results["rows"][0]
    assert row["auroc_pct"] == {"0.5": pytest.approx(100 * study["probe-ksame/single"]["test/sigma0.5/auroc"])}


def test_feature_report_errors(study: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    twice = [{"label": "same", "probe_run": str(study["probe"])}] * 2
    with pytest.raises(ValueError, match=r"labels must be unique; got \['same', 'same'\]"):
        main(["feature-report", "--config", str(_report_config(Path("twice.yaml"), Path("r1"), twice))])
    untested = Path("untested")
    shutil.copytree(study["probe"], untested, ignore=shutil.ignore_patterns("test"))
    entries = [{"label": "untested", "probe_run": str(untested)}]
    with pytest.raises(FileNotFoundError, match=r"entry 'untested' test metrics: \S*/untested/test/metrics\.json"):
        main(["feature-report", "--config", str(_report_config(Path("untested.yaml"), Path("r2"), entries))])
    assert not Path("r1").exists() and not Path("r2").exists()


def test_cvae_study_steps_and_reports_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe of the real study is tested, attacked and reported; a renamed run would leave a hole."""
    from tools.study import load_study

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)
    _, steps = load_study(Path("configs/cvae/study.yaml"))
    fits = {s.args["run.name"]: s.args for s in steps if s.command == "fit" and s.name.startswith("probe-")}
    tests = {s.args["run.name"]: s.args for s in steps if s.command == "test"}
    assert set(fits) == set(tests) and len(fits) == 7
    for run, args in fits.items():  # the test step rebuilds the fit's anonymised data
        data_args = {k: v for k, v in args.items() if k.startswith("data.")}
        test_only = ("data.sigma", "data.equal_noise")
        assert {k: v for k, v in tests[run].items() if k.startswith("data.") and k not in test_only} == data_args
        assert tests[run]["data.sigma"] == [0, 1, 2, 5] and tests[run]["data.equal_noise"] is True
    attacks, aware = {}, {}
    for step in (s for s in steps if s.command == "attack"):
        config = yaml.safe_load(Path(step.configs[0]).read_text())
        target = Path(config["target_checkpoint"]).name
        (aware if config["out"].endswith("-aware") else attacks)[config["out"]] = target
    assert sorted(attacks.values()) == sorted(fits)
    assert sorted(aware.values()) == sorted(run for run in fits if "ksame" in run)
    report = yaml.safe_load(Path("configs/cvae/report.yaml").read_text())
    assert {(e["attack_dir"], Path(e["probe_run"]).name) for e in report["entries"]} == set(attacks.items())
    reported_aware = {
        (e["aware_attack_dir"], Path(e["probe_run"]).name) for e in report["entries"] if "aware_attack_dir" in e
    }
    assert reported_aware == set(aware.items())
    privacy = yaml.safe_load(Path("configs/cvae/privacy_report.yaml").read_text())
    assert {e["attack_dir"] for e in privacy["entries"]} == set(attacks) | set(aware)
