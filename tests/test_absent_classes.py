"""A class with no evaluation examples is reported as absent (NaN / null / '–'), not scored 0 (issue 10, item 6).

Macro AUROC averages over the classes present in the evaluation set; see ``lightning_modules/class_metrics.py``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_helpers import tiny_config, tiny_dataset
from fixtures_features import CLASS_NAMES, make_feature_folder
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from cli import main
from datamodules import FeatureDataModule
from lightning_modules import LinearProbe
from lightning_modules.class_metrics import PresentClassAccuracy, PresentClassAUROC

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 3 classes, class 2 ('cow') absent. One-vs-rest AUROC by hand (positives vs negatives, pairs ranked right):
#   class 0: positives 0.8, 0.5 vs negatives 0.3, 0.2 -> 4/4 = 1.0
#   class 1: positives 0.5, 0.3 vs negatives 0.1, 0.4 -> 3/4 = 0.75 (0.3 < 0.4)
#   class 2: no positive -> undefined (torchmetrics 1.9 alone scores it 0.0: macro (1 + 0.75 + 0) / 3 = 0.583)
# Macro over the present classes: (1.0 + 0.75) / 2 = 0.875.
# Per-class accuracy (argmax 0, 0, 1, 2): class 0 2/2 = 1.0, class 1 1/2 = 0.5, class 2 NaN (torchmetrics: 0.0).
PROBS = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.3, 0.5, 0.2], [0.2, 0.3, 0.5]])
LABELS = torch.tensor([0, 0, 1, 1])


def _assert_toy(auroc: torch.Tensor, per_class_auroc: torch.Tensor, accuracy: torch.Tensor) -> None:
    assert float(auroc) == pytest.approx(0.875)
    assert per_class_auroc[:2].tolist() == pytest.approx([1.0, 0.75]) and math.isnan(float(per_class_auroc[2]))
    assert accuracy[:2].tolist() == pytest.approx([1.0, 0.5]) and math.isnan(float(accuracy[2]))


def test_macro_auroc_over_present_classes_and_nan_accuracy() -> None:
    auroc = PresentClassAUROC(3, class_names=CLASS_NAMES)
    accuracy = PresentClassAccuracy(3)
    auroc.update(PROBS, LABELS)
    accuracy.update(PROBS, LABELS)
    with pytest.warns(UserWarning, match=r"\['cow'\] have no examples.*mean over the 2 present class"):
        macro = auroc.compute()
    _assert_toy(macro, auroc.per_class, accuracy.compute())
    assert auroc.support.tolist() == [2, 2, 0]
    # Same as sklearn on the present classes.
    expected = np.mean([roc_auc_score(LABELS.numpy() == c, PROBS[:, c].numpy()) for c in (0, 1)])
    assert float(macro) == pytest.approx(expected)


def test_torchmetrics_alone_scores_the_absent_class_zero() -> None:
    """What the old code logged (the comment above): the absent class counts as AUROC 0 and accuracy 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(MulticlassAUROC(3, average="macro")(PROBS, LABELS)) == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert MulticlassAccuracy(3, average=None)(PROBS, LABELS).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_all_classes_present_matches_torchmetrics_macro() -> None:
    probs = torch.softmax(torch.randn(30, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(30) % 3
    ours = PresentClassAUROC(3)(probs, labels)
    assert float(ours) == pytest.approx(float(MulticlassAUROC(3, average="macro")(probs, labels)))


def test_one_class_present_has_no_defined_auroc() -> None:
    """Rule: one-vs-rest AUROC needs a positive and a negative; with one class present none is defined."""
    metric = PresentClassAUROC(3, class_names=CLASS_NAMES)
    metric.update(PROBS[:2], LABELS[:2])
    with pytest.warns(UserWarning, match=r"\['bee', 'cow'\].*fewer than 2 classes present"):
        assert math.isnan(float(metric.compute()))
    assert torch.isnan(metric.per_class).all()


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank 0 holds only class-0 examples, rank 1 only class-1 ones: a rank-local rule would call both absent."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        shard = slice(2 * rank, 2 * rank + 2)
        auroc, accuracy = PresentClassAUROC(3, class_names=CLASS_NAMES), PresentClassAccuracy(3)
        auroc.update(PROBS[shard], LABELS[shard])
        accuracy.update(PROBS[shard], LABELS[shard])
        result = {"auroc": auroc.compute(), "per_class": auroc.per_class, "accuracy": accuracy.compute()}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed (gloo)")
def test_ddp_decides_from_synced_states(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        _assert_toy(result["auroc"], result["per_class"], result["accuracy"])


def _run(tmp_path: Path, name: str = "r") -> list[str]:
    return ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", name]


def _main_recording_warnings(args: list[str]) -> list[str]:
    """Run the CLI and return the warning messages it emitted (checked after the figures, so old code fails on
    the figures first)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(args)
    return [str(w.message) for w in caught]


def _warned_absent(messages: list[str], pattern: str) -> bool:
    return any(re.search(pattern, m) for m in messages)


def _macro_present(probs: np.ndarray, labels: np.ndarray, present: list[int]) -> float:
    """Independent macro one-vs-rest AUROC (sklearn) over the given classes."""
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


def test_classifier_cli_reports_unreadable_class_as_absent(tmp_path: Path) -> None:
    """Every 'cow' test image is unreadable and skipped: cow's accuracy is null / '–' and AUROC averages 2 classes."""
    data = tiny_dataset(tmp_path / "data")
    for path in (data / "test" / "cow").iterdir():
        path.write_bytes(b"not an image" * 8)
    for i in range(4):  # bee images filed as ant: imperfect scores, so the AUROC comparison is not 1.0 == 1.0
        shutil.copy(data / "test" / "bee" / f"{i}.png", data / "test" / "ant" / f"bee{i}.png")
    config = str(tiny_config(tmp_path / "c.yaml", data, max_epochs=1))
    base = ["--config", config, *_run(tmp_path), "--data.init_args.on_corrupt", "skip"]
    run_dir = tmp_path / "runs" / "s" / "r"
    main(["fit", *base])

    messages = _main_recording_warnings(["test", *base, "--ckpt_path", "last", "--trainer.callbacks+=TestReport"])
    metrics = json.loads((run_dir / "test" / "metrics.json").read_text())["metrics"]
    assert metrics["test/acc_class/cow"] is None
    assert metrics["test/acc_class/ant"] is not None and metrics["test/acc_class/bee"] is not None

    main(["predict", *base, "--ckpt_path", "last", "--trainer.callbacks+=PredictionWriter"])
    with np.load(run_dir / "predict" / "predictions.npz") as pred:
        probs, ids = pred["probs"].astype(np.float64), [str(i) for i in pred["ids"]]
    names = ["ant", "bee", "cow"]
    labels = np.array([names.index(i.split("/")[1]) for i in ids])
    assert len(labels) == 20 and 2 not in labels  # 12 'ant' + 8 bee; the 8 cow files were skipped
    expected = _macro_present(probs, labels, [0, 1])
    assert metrics["test/auroc"] == pytest.approx(expected, abs=1e-5)
    for c, name in enumerate(names[:2]):
        own = float(np.mean(probs[labels == c].argmax(axis=1) == c))
        assert metrics[f"test/acc_class/{name}"] == pytest.approx(own)

    summary = (run_dir / "test" / "summary.md").read_text()
    assert "| cow | – |" in summary
    assert "no test examples of cow (absent)" in summary and "over the 2 present class(es)" in summary
    assert _warned_absent(messages, r"\['cow'\] have no examples.*mean over the 2 present class")

    # val/auroc uses the same metric: validating on the same images gives the same figure.
    val = ["--data.init_args.val_root", str(data / "test")]
    main(["validate", *base, *val, "--ckpt_path", "last"])
    validated = json.loads((run_dir / "validate" / "metrics.json").read_text())["metrics"]
    assert validated["val/auroc"] == pytest.approx(expected, abs=1e-5)


def test_linear_probe_macro_auroc_over_present_test_classes(tmp_path: Path) -> None:
    """Test features without any 'cow' row: test/auroc (and per noise level) averages ant and bee only."""
    import yaml

    feats = make_feature_folder(tmp_path / "feats", dim=8, sizes=(60, 30, 30), spread=5.0)
    with np.load(feats / "test.npz") as test:
        keep = test["labels"] != 2
        x, y, ids = test["embeddings"][keep], test["labels"][keep], test["ids"][keep]
    np.savez(feats / "test.npz", embeddings=x, labels=y, ids=ids)
    config = tmp_path / "probe.yaml"
    trainer = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False, "max_epochs": 5}
    model = {"class_path": "LinearProbe", "init_args": {"lr": 0.05}}
    data = {"class_path": "FeatureDataModule", "init_args": {"root": str(feats), "batch_size": 16}}
    config.write_text(yaml.safe_dump({"seed_everything": 1, "trainer": trainer, "model": model, "data": data}))
    run = ["--config", str(config), "--run.root", str(tmp_path / "runs"), "--run.name", "probe"]
    main(["fit", *run])
    run_dir = tmp_path / "runs" / "default" / "probe"
    messages = _main_recording_warnings(["test", *run, "--ckpt_path", "last", "--data.sigma", "[0,2]"])
    metrics = json.loads((run_dir / "test" / "metrics.json").read_text())["metrics"]

    probe = LinearProbe.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    noisy = FeatureDataModule(root=str(feats), sigma=[0, 2])  # the same test inputs (one seeded noise draw)
    noisy.setup("test")
    for name, part in zip(("sigma0", "sigma2"), noisy.noisy_tests):
        assert 2 not in part.labels
        with torch.no_grad():
            probs = probe(torch.from_numpy(part.embeddings)).softmax(dim=1).double().numpy()
        expected = _macro_present(probs, part.labels, [0, 1])
        assert metrics[f"test/{name}/auroc"] == pytest.approx(expected, abs=1e-5), name
    assert _warned_absent(messages, r"\['cow'\] have no examples")
