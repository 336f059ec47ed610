"""FeatureDataModule: batches, k-Same cache, test noise, membership pools, bad inputs, CVAE anonymisers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from fixtures_features import CLASS_NAMES, make_feature_folder

from cli import main
from datamodules import FeatureDataModule

DIM, SIZES = 8, (60, 30, 30)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _split(root: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(root / f"{split}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _rewrite(root: Path, split: str, **changes: Any) -> None:
    arrays = {**_split(root, split), **changes}
    arrays = {key: value for key, value in arrays.items() if value is not None}
    np.savez(root / f"{split}.npz", **arrays)


def _features(loader: torch.utils.data.DataLoader) -> np.ndarray:
    return torch.cat([batch["features"] for batch in loader]).numpy()


def _fit(root: Path, name: str, model: dict[str, Any], data: dict[str, Any], epochs: int, *extra: str) -> Path:
    """`synthpriv fit` of a tiny feature run under ``root/runs/default/<name>``."""
    config = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": epochs,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": model,
        "data": {"class_path": "FeatureDataModule", "init_args": {"batch_size": 16, **data}},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path), "--run.root", str(root / "runs"), "--run.name", name, *extra])
    return root / "runs" / "default" / name


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A FeatureCVAE fitted for 3 epochs on an 8-dimensional feature folder."""
    root = tmp_path_factory.mktemp("cvae")
    feats = make_feature_folder(root / "feats", dim=DIM, sizes=SIZES)
    model = {"class_path": "FeatureCVAE", "init_args": {"hidden_dim": 16, "latent_dim": 4, "lr": 0.01}}
    run = _fit(root, "cvae", model, {"root": str(feats), "batch_size": 32}, 3)
    return {"root": root, "feats": feats, "run": run}


# ---- identity ---------------------------------------------------------------------------------------------
def test_identity_batches_metadata_and_standardisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    feats = make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    dm = FeatureDataModule(root="feats", batch_size=16, eval_batch_size=7)
    assert (dm.feature_dim, dm.num_classes, dm.class_names) == (DIM, 3, CLASS_NAMES)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"features", "label", "index"}
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (16, DIM)
    assert batch["label"].dtype == torch.int64 and batch["index"].shape == (16,)
    train = _split(feats, "train")
    np.testing.assert_array_equal(batch["features"].numpy(), train["embeddings"][batch["index"].numpy()])
    np.testing.assert_array_equal(batch["label"].numpy(), train["labels"][batch["index"].numpy()])
    val = dm.val_dataloader()
    assert val.batch_size == 7
    np.testing.assert_array_equal(_features(val), _split(feats, "val")["embeddings"])
    assert not (Path("feats") / "anonymised").exists()  # identity caches nothing
    mean, std = dm.standardisation()
    x = train["embeddings"].astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), x.std(0, ddof=0), rtol=1e-6)
    assert dm.example_ids("val") == [str(i) for i in _split(feats, "val")["ids"]]


# ---- k-Same -----------------------------------------------------------------------------------------------
def test_ksame_training_set_cache_and_standardisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    k, n = 7, SIZES[0]
    dm = FeatureDataModule(root="feats", anonymiser="ksame", k=k)
    dm.prepare_data()
    cached = sorted(Path("feats/anonymised").glob(f"train_ksame-{k}-*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    dm.setup("fit")
    train = dm.splits["train"].embeddings
    assert train.shape == (n - n % k, DIM)
    rows, counts = np.unique(train, axis=0, return_counts=True)
    assert len(rows) == (n - n % k) // k and set(counts.tolist()) == {k}
    real = _split(Path("feats"), "train")
    np.testing.assert_array_equal(dm.splits["train"].labels, real["labels"][: n - n % k])  # own labels kept
    np.testing.assert_array_equal(_features(dm.val_dataloader()), _split(Path("feats"), "val")["embeddings"])
    mean, std = dm.standardisation()
    np.testing.assert_allclose(mean.numpy(), train.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), train.astype(np.float64).std(0), rtol=1e-6)
    assert not np.allclose(std.numpy(), real["embeddings"].std(0), rtol=1e-3)  # not the real statistics

    again = FeatureDataModule(root="feats", anonymiser="ksame", k=k)
    again.prepare_data()
    again.setup("fit")
    assert sorted(Path("feats/anonymised").glob("train_ksame-*.npz")) == cached
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    np.testing.assert_array_equal(again.splits["train"].embeddings, train)


# ---- test noise -------------------------------------------------------------------------------------------
def test_sigma_list_gives_one_scaled_noise_draw_per_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_feature_folder(Path("feats"), dim=DIM, sizes=(60, 30, 300))
    dm = FeatureDataModule(root="feats", sigma=[0, 1, 2.5], noise_seed=3)
    dm.setup("test")
    assert dm.test_sigmas == [0.0, 1.0, 2.5]
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 3
    clean = _split(Path("feats"), "test")["embeddings"]
    noisy = [_features(loader) for loader in loaders]
    np.testing.assert_array_equal(noisy[0], clean)
    unit = noisy[1] - clean
    np.testing.assert_allclose(noisy[2] - clean, 2.5 * unit, rtol=1e-4, atol=1e-4)  # the same draw, scaled
    _, std = dm.standardisation()
    for s, features in zip([1.0, 2.5], noisy[1:]):
        z = (features - clean) / std.numpy()
        assert z.std() == pytest.approx(s, rel=0.05)
        assert abs(z.mean()) < 0.1 * s
    single = FeatureDataModule(root="feats", sigma=1.0, noise_seed=3)
    single.setup("test")
    loader = single.test_dataloader()
    assert not isinstance(loader, list)
    np.testing.assert_array_equal(_features(loader), noisy[1])


def test_equal_noise_scales_the_same_draw_by_the_real_std(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """k-Same shrinks the spread, so its own-scale sigma is less raw noise; equal_noise uses the real std."""
    monkeypatch.chdir(tmp_path)
    make_feature_folder(Path("feats"), dim=DIM, sizes=(60, 30, 300))
    dm = FeatureDataModule(root="feats", anonymiser="ksame", k=4, sigma=[0, 2], noise_seed=3, equal_noise=True)
    dm.setup("test")
    assert dm.test_loader_names == ["sigma0", "sigma2", "real_sigma2"]  # sigma 0 is not repeated
    clean = _split(Path("feats"), "test")["embeddings"]
    _, own, real = (_features(loader) - clean for loader in dm.test_dataloader())
    _, probe_std = dm.standardisation()
    real_std = _split(Path("feats"), "train")["embeddings"].astype(np.float64).std(0)
    np.testing.assert_allclose(own / probe_std.numpy(), real / real_std, rtol=1e-3, atol=1e-3)  # one draw
    assert (probe_std.numpy() < real_std).all()  # centroids of 4 spread less
    assert (real / real_std).std() == pytest.approx(2.0, rel=0.05)
    plain = FeatureDataModule(root="feats", anonymiser="ksame", k=4, sigma=[0, 2], noise_seed=3)
    assert plain.test_loader_names == ["sigma0", "sigma2"]


# ---- membership pool --------------------------------------------------------------------------------------
def test_membership_pool_holds_real_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    dm = FeatureDataModule(root="feats", anonymiser="ksame", k=4)
    for split in ("train", "val", "test"):
        pool = dm.membership_pool(split)
        real = _split(Path("feats"), split)
        assert not pool.is_image and pool.inputs.dtype == torch.float32
        np.testing.assert_array_equal(pool.inputs.numpy(), real["embeddings"])
        np.testing.assert_array_equal(pool.labels, real["labels"])
        assert pool.ids == [str(i) for i in real["ids"]]
    assert len(dm.splits["train"]) == SIZES[0] and not np.array_equal(
        dm.splits["train"].embeddings, dm.membership_pool("train").inputs.numpy()
    )


# ---- bad inputs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("split", "change", "error", "match"),
    [
        ("val", {"labels": None}, ValueError, r"val\.npz lacks key\(s\) \['labels'\]"),
        ("test", {"embeddings": np.zeros((30, 6), np.float32)}, ValueError, r"different feature sizes .*'test': 6"),
        ("train", "nan", ValueError, r"train\.npz 'embeddings': 1 of .* the first is nan at row 5, feature 2"),
        ("val", {"labels": np.arange(30) % 4}, ValueError, r"val\.npz 'labels'.*: label 3 at example 3 lies outside"),
        ("val", {"labels": (np.arange(30) % 3).astype(float)}, ValueError, r"integers; found dtype float64"),
        ("val", {"labels": (np.arange(30) % 3).astype(str)}, ValueError, r"integers; found dtype <U\d+"),
        ("test", {"ids": np.asarray(["a"] * 30)}, ValueError, r"test\.npz 'ids': .*'a' appears more than once"),
    ],
    ids=["missing-labels", "feature-sizes", "nan", "label-range", "float-labels", "string-labels", "duplicate-ids"],
)
def test_bad_feature_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str, change: Any, error: type, match: str
) -> None:
    monkeypatch.chdir(tmp_path)
    feats = make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    if change == "nan":
        embeddings = _split(feats, split)["embeddings"]
        embeddings[5, 2] = np.nan
        change = {"embeddings": embeddings}
    _rewrite(feats, split, **change)
    dm = FeatureDataModule(root="feats")
    with pytest.raises(error, match=match):
        dm.setup("fit")


def test_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    with pytest.raises(ValueError, match=r"data\.k=100: .*train\.npz holds N=60"):
        FeatureDataModule(root="feats", anonymiser="ksame", k=100).prepare_data()
    with pytest.raises(ValueError, match=r"anonymiser=ksame needs data\.k"):
        FeatureDataModule(root="feats", anonymiser="ksame")
    for anonymiser in ("cvae", "cvae-online"):
        with pytest.raises(ValueError, match=rf"anonymiser={anonymiser} needs data\.cvae_checkpoint"):
            FeatureDataModule(root="feats", anonymiser=anonymiser)
        dm = FeatureDataModule(root="feats", anonymiser=anonymiser, cvae_checkpoint="nowhere/cvae.ckpt")
        with pytest.raises(FileNotFoundError, match=r"data\.cvae_checkpoint: nowhere/cvae\.ckpt"):
            dm.setup("fit")
    with pytest.raises(ValueError, match=r"data\.sigma must be a finite number >= 0; got -1"):
        FeatureDataModule(root="feats", sigma=[0, -1])
    with pytest.raises(ValueError, match=r"data\.sigma: .*distinct values"):
        FeatureDataModule(root="feats", sigma=[0, 1, 1.0])
    with pytest.raises(ValueError, match=r"data\.online_factor"):
        FeatureDataModule(root="feats", online_factor=0)
    with pytest.raises(ValueError, match=r"data\.class_names .* differ"):
        FeatureDataModule(root="feats", class_names=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match=r"data\.root: feature folder missing does not exist"):
        FeatureDataModule(root="missing", class_names=CLASS_NAMES).setup("fit")

    (Path("feats") / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json does not exist and data\.class_names is unset"):
        FeatureDataModule(root="feats")
    dm = FeatureDataModule(root="feats", class_names=CLASS_NAMES)  # the class list given instead
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.splits["train"]) == SIZES[0]


def test_bad_options_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    with pytest.raises(ValueError, match=r"anonymiser=ksame needs data\.k"):
        _fit(tmp_path, "p", {"class_path": "LinearProbe"}, {"root": "feats", "anonymiser": "ksame"}, 1)
    with pytest.raises(ValueError, match=r"data\.sigma must be a finite number"):
        _fit(tmp_path, "q", {"class_path": "LinearProbe"}, {"root": "feats", "sigma": -0.5}, 1)


def test_cvae_checkpoint_for_another_feature_dim(cvae_run: dict[str, Path], tmp_path: Path) -> None:
    narrow = make_feature_folder(tmp_path / "narrow", dim=6, sizes=SIZES)
    for anonymiser in ("cvae", "cvae-online"):
        dm = FeatureDataModule(root=str(narrow), anonymiser=anonymiser, cvae_checkpoint=str(cvae_run["run"]))
        with pytest.raises(ValueError, match=r"trained with feature_dim=8, num_classes=3; the data has feature_dim=6"):
            dm.setup("fit")
    assert not list(narrow.glob("anonymised/*.npz"))  # nothing cached for the wrong features


# ---- CVAE anonymisers end to end --------------------------------------------------------------------------
def test_cvae_replica_through_the_cli(cvae_run: dict[str, Path]) -> None:
    root, feats = cvae_run["root"], cvae_run["feats"]
    ckpts = cvae_run["run"] / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best-epoch*.ckpt"))
    data = {"root": str(feats), "anonymiser": "cvae", "cvae_checkpoint": str(cvae_run["run"])}
    run = _fit(root, "probe-cvae", {"class_path": "LinearProbe", "init_args": {"lr": 0.05}}, data, 2)
    assert (run / "fit_summary.json").is_file()
    cached = sorted((feats / "anonymised").glob("train_cvae-s42-std1-*.npz"))
    assert len(cached) == 1
    replica, real = _split(feats / "anonymised", cached[0].stem), _split(feats, "train")
    assert replica["embeddings"].shape == real["embeddings"].shape and np.isfinite(replica["embeddings"]).all()
    np.testing.assert_array_equal(np.bincount(replica["labels"]), np.bincount(real["labels"]))
    assert not np.allclose(replica["embeddings"], real["embeddings"])
    assert not set(map(str, replica["ids"])) & set(map(str, real["ids"]))  # synthetic rows have their own ids

    dm = FeatureDataModule(root=str(feats), anonymiser="cvae", cvae_checkpoint=str(cvae_run["run"]))
    dm.setup("fit")
    np.testing.assert_array_equal(dm.splits["train"].embeddings, replica["embeddings"])
    mean, _ = dm.standardisation()
    np.testing.assert_allclose(mean.numpy(), replica["embeddings"].astype(np.float64).mean(0), atol=1e-5)
    other = FeatureDataModule(root=str(feats), anonymiser="cvae", cvae_checkpoint=str(cvae_run["run"]), cvae_seed=7)
    other.setup("fit")
    assert len(list((feats / "anonymised").glob("train_cvae-*.npz"))) == 2
    assert not np.allclose(other.splits["train"].embeddings, replica["embeddings"])


def _online(feats: Path, run: Path, **kwargs: Any) -> FeatureDataModule:
    dm = FeatureDataModule(
        root=str(feats), anonymiser="cvae-online", cvae_checkpoint=str(run), online_factor=2, batch_size=16, **kwargs
    )
    dm.setup("fit")
    return dm


def _decoded(dm: FeatureDataModule, epoch: int) -> list[dict[str, torch.Tensor]]:
    dm.trainer = SimpleNamespace(current_epoch=epoch)
    return [dm.on_after_batch_transfer(batch, 0) for batch in dm.train_dataloader()]


def test_cvae_online_draws_fresh_seeded_samples(cvae_run: dict[str, Path]) -> None:
    feats, run = cvae_run["feats"], cvae_run["run"]
    dm = _online(feats, run)
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 2 * SIZES[0] and len(loader) == 8
    assert set(next(iter(loader))) == {"index"}
    epoch0 = _decoded(dm, 0)
    for batch in epoch0:
        n = len(batch["index"])
        assert batch["features"].shape == (n, DIM) and batch["features"].dtype == torch.float32
        assert batch["label"].shape == (n,) and 0 <= int(batch["label"].min()) and int(batch["label"].max()) < 3
        assert torch.isfinite(batch["features"]).all()
    assert sum(len(b["index"]) for b in epoch0) == 2 * SIZES[0]
    labels = torch.cat([b["label"] for b in epoch0])
    assert len(labels.unique()) == 3
    epoch1 = _decoded(dm, 1)
    assert not torch.allclose(epoch0[0]["features"], epoch1[0]["features"])
    assert not torch.allclose(epoch0[0]["features"], epoch0[1]["features"][: len(epoch0[0]["index"])])
    same = _decoded(_online(feats, run), 0)
    for a, b in zip(epoch0, same):
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["label"], b["label"])
    reseeded = _decoded(_online(feats, run, cvae_seed=5), 0)
    assert not torch.allclose(epoch0[0]["features"], reseeded[0]["features"])
    # Real batches pass through untouched; z-scoring uses the real training statistics.
    real = next(iter(dm.val_dataloader()))
    assert dm.on_after_batch_transfer(real, 0) is real
    mean, _ = dm.standardisation()
    np.testing.assert_allclose(mean.numpy(), _split(feats, "train")["embeddings"].astype(np.float64).mean(0), atol=1e-5)
    assert dm.audit_samples().shape == (SIZES[0], DIM)


def test_cvae_online_fit_through_the_cli(cvae_run: dict[str, Path]) -> None:
    data = {"root": str(cvae_run["feats"]), "anonymiser": "cvae-online", "cvae_checkpoint": str(cvae_run["run"])}
    model = {"class_path": "LinearProbe", "init_args": {"lr": 0.05}}
    run = _fit(cvae_run["root"], "probe-online", model, {**data, "online_factor": 2}, 2)
    summary = json.loads((run / "fit_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["global_step"] == 2 * 8  # 120 slots in batches of 16
    assert np.isfinite(summary["metrics"]["val/loss"]) and summary["metrics"]["train/loss_epoch"] > 0


def test_bad_feature_file_ends_a_fit_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the console entry point: string labels stop `synthpriv fit` with one line naming the file."""
    import sys

    monkeypatch.chdir(tmp_path)
    feats = make_feature_folder(Path("feats"), dim=DIM, sizes=SIZES)
    _rewrite(feats, "train", labels=(np.arange(SIZES[0]) % 3).astype(str))
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False},
        "model": {"class_path": "LinearProbe"},
        "data": {"class_path": "FeatureDataModule", "init_args": {"root": "feats"}},
    }
    Path("probe.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(sys, "argv", ["synthpriv", "fit", "--config", "probe.yaml", "--run.name", "probe"])
    monkeypatch.delenv("SYNTHPRIV_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = str(exit_info.value.code)
    assert message.startswith("synthpriv: error: feats/train.npz 'labels'") and "\n" not in message
    assert "class labels must be integers" in message
