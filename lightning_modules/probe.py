"""LinearProbe: the CVAE study's linear head on (anonymised) feature vectors (``seeds.md`` §4.5).

One linear layer on z-scored features, cross-entropy, Adam (lr 1e-3, no weight decay), ReduceLROnPlateau on
val/loss (patience 5, min lr 1e-5), early stopping on val/loss (patience 5) and the best checkpoint by val/loss.
The reported utility is the test macro one-vs-rest AUROC (x 100 in tables) over the classes present in the test
split (a class with no test example is named in a warning, not scored 0; see ``class_metrics``); accuracy is
logged beside it.

The z-scoring statistics are buffers of the network, taken from the data module's ``standardisation()`` when
training starts (the anonymised training set's, as the original), so the checkpoint takes raw features.
With ``FeatureDataModule(anonymiser: cvae-online)`` every training batch is freshly decoded from the frozen
CVAE by the data module on this model's device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.class_metrics import PresentClassAUROC
from lightning_modules.networks import StandardisedLinear
from lightning_modules.recipes import select_by_val_loss


class LinearProbe(LightningModule):
    """Linear classifier on feature vectors; batches are ``{"features", "label", "index"}`` dicts."""

    def __init__(
        self,
        feature_dim: int = 0,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        plateau_patience: int = 5,
        plateau_factor: float = 0.1,
        min_lr: float = 1e-5,
        early_stopping_patience: int = 5,
    ) -> None:
        """Configure the probe.

        Args:
            feature_dim: input feature size (linked from the data module).
            num_classes: number of classes (linked from the data module).
            class_names: class names in label order (linked from the data module).
            lr: Adam learning rate (the original: 1e-3).
            weight_decay: Adam weight decay (the original: none).
            plateau_patience: epochs without val/loss improvement before the learning rate drops.
            plateau_factor: learning-rate factor of ReduceLROnPlateau.
            min_lr: lower bound of the learning rate.
            early_stopping_patience: epochs without val/loss improvement before training stops; 0 disables.
        """
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be at least 2; got {num_classes}")
        self.model = StandardisedLinear(feature_dim, num_classes)
        self._own_callbacks: list[Any] = []
        self.register_buffer("standardised", torch.tensor(False))  # set once the statistics are fitted
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "auroc": PresentClassAUROC(num_classes, class_names=class_names),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self._metrics = metrics
        self._test_names = ["sigma0"]
        self.test_metrics = nn.ModuleList([metrics.clone(prefix="test/")])  # one per test loader (noise level)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of raw features (B, D)."""
        return self.model(features)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str, loader: int = 0) -> torch.Tensor:
        logits = self(batch["features"])
        loss = F.cross_entropy(logits, batch["label"])
        n = batch["label"].shape[0]
        if stage == "test" and self._noise_named():
            stage = f"test/{self._test_names[loader]}"
        step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=step,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
            add_dataloader_idx=False,
        )
        if stage != "train":
            metrics = self.val_metrics if stage == "val" else self.test_metrics[loader]
            metrics.update(logits.detach(), batch["label"])
            self.log_dict(metrics, prog_bar=stage == "val", batch_size=n, add_dataloader_idx=False)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on a batch of (anonymised or freshly decoded) training features."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """val/loss (drives the schedule, early stopping and the best checkpoint), val/acc, val/auroc."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """test/loss, test/acc and test/auroc (macro one-vs-rest); with test noise (several levels, or one
        sigma > 0) test/sigma<s>/loss, .../acc, .../auroc per level, so a noisy test never reads as sigma 0;
        data.equal_noise adds test/real_sigma<s>/... (noise scaled by the real training std)."""
        self._shared_step(batch, "test", dataloader_idx)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Logits, probabilities and indices of the predict split."""
        logits = self(batch["features"]).float()
        return {"logits": logits, "probs": logits.softmax(dim=1), "index": batch["index"]}

    def setup(self, stage: str) -> None:
        """Fit the z-scoring from the data module's training statistics, once (a checkpoint keeps them);
        for `test`, one metric set per noise level of the data module."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "test":
            self._test_names = list(getattr(datamodule, "test_loader_names", ["sigma0"]))
            named = self._noise_named()
            self.test_metrics = nn.ModuleList(
                [self._metrics.clone(prefix=f"test/{name}/" if named else "test/") for name in self._test_names]
            )
        if stage != "fit" or bool(self.standardised):
            return
        if datamodule is None or not hasattr(datamodule, "standardisation"):
            raise ValueError("LinearProbe trains on a FeatureDataModule (it provides the z-scoring statistics)")
        mean, std = datamodule.standardisation()
        self.model.set_statistics(mean.to(self.model.mean), std.to(self.model.std))
        self.standardised.fill_(True)

    def _noise_named(self) -> bool:
        """Plain test/ keys only for the clean test split alone; any noise level is named test/sigma<s>/."""
        return self._test_names != ["sigma0"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint for another feature size or class count with a clear message."""
        saved = checkpoint.get("hyper_parameters", {})
        weight = checkpoint.get("state_dict", {}).get("model.fc.weight")
        if weight is not None:  # the weights' shape: load_from_checkpoint(feature_dim=..) overrides the hparams
            saved = {"num_classes": int(weight.shape[0]), "feature_dim": int(weight.shape[1])}
        for key in ("feature_dim", "num_classes"):
            if key in saved and saved[key] != self.hparams[key]:
                raise ValueError(f"checkpoint has {key}={saved[key]} but the data give {key}={self.hparams[key]}")

    def configure_callbacks(self) -> list[Any]:
        """Early stopping on val/loss and a best-by-val/loss checkpoint (the recipe's own; see recipes)."""
        callbacks, self._own_callbacks = select_by_val_loss(
            self.trainer, self.hparams.early_stopping_patience, self._own_callbacks
        )
        return callbacks

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam with ReduceLROnPlateau on val/loss."""
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience, min_lr=hp.min_lr
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss", "interval": "epoch"},
        }
