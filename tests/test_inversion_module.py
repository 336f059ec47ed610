"""GradientInversion + InversionTargetDataModule + InversionWriter through `synthpriv predict`; gradient defences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import one_line_error, quiet_cpu_trainer, run_cli_process, tiny_config, tiny_dataset
from fixtures_images import make_image_tree
from lightning.pytorch.callbacks import Callback
from PIL import Image

from cli import main
from datamodules.inversion_targets import InversionTargetDataModule
from privacy.gradient_defences import defend
from privacy.similarity import compute_metrics

SIZE = 16


class CrashAfterFirstBatch(Callback):
    """Simulates a kill after the first predict batch (its files are written: the writer runs first)."""

    def on_predict_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated kill")


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, victim run folder): resnet8-1 on 16 px images, one short epoch."""
    tmp = tmp_path_factory.mktemp("victim")
    data = tiny_dataset(tmp / "data", size=SIZE)
    config = tiny_config(tmp / "fit.yaml", data)
    run = ["--run.root", str(tmp / "runs"), "--run.study", "s", "--run.name", "victim"]
    main(["fit", "--config", str(config), *run, "--data.init_args.image_size", str(SIZE)])
    return data, tmp / "runs" / "s" / "victim"


def _config(tmp: Path, victim_dir: Path, root: Path, out: Path, crash: bool = False, **model: Any) -> Path:
    callbacks: list[dict[str, Any]] = [{"class_path": "InversionWriter", "init_args": {"output_dir": str(out)}}]
    if crash:
        callbacks.append({"class_path": "test_inversion_module.CrashAfterFirstBatch"})
    config = {
        "seed_everything": 1,
        "trainer": quiet_cpu_trainer(callbacks),
        "model": {
            "class_path": "GradientInversion",
            "init_args": {"victim_checkpoint": str(victim_dir), "preset": "inversed", "iterations": 20, **model},
        },
        "data": {
            "class_path": "InversionTargetDataModule",
            "init_args": {"root": str(root), "count": 4, "image_size": SIZE, "train_transform": "cifar", "seed": 3},
        },
    }
    path = tmp / f"invert-{len(list(tmp.glob('invert-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _predict(tmp: Path, config: Path, name: str, *extra: str) -> None:
    run = ["--run.root", str(tmp / "runs"), "--run.study", "inv", "--run.name", name]
    main(["predict", "--config", str(config), *run, "--data.init_args.batch_size", "2", *extra])


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


# Inversion is a vmapped double backward: on a shared 2-core machine extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _files(folder: Path) -> dict[str, bytes]:
    skip = {"manifest.json"}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_predict_files_metrics_rerun_and_refusal(tmp_path: Path, victim: tuple[Path, Path]) -> None:
    data, victim_dir = victim
    out = tmp_path / "out"
    _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", out), "a")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    assert sorted({r["label"] for r in rows}) == [0, 1, 2]  # stratified choice covers every class
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(f"{r['id']}_{r['label']}_{k}.png" for r in rows for k in ("ori", "target", "rec"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["written"] == 4 and len(manifest["victim_checkpoint_sha256"]) == 64
    assert manifest["preset"] == "inversed" and manifest["overrides"]["iterations"] == 20
    assert manifest["data"]["train_transform"] == "cifar" and manifest["data"]["seed"] == 3
    assert not list(out.rglob(".*"))  # no temporary files left

    differs = 0
    for r in rows:
        s = out / f"{r['id']}_{r['label']}"
        source = data / "test" / r["file"]
        ori, target, rec = (_png(Path(f"{s}_{k}.png")) for k in ("ori", "target", "rec"))
        torch.testing.assert_close(ori, _png(source), rtol=0, atol=0)  # un-augmented (16 px source, 16 px size)
        differs += int(not torch.equal(target, ori))
        again = compute_metrics(["mse", "psnr", "ssim"], ori[None], rec[None])
        assert abs(again["mse"].item() - r["mse"]) <= 2e-3 * max(r["mse"], 1e-3) + 1e-5
        assert abs(again["psnr"].item() - r["psnr"]) < 0.05 and abs(again["ssim"].item() - r["ssim"]) < 0.01
        assert r["agreement"] in (0.0, 1.0) and r["used_label"] == r["label"] and np.isfinite(r["loss"])
    assert differs >= 1  # crop + flip changed at least one target

    # rerun: everything finished, nothing rewritten
    stamps = {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", out), "b")
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    } == stamps

    # another preset into the same folder: refused, naming the key; nothing overwritten
    with pytest.raises(FileExistsError, match=r"preset 'inversed' -> 'inversed-zero'"):
        _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", out, preset="inversed-zero"), "c")
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    } == stamps

    # killed after the first batch, then rerun: the files of the uninterrupted run
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated kill"):
        _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", part, crash=True), "d")
    assert len(list(part.glob("*.png"))) == 6 and not (part / "metrics.jsonl").exists()
    _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", part), "e")
    assert _files(part) == _files(out)


def test_observed_gradient_defence_and_recovered_labels(tmp_path: Path, victim: tuple[Path, Path]) -> None:
    data, victim_dir = victim
    out = tmp_path / "out"
    model = {"known_labels": False, "defence": "prune", "defence_percent": 50.0, "iterations": 5}
    _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", out, **model), "pruned")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["defence"] == {"kind": "prune", "scale": 0.0, "percent": 50.0} and not manifest["known_labels"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(0 <= r["used_label"] < 3 for r in rows)


def test_bad_inputs_are_one_line(tmp_path: Path, victim: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, victim_dir = victim
    out = tmp_path / "out"

    def argv(config: Path, *extra: str) -> list[str]:
        return ["predict", "--config", str(config), "--run.root", str(tmp_path / "runs"), *extra]

    two = make_image_tree(tmp_path / "two", {"ant": 2, "bee": 2}, size=SIZE)
    message = one_line_error(monkeypatch, argv(_config(tmp_path, victim_dir, two, out)))
    assert "classifies 3 classes but the targets have 2" in message
    message = one_line_error(
        monkeypatch, argv(_config(tmp_path, victim_dir, data / "test", out, backbone="convnet-64"))
    )
    assert "is a 'resnet8-1' victim; model.backbone asks for 'convnet-64'" in message
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"feature_dim": 4}}, other)
    message = one_line_error(monkeypatch, argv(_config(tmp_path, other, data / "test", out)))
    assert "is not an ImageClassifier checkpoint" in message
    message = one_line_error(monkeypatch, argv(_config(tmp_path, victim_dir, tmp_path / "nowhere", out)))
    assert "data.root" in message and "does not exist" in message
    message = one_line_error(monkeypatch, argv(_config(tmp_path, tmp_path / "no-run", data / "test", out)))
    assert "victim_checkpoint" in message and "does not exist" in message
    message = one_line_error(monkeypatch, argv(_config(tmp_path, victim_dir, data / "test", out, preset="bogus")))
    assert "unknown preset 'bogus'" in message and "inversed" in message
    config = _config(tmp_path, victim_dir, data / "test", out)
    message = one_line_error(monkeypatch, argv(config, "--data.init_args.std", "[0.5, 0.5, 0.5]"))
    assert "was trained with std [0.229, 0.224, 0.225]" in message
    message = one_line_error(monkeypatch, argv(config, "--model.init_args.defence", "gaussian"))
    assert "gradient defence 'gaussian': scale must be a positive finite number" in message
    assert not out.exists()  # refused before anything was written


def test_targets_seeded_stratified_and_reproducible(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "t", {"a": 5, "b": 5, "c": 5}, size=SIZE)
    dm = InversionTargetDataModule(str(root), count=6, train_transform="cifar", seed=4)
    assert [sum(i["label"] == c for i in dm.items) for c in range(3)] == [2, 2, 2]
    assert [i["id"] for i in dm.items] == [f"{i['index']:06d}" for i in dm.items]
    again = InversionTargetDataModule(str(root), count=6, train_transform="cifar", seed=4)
    first, second = dm.load_item(dm.items[0]), again.load_item(again.items[0])
    assert torch.equal(first["target"], second["target"]) and torch.equal(first["original"], second["original"])
    assert first["original"].min() >= 0 and first["original"].max() <= 1
    dm.skip([dm.items[0]["id"]])
    assert [i["id"] for i in dm.pending()] == [i["id"] for i in dm.items[1:]]
    assert InversionTargetDataModule(str(root), seed=4).items[0]["index"] == 0  # count None: every image
    with pytest.raises(ValueError, match="16 targets asked"):
        InversionTargetDataModule(str(root), count=16)


def test_defences() -> None:
    grads = [torch.randn(200, 50), torch.randn(10)]
    assert all(torch.equal(a, b) for a, b in zip(defend(grads), grads))
    noisy = defend(grads, "gaussian", scale=0.1, generator=torch.Generator().manual_seed(0))
    assert abs((noisy[0] - grads[0]).std().item() - 0.1) < 0.005
    same = defend(grads, "gaussian", scale=0.1, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(noisy, same))
    lap = defend(grads, "laplace", scale=0.1, generator=torch.Generator().manual_seed(1))
    assert abs((lap[0] - grads[0]).std().item() - 0.1 * 2**0.5) < 0.01
    pruned = defend(grads, "prune", percent=90)
    assert (pruned[0] == 0).sum().item() == 9000 and (pruned[1] == 0).sum().item() == 9
    kept = pruned[0] != 0
    assert grads[0].abs()[kept].min() >= grads[0].abs()[~kept].max()
    assert torch.equal(pruned[0][kept], grads[0][kept])
    for bad in ({"kind": "blur"}, {"kind": "gaussian", "scale": 0.0}, {"kind": "prune", "percent": 120.0}):
        with pytest.raises(ValueError, match="gradient defence"):
            defend(grads, **bad)


def test_ddp_writes_every_target_once(tmp_path: Path, victim: tuple[Path, Path]) -> None:
    data, victim_dir = victim
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _predict(tmp_path, _config(tmp_path, victim_dir, data / "test", single), "single")
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "inv", "--run.name", "ddp"]
    config = _config(tmp_path, victim_dir, data / "test", ddp)
    ddp_args = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.init_args.batch_size", "1"]
    run_cli_process(["predict", "--config", str(config), *run, *ddp_args])
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in want]
    assert sorted(p.name for p in ddp.glob("*.png")) == sorted(p.name for p in single.glob("*.png"))
    for p in single.glob("*.png"):  # originals and targets are exact; reconstructions equal up to float32 kernels
        if p.name.endswith("_rec.png"):
            assert (_png(ddp / p.name) - _png(p)).abs().mean() < 0.02
        else:
            assert (ddp / p.name).read_bytes() == p.read_bytes()
