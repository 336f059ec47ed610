"""FeatureCVAE: loss formulas, min-max scaling, sampling, a short fit on Gaussian blobs, checkpoints, replicas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from lightning_modules import FeatureCVAE
from lightning_modules.cvae import cvae_loss, cvae_replica, latent_std, load_feature_cvae
from tools.run_config import ensure_checkpointing

DIM, CLASSES = 8, 3


class _Features(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "label": self.labels[i], "index": torch.tensor(i)}


class BlobData(LightningDataModule):
    """Stand-in for FeatureDataModule: Gaussian class blobs in DIM dimensions, dict batches."""

    def __init__(self, n_train: int = 100, n_val: int = 40, seed: int = 0, batch_size: int = 64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.means = 3.0 * torch.randn(CLASSES, DIM, generator=g) + 10.0  # offset: raw space is not [0, 1]
        self.batch_size = batch_size
        self.train = self._blobs(n_train, g)
        self.val = self._blobs(n_val, g)

    def _blobs(self, per_class: int, g: torch.Generator) -> _Features:
        labels = torch.arange(CLASSES).repeat_interleave(per_class)
        features = self.means[labels] + torch.randn(len(labels), DIM, generator=g)
        return _Features(features.float(), labels)

    def train_features(self) -> torch.Tensor:
        return self.train.features

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


class ValLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: FeatureCVAE) -> None:
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val/loss"]))


def _trainer(max_epochs: int, callbacks: list[Callback], root: Path) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(root),
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short fit shared by the tests below, with the suite's own last.ckpt checkpoint attached."""
    seed_everything(0, verbose=False)
    run_dir = tmp_path_factory.mktemp("cvae_run")
    data = BlobData()
    model = FeatureCVAE(feature_dim=DIM, num_classes=CLASSES, hidden_dim=64, latent_dim=8, lr=3e-3)
    losses = ValLosses()
    trainer = _trainer(30, ensure_checkpointing([losses], run_dir, True), run_dir)
    trainer.fit(model, datamodule=data)
    return {"model": model, "data": data, "losses": losses.losses, "trainer": trainer, "ckpts": run_dir / "checkpoints"}


def test_loss_matches_hand_computation() -> None:
    x = torch.tensor([[0.2, 0.8], [0.0, 1.0]])
    x_hat = torch.tensor([[0.5, 0.4], [0.0, 1.0]])
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    log_var = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    recon = 0.3**2 + 0.4**2
    # as-coded: σ = exp(log_var) → σ² = 1, 4 in row 0 and 1, 1 in row 1; each term σ² + μ² − log_var − ½.
    reg = (1 + 1 - 0 - 0.5) + (4 + 0 - math.log(2) - 0.5) + 2 * (1 - 0.5)
    total, r, k = cvae_loss(x, x_hat, mu, log_var, 0.1, "as-coded")
    assert r.item() == pytest.approx(recon, abs=1e-6)
    assert k.item() == pytest.approx(reg, abs=1e-6)
    assert total.item() == pytest.approx(recon + 0.1 * reg, abs=1e-6)
    # elbo: σ² = exp(log_var); ½·(σ² + μ² − 1 − log σ²), zero where μ = 0 and σ = 1.
    kl = 0.5 * ((1 + 1 - 1 - 0) + (2 + 0 - 1 - math.log(2)))
    total, r, k = cvae_loss(x, x_hat, mu, log_var, 0.5, "elbo")
    assert k.item() == pytest.approx(kl, abs=1e-6)
    assert total.item() == pytest.approx(recon + 0.5 * kl, abs=1e-6)
    with pytest.raises(ValueError, match="loss kind"):
        cvae_loss(x, x_hat, mu, log_var, 0.1, "kl")  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "best_sigma"), [("as-coded", 1 / math.sqrt(2)), ("elbo", 1.0)])
def test_regulariser_minimum(kind: str, best_sigma: float) -> None:
    grid = torch.linspace(-2, 2, 40001, dtype=torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    regs = torch.stack([cvae_loss(zero, zero, zero, lv.view(1, 1), 1.0, kind)[2] for lv in grid[::10]])
    coarse = grid[::10][regs.argmin()]
    fine = grid[(grid - coarse).abs() <= 1e-3]
    regs = torch.stack([cvae_loss(zero, zero, zero, lv.view(1, 1), 1.0, kind)[2] for lv in fine])
    assert latent_std(fine[regs.argmin()], kind).item() == pytest.approx(best_sigma, abs=1e-4)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="feature_dim must be positive"):
        FeatureCVAE()
    with pytest.raises(ValueError, match="class_names has 2 names"):
        FeatureCVAE(feature_dim=4, num_classes=3, class_names=["a", "b"])


def test_scaling_constant_feature_is_finite() -> None:
    model = FeatureCVAE(feature_dim=3, num_classes=2, hidden_dim=8, latent_dim=2)
    assert not model.scaling_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        model.sample(torch.tensor([0, 1]))
    features = torch.tensor([[0.0, 5.0, -1.0], [2.0, 5.0, 1.0], [4.0, 5.0, 0.0]])
    model.fit_scaling(features)
    scaled = model.scale(features)
    assert torch.isfinite(scaled).all()
    assert torch.allclose(scaled[:, 1], torch.zeros(3))
    assert torch.allclose(scaled[:, 0], torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    assert torch.allclose(model.unscale(scaled), features, atol=1e-5)
    samples = model.sample(torch.tensor([0, 1, 1]))
    assert torch.isfinite(samples).all() and torch.allclose(samples[:, 1], torch.full((3,), 5.0))
    with pytest.raises(ValueError, match="shape"):
        model.fit_scaling(torch.zeros(4, 2))


def test_sample_shapes_determinism_and_std_zero() -> None:
    torch.manual_seed(0)
    model = FeatureCVAE(feature_dim=5, num_classes=3, hidden_dim=16, latent_dim=4)
    model.fit_scaling(torch.randn(20, 5) * 4 + 2)
    labels = torch.tensor([0, 2, 1, 2, 0, 1])
    a = model.sample(labels, generator=torch.Generator().manual_seed(7))
    b = model.sample(labels, generator=torch.Generator().manual_seed(7))
    c = model.sample(labels, generator=torch.Generator().manual_seed(8))
    assert a.shape == (6, 5) and not a.requires_grad
    assert torch.equal(a, b) and not torch.equal(a, c)
    mean = model.unscale(model.model.decode(torch.zeros(6, 4), labels))
    assert torch.allclose(model.sample(labels, std=0.0), mean)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        model.sample(torch.tensor([0, 3]))
    out = model.predict_step({"features": torch.zeros(6, 5), "label": labels, "index": torch.arange(6) + 10}, 0)
    assert out["features"].shape == (6, 5)
    assert torch.equal(out["label"], labels) and torch.equal(out["index"], torch.arange(6) + 10)
    again = model.predict_step({"label": labels, "index": torch.arange(6) + 10}, 0)["features"]
    other = model.predict_step({"label": labels, "index": torch.arange(6) + 16}, 0)["features"]
    assert torch.equal(out["features"], again) and not torch.equal(out["features"], other)


def test_fit_reduces_val_loss_and_samples_follow_their_class(trained: dict) -> None:
    losses, model, data = trained["losses"], trained["model"], trained["data"]
    assert min(losses[-5:]) < 0.65 * losses[0], losses
    labels = torch.arange(CLASSES).repeat_interleave(200)
    samples = model.sample(labels, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(samples, data.means).argmin(dim=1)
    assert (nearest == labels).float().mean() > 0.95
    # Min-max statistics come from the data module's training features.
    assert torch.equal(model.feature_min, data.train_features().min(dim=0).values)


def test_best_checkpoint_kept_beside_suite_last_checkpoint(trained: dict) -> None:
    ckpts, trainer = trained["ckpts"], trained["trainer"]
    assert (ckpts / "last.ckpt").is_file()
    best = sorted(ckpts.glob("best-epoch*.ckpt"))
    assert len(best) == 1
    monitors = sorted(str(cb.monitor) for cb in trainer.checkpoint_callbacks)
    assert monitors == ["None", "val/loss"]
    assert trainer.checkpoint_callback.monitor == "val/loss"  # ckpt_path="best" means best val loss
    assert any(isinstance(cb, EarlyStopping) for cb in trainer.callbacks)


def test_checkpoint_round_trip(trained: dict) -> None:
    ckpts, model = trained["ckpts"], trained["model"]
    for path in [next(ckpts.glob("best-epoch*.ckpt")), ckpts / "last.ckpt"]:
        loaded = load_feature_cvae(path, DIM, CLASSES)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert torch.equal(loaded.feature_min, model.feature_min)
        assert torch.equal(loaded.feature_max, model.feature_max)
    loaded = load_feature_cvae(ckpts / "last.ckpt", DIM, CLASSES)
    labels = torch.tensor([0, 1, 2, 2])
    expected = model.sample(labels, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(loaded.sample(labels, generator=torch.Generator().manual_seed(3)), expected)
    with pytest.raises(ValueError, match=r"last\.ckpt.*feature_dim=8, num_classes=3.*feature_dim=9"):
        load_feature_cvae(ckpts / "last.ckpt", DIM + 1, CLASSES)
    with pytest.raises(ValueError, match="num_classes=4"):
        load_feature_cvae(ckpts / "last.ckpt", DIM, CLASSES + 1)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_feature_cvae(ckpts / "missing.ckpt", DIM, CLASSES)


def test_replica_deterministic_and_batch_size_independent(trained: dict) -> None:
    model = trained["model"]
    labels = np.repeat(np.arange(CLASSES), 30)
    a = cvae_replica(model, labels, seed=42)
    b = cvae_replica(model, labels, seed=42, batch_size=7)
    assert a.dtype == np.float32 and a.shape == (len(labels), DIM)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert not np.allclose(a, cvae_replica(model, labels, seed=43))
    assert cvae_replica(model, labels[:0], seed=1).shape == (0, DIM)


def test_early_stopping_on_plateau(tmp_path: Path) -> None:
    seed_everything(1, verbose=False)
    # lr = 0 keeps the weights fixed: val/loss only fluctuates with the sampling noise.
    model = FeatureCVAE(
        feature_dim=DIM, num_classes=CLASSES, hidden_dim=16, latent_dim=4, lr=0.0, early_stopping_patience=2
    )
    trainer = _trainer(50, [], tmp_path)
    trainer.fit(model, datamodule=BlobData(n_train=20, n_val=20))
    assert trainer.current_epoch < 20
    no_stop = FeatureCVAE(feature_dim=DIM, num_classes=CLASSES, early_stopping_patience=0)
    no_stop.trainer = trainer
    assert not any(isinstance(cb, EarlyStopping) for cb in no_stop.configure_callbacks())
    assert sum(isinstance(cb, ModelCheckpoint) for cb in no_stop.configure_callbacks()) >= 2


def test_configured_val_loss_checkpoint_is_not_duplicated(tmp_path: Path) -> None:
    configured = ModelCheckpoint(monitor="val/loss", mode="min", filename="best-epoch{epoch:03d}")
    model = FeatureCVAE(feature_dim=DIM, num_classes=CLASSES, hidden_dim=8, latent_dim=2)
    model.trainer = _trainer(1, ensure_checkpointing([configured], tmp_path, True), tmp_path)
    callbacks = model.configure_callbacks()
    ckpts = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    assert ckpts[0] is configured and [cb.monitor for cb in ckpts] == ["val/loss", None]
    assert sum(isinstance(cb, EarlyStopping) for cb in callbacks) == 1
