"""synthpriv metric-agreement: hand-worked statistics, direction, bootstrap determinism, end to end, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import one_line_error
from PIL import Image
from scipy import stats

from cli import main
from privacy.agreement import correlations_rows, image_level, model_level

IDS = [f"{i:05d}" for i in range(6)]


def test_hand_worked_correlations_and_direction() -> None:
    # Leakage 1/4, 2/4, 3/4; MSE means 0.3, 0.2, 0.1: lower MSE = more leakage, so rho = tau = 1 after orientation.
    rec = [np.array([1, 0, 0, 0], bool), np.array([1, 1, 0, 0], bool), np.array([1, 1, 1, 0], bool)]
    mse = [np.full(4, 0.3), np.full(4, 0.2), np.full(4, 0.1)]
    out = model_level(mse, rec, higher_is_more_similar=False, resamples=200, seed=0)
    assert out["leakage"] == [0.25, 0.5, 0.75] and out["means"] == pytest.approx([0.3, 0.2, 0.1])
    assert out["spearman"]["value"] == pytest.approx(1) and out["kendall"]["value"] == pytest.approx(1)
    assert out["pearson"]["value"] == pytest.approx(1)
    flipped = model_level(mse, rec, higher_is_more_similar=True, resamples=200, seed=0)  # as if higher = similar
    assert flipped["spearman"]["value"] == pytest.approx(-1) and flipped["kendall"]["value"] == pytest.approx(-1)
    # One original: recognisable 0.1 and 0.3, unrecognisable 0.3 (MSE): one pair right, one tie -> 0.75.
    img = image_level(np.array([0.1, 0.3, 0.3]), np.array([True, True, False]), np.array([7, 7, 7]), False, 200)
    assert img["agreement"] == 0.75 and img["pairs"] == 2 and img["originals"] == 1
    psnr = image_level(np.array([30.0, 20.0, 20.0]), np.array([True, True, False]), np.zeros(3), True, 200)
    assert psnr["agreement"] == 0.75


def test_vectorised_correlations_match_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, (20, 6)).astype(float), rng.integers(0, 3, (20, 6)).astype(float)
    rows = correlations_rows(x, y)
    for i in range(20):
        if np.ptp(x[i]) and np.ptp(y[i]):
            assert rows["kendall"][i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic)
            assert rows["spearman"][i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic)
            assert rows["pearson"][i] == pytest.approx(stats.pearsonr(x[i], y[i]).statistic)


def test_bootstrap_is_deterministic_and_refuses_few_configurations() -> None:
    rng = np.random.default_rng(0)
    vals = [rng.random(30) + k for k in range(4)]
    rec = [rng.random(30) < 0.2 * (k + 1) for k in range(4)]
    a, b = model_level(vals, rec, True, 300, seed=5), model_level(vals, rec, True, 300, seed=5)
    assert a == b and a["pearson"]["ci95"] != model_level(vals, rec, True, 300, seed=6)["pearson"]["ci95"]
    groups = np.tile(np.arange(30), 4)
    i1 = image_level(np.concatenate(vals), np.concatenate(rec), groups, True, 300, seed=5)
    assert i1 == image_level(np.concatenate(vals), np.concatenate(rec), groups, True, 300, seed=5)
    lo, hi = i1["ci95"]
    assert lo <= i1["agreement"] <= hi
    two = model_level(vals[:2], rec[:2], True, 300)
    assert two["kendall"] is None and "need at least 3" in two["unavailable"]
    with pytest.raises(ValueError, match="at least 100"):
        model_level(vals, rec, True, 50)


def _entry(root: Path, name: str, recognisable: list[bool], seed: int, size: int = 16) -> dict[str, str]:
    """An InversionWriter-like folder: recognisable recs = ori + small noise, the others = heavy noise."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for k, (i, good) in enumerate(zip(IDS, recognisable)):
        ori = np.random.default_rng(k).random((size, size, 3))  # the same originals in every entry
        rec = ori + rng.normal(0, 0.03, ori.shape) if good else rng.random(ori.shape)
        for kind, img in (("ori", ori), ("target", ori[:, ::-1]), ("rec", np.clip(rec, 0, 1))):
            Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"{i}_{k % 3}_{kind}.png")
        rows.append({"id": i, "label": k % 3, "mse": 0.0})
        labels.append({"id": i, "recognisable": good})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    label_file = root / f"{name}_labels.jsonl"
    label_file.write_text("".join(json.dumps(r) + "\n" for r in labels))
    return {"label": name, "inversion_dir": str(folder), "labels": str(label_file)}


def _config(tmp_path: Path, entries: list[dict[str, str]], **extra) -> str:
    config = {"out": str(tmp_path / "agree"), "entries": entries, "metrics": ["mse", "psnr", "ssim"], "resamples": 200}
    path = tmp_path / "agreement.yaml"
    path.write_text(yaml.safe_dump({**config, **extra}))
    return str(path)


def _three(tmp_path: Path) -> list[dict[str, str]]:
    pattern = [[1, 1, 1, 1, 1, 0], [1, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]]
    return [_entry(tmp_path, f"v{k}", [bool(b) for b in p], seed=k) for k, p in enumerate(pattern)]


def test_end_to_end_on_fabricated_folders(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, _three(tmp_path))
    main(["metric-agreement", "--config", config])
    out = tmp_path / "agree"
    record = json.loads((out / "agreement.json").read_text())
    assert [e["leakage"] for e in record["entries"]] == pytest.approx([5 / 6, 0.5, 1 / 6])
    for name in ("mse", "psnr", "ssim"):
        m = record["metrics"][name]
        assert m["image_level"]["agreement"] >= 0.95 and m["image_level"]["pairs"] > 0
        assert m["model_level"]["spearman"]["value"] == pytest.approx(1.0)
        assert m["model_level"]["kendall"]["ci95"] is not None
        assert (out / f"scatter_{name}.png").stat().st_size > 0
    assert record["metrics"]["mse"]["higher_is_more_similar"] is False
    md = (out / "agreement.md").read_text()
    assert "| mse | lower |" in md and "| psnr | higher |" in md and "overlaps" in md
    before = (out / "agreement.json").stat().st_mtime_ns
    capsys.readouterr()
    main(["metric-agreement", "--config", config])  # same inputs: nothing to do
    assert "nothing to do" in capsys.readouterr().out and (out / "agreement.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other inputs"):
        main(["metric-agreement", "--config", config, "--bootstrap_seed", "3"])


def test_fewer_than_three_configurations_reported(tmp_path: Path) -> None:
    entries = _three(tmp_path)[:2]
    main(["metric-agreement", "--config", _config(tmp_path, entries)])
    record = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    ml = record["metrics"]["mse"]["model_level"]
    assert ml["spearman"] is None and "need at least 3" in ml["unavailable"]
    assert record["metrics"]["mse"]["image_level"]["agreement"] >= 0.95
    assert "need at least 3" in (tmp_path / "agree" / "agreement.md").read_text()


def test_input_errors(tmp_path: Path, monkeypatch) -> None:
    entries = _three(tmp_path)
    folder = Path(entries[0]["inversion_dir"])
    (folder / "00001_1_ori.png").rename(tmp_path / "moved.png")
    message = one_line_error(monkeypatch, ["metric-agreement", "--config", _config(tmp_path, entries)])
    assert "00001_1_rec.png has no original 00001_1_ori.png" in message
    (tmp_path / "moved.png").rename(folder / "00001_1_ori.png")
    Image.new("RGB", (12, 12)).save(folder / "00002_2_rec.png")
    message = one_line_error(monkeypatch, ["metric-agreement", "--config", _config(tmp_path, entries)])
    assert "00002_2_rec.png is 12x12 px but its original 00002_2_ori.png is 16x16 px" in message
    Image.new("RGB", (16, 16)).save(folder / "00002_2_rec.png")
    with open(entries[1]["labels"], "a") as handle:
        handle.write(json.dumps({"id": "99999", "recognisable": True}) + "\n")
    message = one_line_error(monkeypatch, ["metric-agreement", "--config", _config(tmp_path, entries)])
    assert "labels ids not in" in message and "99999" in message
    ckpt = tmp_path / "semsim.ckpt"
    ckpt.write_bytes(b"x")
    message = one_line_error(
        monkeypatch, ["metric-agreement", "--config", _config(tmp_path, entries, semsim_checkpoint=str(ckpt))]
    )
    assert "--semsim_checkpoint needs --originals" in message and "held out from SemSim's training" in message
    assert not (tmp_path / "agree").exists()


def test_semsim_metric_on_held_out_originals(tmp_path: Path) -> None:
    import lightning
    import torch

    from lightning_modules import SemSimNet

    model = SemSimNet(width=4)
    ckpt = tmp_path / "semsim.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
         "pytorch-lightning_version": lightning.__version__, "datamodule_hyper_parameters": {"image_size": 16}},
        ckpt,
    )  # fmt: skip
    held = tmp_path / "held_out.txt"
    held.write_text("00000\n00001  # comment\n00002\n00003\n")
    config = _config(tmp_path, _three(tmp_path), metrics=["mse"], semsim_checkpoint=str(ckpt), originals=str(held))
    main(["metric-agreement", "--config", config])
    record = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    assert record["metrics"]["semsim"]["higher_is_more_similar"] is False
    assert [e["reconstructions"] for e in record["entries"]] == [4, 4, 4]
    assert (
        record["settings"]["semsim_distance"] == "normalized" and (tmp_path / "agree" / "scatter_semsim.png").exists()
    )


def _with_victim(entries: list[dict[str, str]], tmp_path: Path) -> Path:
    """Give every fabricated entry a manifest.json naming one tiny ImageClassifier checkpoint (as InversionWriter)."""
    import lightning
    import torch

    from lightning_modules.classifier import ImageClassifier
    from tools.files import file_sha256

    model = ImageClassifier(backbone="resnet8-1", num_classes=3, image_size=16)
    ckpt = tmp_path / "victim.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
         "pytorch-lightning_version": lightning.__version__},
        ckpt,
    )  # fmt: skip
    for entry in entries:
        manifest = {
            "victim_checkpoint_path": str(ckpt),
            "victim_checkpoint_sha256": file_sha256(ckpt),
            "data": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        }
        (Path(entry["inversion_dir"]) / "manifest.json").write_text(json.dumps(manifest))
    return ckpt


def test_victim_metrics_through_each_entrys_victim(tmp_path: Path) -> None:
    import torch

    from lightning_modules.inversion import NormalisedVictim, load_victim
    from privacy.similarity import feature_mse

    entries = _three(tmp_path)
    ckpt = _with_victim(entries, tmp_path)
    config = _config(tmp_path, entries, metrics=["mse", "feature_mse", "agreement"])
    main(["metric-agreement", "--config", config])
    record = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    assert record["metrics"]["feature_mse"]["higher_is_more_similar"] is False
    assert record["metrics"]["agreement"]["higher_is_more_similar"] is True
    assert set(record["settings"]["victims"]) == {"v0", "v1", "v2"}
    # the figures are the victim's own, normalisation included: recompute entry v0's first pair by hand
    from tools.metric_agreement import AgreementEntry, _gather, _score

    gathered, _ = _gather([AgreementEntry(**entries[0])], None)
    _score(gathered, ["feature_mse", "agreement"], None, None, "normalized", 100.0)
    net, _, _ = load_victim(str(ckpt))
    victim = NormalisedVictim(net, torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)).eval()
    a, b = (torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 255 for x in zip(*gathered[0]["images"]))
    assert gathered[0]["values"]["feature_mse"] == pytest.approx(feature_mse(victim, a, b).double().numpy(), rel=1e-5)
    assert gathered[0]["values"]["feature_mse"].min() > 0
    with torch.no_grad():
        raw = net((a - 0.5) / 0.25).argmax(1) == net((b - 0.5) / 0.25).argmax(1)
    assert gathered[0]["values"]["agreement"].tolist() == raw.double().tolist()
    # entry v2 attacks another victim: feature-MSE (in each victim's own units) is not compared across victims
    other = tmp_path / "other.ckpt"
    torch.manual_seed(1)
    from lightning_modules.classifier import ImageClassifier
    from tools.files import file_sha256

    model = ImageClassifier(backbone="resnet8-1", num_classes=3, image_size=16)
    torch.save({**torch.load(ckpt, weights_only=True), "state_dict": model.state_dict()}, other)
    manifest = Path(entries[2]["inversion_dir"]) / "manifest.json"
    record2 = {**json.loads(manifest.read_text()), "victim_checkpoint_path": str(other)}
    manifest.write_text(json.dumps({**record2, "victim_checkpoint_sha256": file_sha256(other)}))
    mixed = _config(tmp_path, entries, metrics=["mse", "feature_mse", "agreement"], out=str(tmp_path / "mixed"))
    main(["metric-agreement", "--config", mixed])
    mixed_record = json.loads((tmp_path / "mixed" / "agreement.json").read_text())
    fm = mixed_record["metrics"]["feature_mse"]
    assert fm["model_level"]["kendall"] is None and "own feature units" in fm["model_level"]["unavailable"]
    assert fm["image_level"]["pairs"] < record["metrics"]["feature_mse"]["image_level"]["pairs"]
    assert mixed_record["metrics"]["mse"]["image_level"]["pairs"] == record["metrics"]["mse"]["image_level"]["pairs"]
    assert mixed_record["best"]["image"]["metric"] != "feature_mse"
    assert "feature_mse: in each victim's own feature units" in (tmp_path / "mixed" / "agreement.md").read_text()
    # a victim file that changed since the attack is refused, naming the entry
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    changed = _config(tmp_path, entries, metrics=["feature_mse"], out=str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"entry 'v0'.*changed since the attack"):
        main(["metric-agreement", "--config", changed])
