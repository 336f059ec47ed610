"""FeatureExtractor + FeatureWriter through cli.main: npz layout, manifest, reruns, hf: folders, DDP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import quiet_cpu_trainer, run_cli_process, tiny_dataset

from cli import main
from datamodules import ImageFolderDataModule
from lightning_modules import FeatureExtractor
from lightning_modules.networks.feature_backbones import build_feature_backbone
from privacy.membership import ids_hash
from tools.files import file_sha256

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


def _config(path: Path, data: Path, **model: Any) -> Path:
    config = {
        "seed_everything": 5,
        "trainer": quiet_cpu_trainer([{"class_path": "FeatureWriter"}]),
        "model": {
            "class_path": "FeatureExtractor",
            "init_args": {"backbone": "mobilenet_v2", "weights": None, "resolution": 32, **model},
        },
        "data": {
            "class_path": "ImageFolderDataModule",
            "init_args": {
                "train_roots": str(data / "train"),
                "val_root": str(data / "val"),
                "test_root": str(data / "test"),
                "predict_split": "all",
                "normalize": False,
                "batch_size": 8,
            },
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _predict(config: Path, root: Path, name: str, *extra: str) -> Path:
    run = ["--run.root", str(root / "runs"), "--run.study", "t", "--run.name", name]
    main(["predict", "--config", str(config), *run, *extra])
    return root / "runs" / "t" / name


def _datamodule(data: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        train_roots=str(data / "train"), val_root=str(data / "val"), test_root=str(data / "test"), predict_split="all"
    )


def _check_folder(folder: Path, data: Path, dim: int) -> dict[str, Any]:
    """Every split once, in dataset order, with the manifest describing it; returns the manifest."""
    dm = _datamodule(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    for split in SPLITS:
        with np.load(folder / f"{split}.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["embeddings", "ids", "labels"]
            emb, labels, ids = npz["embeddings"], npz["labels"], npz["ids"].tolist()
        assert emb.dtype == np.float32 and emb.shape == (len(ids), dim) and np.isfinite(emb).all()
        assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < dm.num_classes
        assert ids == dm.example_ids(split) and len(set(ids)) == len(ids)
        assert labels.tolist() == [s.label for s in dm.samples(split)]
        entry = manifest["splits"][split]
        assert entry["count"] == len(ids) and entry["ids_hash"] == ids_hash(ids)
        assert entry["sha256"] == file_sha256(folder / f"{split}.npz")
    assert manifest["feature_dim"] == dim and manifest["class_names"] == dm.class_names
    return manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    tiny_dataset(root / "data", {"ant": 3, "bee": 2, "cow": 2})
    return root


def test_predict_writes_every_split_and_a_manifest(tiny: Path) -> None:
    config = _config(tiny / "f.yaml", tiny / "data")
    run = _predict(config, tiny, "mnv2")
    folder = run / "mobilenet_v2-random"
    manifest = _check_folder(folder, tiny / "data", 1280)
    assert manifest["backbone"] == "mobilenet_v2" and manifest["tag"] == "mobilenet_v2-random"
    assert manifest["weights_file"] is None and manifest["weights_sha256"] is None
    assert manifest["resolution"] == 32 and manifest["input_size"] == 16 and manifest["seed"] == 5
    assert manifest["data"]["hparams"]["normalize"] is False
    assert manifest["data"]["hparams"]["test_root"] == str(tiny / "data" / "test")
    assert not list(folder.glob(".*"))  # no shards or temp files left

    before = (folder / "train.npz").read_bytes()
    _predict(config, tiny, "mnv2")  # identical rerun: allowed, same embeddings
    assert (folder / "train.npz").read_bytes() == before
    with pytest.raises(FileExistsError, match=r"mobilenet_v2-random .*resolution 32 -> 48"):
        _predict(config, tiny, "mnv2", "--model.init_args.resolution", "48")
    assert json.loads((folder / "manifest.json").read_text())["resolution"] == 32


def test_hf_folder_gives_hidden_size_embeddings(tiny: Path, tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32
    )
    torch.manual_seed(0)
    model = Dinov2Model(config).eval()
    folder = tmp_path / "tiny-dino"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))

    extractor = FeatureExtractor(backbone=f"hf:{folder}", weights=None, resolution=32)
    assert extractor.tag == "hf-tiny-dino" and extractor.feature_dim == 32
    images = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        expected = model(pixel_values=(images - 0.5) / 0.25).pooler_output
        assert torch.allclose(extractor(images), expected, atol=1e-5)

    run = _predict(_config(tmp_path / "hf.yaml", tiny / "data", backbone=f"hf:{folder}"), tmp_path, "hf")
    manifest = _check_folder(run / "hf-tiny-dino", tiny / "data", 32)
    assert manifest["mean"] == [0.5] * 3 and manifest["weights_sha256"] == file_sha256(folder / "model.safetensors")


def test_hf_folder_without_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no-weights has config.json but no weights file.*model.safetensors"):
        build_feature_backbone(f"hf:{folder}", None)
    with pytest.raises(FileNotFoundError, match=r"missing does not exist.*config.json and one of model.safetensors"):
        build_feature_backbone(f"hf:{tmp_path / 'missing'}", None)


def test_weights_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model.weights: .*nope.pth does not exist"):
        FeatureExtractor(backbone="resnet18", weights=str(tmp_path / "nope.pth"))
    extractor = FeatureExtractor(backbone="mobilenet_v2", weights="imagenet")
    assert extractor.tag == "mobilenet_v2-imagenet" and extractor.feature_dim == 1280
    assert extractor.weights_sha256().startswith("b0353104")  # torchvision's published hash prefix
    state = build_feature_backbone("mobilenet_v3_small", None).net.state_dict()  # no classifier: keys missing
    torch.save(state, tmp_path / "headless.pth")
    with pytest.raises(ValueError, match=r"does not fit backbone 'mobilenet_v3_small': missing \(4\): classifier"):
        FeatureExtractor(backbone="mobilenet_v3_small", weights=str(tmp_path / "headless.pth"))
    import torchvision

    full = torchvision.models.resnet18(num_classes=3)  # a fine-tuned head of another size is dropped
    torch.save(full.state_dict(), tmp_path / "teacher.pth")
    extractor = FeatureExtractor(backbone="resnet18", weights=str(tmp_path / "teacher.pth"), resolution=32)
    assert extractor.tag == "resnet18-teacher" and extractor.feature_dim == 512
    full.fc = torch.nn.Identity()
    images = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.inference_mode():
        expected = full.eval()((images - mean[:, None, None]) / std[:, None, None])
        assert torch.allclose(extractor(images), expected, atol=1e-5)


def test_misuse_is_refused_clearly() -> None:
    extractor = FeatureExtractor(backbone="mobilenet_v3_small", weights=None, resolution=32)
    assert extractor.feature_dim == 576 and not extractor.training
    batch = {"image": torch.randn(2, 3, 16, 16), "label": torch.zeros(2), "index": torch.arange(2)}
    with pytest.raises(ValueError, match=r"already normalised.*data.normalize: false"):
        extractor.predict_step(batch, 0)
    with pytest.raises(ValueError, match=r"predict-only.*synthpriv predict"):
        extractor.training_step(batch, 0)
    with pytest.raises(ValueError, match="not a feature backbone"):
        FeatureExtractor(backbone="resnet8-1", weights=None)
    out = extractor.predict_step({**batch, "image": torch.rand(2, 3, 16, 16)}, 0)
    assert out["embeddings"].shape == (2, 576) and out["embeddings"].dtype == torch.float32


def test_predict_splits_follow_the_non_empty_splits(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data", {"ant": 2, "bee": 2})
    dm = ImageFolderDataModule(train_roots=str(data / "train"), test_root=str(data / "test"), val_fraction=0.0)
    assert dm.predict_splits == ["test"]
    dm = ImageFolderDataModule(
        train_roots=str(data / "train"), test_root=str(data / "test"), val_fraction=0.0, predict_split="all"
    )
    dm.setup("predict")
    loaders = dm.predict_dataloader()
    assert dm.predict_splits == ["train", "test"] and [len(loader.dataset) for loader in loaders] == [4, 4]


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not torch.distributed.is_available(), reason="needs gloo DDP"
)
def test_ddp_writes_every_example_once(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data", {"ant": 3, "bee": 2, "cow": 2})  # 7 per split: DistributedSampler pads
    config = _config(tmp_path / "f.yaml", data)
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "t", "--run.name", "ddp"]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.init_args.batch_size", "2"]
    run_cli_process(["predict", "--config", str(config), *run, *ddp])
    folder = tmp_path / "runs" / "t" / "ddp" / "mobilenet_v2-random"
    _check_folder(folder, data, 1280)
    assert not list(folder.glob(".*"))  # shards merged and removed


def test_study_config_parses(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "predict",
        "--config",
        str(ROOT / "configs/trainer/cpu.yaml"),
        "--config",
        str(ROOT / "configs/cvae/features.yaml"),
    ]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith("FeatureExtractor")
    assert printed["data"]["init_args"]["normalize"] is False
    assert printed["data"]["init_args"]["predict_split"] == "all"
