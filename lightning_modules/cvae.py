"""FeatureCVAE: a class-conditional VAE on feature vectors that generates synthetic replicas (CVAE study).

``seeds.md`` §4.4: per-feature min-max scaling with the training statistics (stored in the model, so a
checkpoint generates in the original feature space), a one-hidden-layer conditional VAE, Adam, early stopping
on the validation loss and the best checkpoint by validation loss. The loss is the original's as coded by
default (σ = exp(log_var) and a regulariser whose minimum sits at σ = 1/√2, §4.7); ``loss="elbo"`` is the
textbook ELBO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import Callback

from lightning_modules.networks import ConditionalVAE
from lightning_modules.recipes import select_by_val_loss

LossKind = Literal["as-coded", "elbo"]


def latent_std(log_var: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """σ of the posterior: exp(log_var) as coded in the original, exp(½·log_var) for the textbook ELBO."""
    return torch.exp(log_var) if kind == "as-coded" else torch.exp(0.5 * log_var)


def cvae_loss(
    x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, beta: float, kind: LossKind
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed CVAE loss over batch and dimensions: (total, reconstruction, regulariser).

    as-coded: Σ(x̂ − x)² + β·Σ(σ² + μ² − log_var − ½) with σ = exp(log_var).
    elbo:     Σ(x̂ − x)² + β·½·Σ(σ² + μ² − 1 − log σ²) with σ² = exp(log_var).
    """
    recon = (x_hat - x).pow(2).sum()
    if kind == "as-coded":
        reg = (torch.exp(2 * log_var) + mu.pow(2) - log_var - 0.5).sum()
    elif kind == "elbo":
        reg = 0.5 * (torch.exp(log_var) + mu.pow(2) - 1.0 - log_var).sum()
    else:
        raise ValueError(f"loss kind must be 'as-coded' or 'elbo'; got {kind!r}")
    return recon + beta * reg, recon, reg


class FeatureCVAE(LightningModule):
    """Class-conditional VAE over feature vectors; ``predict`` generates a replica of each batch's labels.

    Batches are dicts with ``features`` (N, D) float, ``label`` (N,) and ``index`` (N,) as produced by
    ``FeatureDataModule``; the data module also provides ``train_features()`` for the min-max statistics.
    """

    def __init__(
        self,
        feature_dim: int = 0,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        hidden_dim: int = 256,
        latent_dim: int = 50,
        beta: float = 0.1,
        loss: LossKind = "as-coded",
        lr: float = 1e-3,
        scale_epsilon: float = 1e-8,
        early_stopping_patience: int = 15,
    ) -> None:
        """Configure the CVAE (defaults: the original's).

        Args:
            feature_dim: size of a feature vector (linked from the data module; 0 means not linked).
            num_classes: number of classes (linked from the data module).
            class_names: class names in label order (linked from the data module).
            hidden_dim: width of the hidden layer of encoder and decoder.
            latent_dim: size of the latent code.
            beta: weight of the regulariser (KL term).
            loss: 'as-coded' (the original: σ = exp(log_var), regulariser Σ(σ² + μ² − log_var − ½)) or 'elbo'
                (σ = exp(½·log_var), KL = ½·Σ(σ² + μ² − 1 − log σ²)).
            lr: Adam learning rate.
            scale_epsilon: added to (max − min) in the min-max scaling so constant features stay finite.
            early_stopping_patience: epochs without a lower val/loss before training stops; 0 disables it.
        """
        super().__init__()
        self.save_hyperparameters()
        if feature_dim <= 0:
            raise ValueError(
                f"model.feature_dim must be positive; got {feature_dim} (it is linked from data.feature_dim: "
                "use a feature data module, or set model.init_args.feature_dim)"
            )
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be at least 2; got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.class_names has {len(class_names)} names but num_classes is {num_classes}")
        if loss not in ("as-coded", "elbo"):
            raise ValueError(f"model.loss must be 'as-coded' or 'elbo'; got {loss!r}")
        if early_stopping_patience < 0:
            raise ValueError(f"model.early_stopping_patience must be >= 0; got {early_stopping_patience}")
        self.model = ConditionalVAE(feature_dim, num_classes, hidden_dim, latent_dim)
        # +inf / -inf mark "not fitted yet"; a checkpoint's state dict overwrites them with the fitted values.
        self.register_buffer("feature_min", torch.full((feature_dim,), float("inf")))
        self.register_buffer("feature_max", torch.full((feature_dim,), float("-inf")))
        self._own_callbacks: list[Callback] = []

    @property
    def scaling_fitted(self) -> bool:
        """Whether the min-max statistics have been fitted (or loaded from a checkpoint)."""
        return bool(torch.isfinite(self.feature_min).all() and torch.isfinite(self.feature_max).all())

    def fit_scaling(self, features: torch.Tensor) -> None:
        """Fit the per-feature min-max statistics on raw training features (N, D)."""
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.hparams.feature_dim or features.shape[0] == 0:
            raise ValueError(
                f"training features must have shape (N > 0, {self.hparams.feature_dim}); got {tuple(features.shape)}"
            )
        features = features.detach().to(self.feature_min.device, torch.float32)
        self.feature_min.copy_(features.min(dim=0).values)
        self.feature_max.copy_(features.max(dim=0).values)

    def _check_scaling(self) -> None:
        if not self.scaling_fitted:
            raise RuntimeError("FeatureCVAE min-max scaling is not fitted: train the model or call fit_scaling first")

    def scale(self, features: torch.Tensor) -> torch.Tensor:
        """Raw features → min-max scaled features (training range ↦ [0, 1])."""
        self._check_scaling()
        span = self.feature_max - self.feature_min + self.hparams.scale_epsilon
        return (features - self.feature_min) / span

    def unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        """Min-max scaled features → raw feature space (inverse of ``scale``)."""
        self._check_scaling()
        span = self.feature_max - self.feature_min + self.hparams.scale_epsilon
        return scaled * span + self.feature_min

    def forward(self, scaled: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample z = μ + σ·ε and decode scaled features; return (x̂, μ, log_var)."""
        mu, log_var = self.model.encode(scaled, labels)
        # randn_like keeps ε on the input's device (the original hard-codes .cuda(), pitfall 1).
        z = mu + latent_std(log_var, self.hparams.loss) * torch.randn_like(mu)
        return self.model.decode(z, labels), mu, log_var

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        x = self.scale(batch["features"].float())
        x_hat, mu, log_var = self(x, batch["label"])
        total, recon, reg = cvae_loss(x, x_hat, mu, log_var, self.hparams.beta, self.hparams.loss)
        n = x.shape[0]
        # Logged per example so epochs with a short last batch average correctly; the optimiser gets the sum.
        kwargs = {"on_step": stage == "train", "on_epoch": True, "batch_size": n, "sync_dist": stage != "train"}
        self.log(f"{stage}/loss", total / n, prog_bar=True, **kwargs)
        self.log_dict({f"{stage}/recon": recon / n, f"{stage}/kl": reg / n}, **kwargs)
        return total

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Summed loss of one batch (the original's objective)."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation loss per example (early stopping and the best checkpoint watch val/loss)."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Test loss per example."""
        self._shared_step(batch, "test")

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decode latents z (N, latent_dim) with labels (N,) into the original feature space."""
        self._check_scaling()
        z, labels = z.to(self.device, self.feature_min.dtype), labels.to(self.device)
        return self.unscale(self.model.decode(z, labels))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, std: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Synthetic features (N, D) in the original space, one per label, on the module's device.

        Args:
            labels: class indices (N,).
            std: multiplier of the prior sample, z = std·ε (the original's "variance"; 0 gives the decoder
                output at z = 0).
            generator: random generator for ε (on its own device; ε is then moved to the module's device).
        """
        labels = torch.as_tensor(labels).long()
        _check_labels(labels, self.hparams.num_classes)
        shape = (labels.shape[0], self.hparams.latent_dim)
        device = generator.device if generator is not None else self.device
        eps = torch.randn(shape, generator=generator, device=device)
        return self.generate(std * eps, labels)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Generate a synthetic replica of the batch's labels: ``features``, ``label`` and ``index``.

        ε comes from a generator seeded by (torch's initial seed, the batch's first index): DDP ranks share
        the global RNG state after ``seed_everything``, and would otherwise draw the same noise.
        """
        index = batch["index"]
        first = int(index[0]) if len(index) else 0
        seed = np.random.SeedSequence([torch.initial_seed(), first]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        return {"features": self.sample(batch["label"], generator=generator), "label": batch["label"], "index": index}

    def setup(self, stage: str) -> None:
        """Fit the min-max scaling on the data module's training features, unless already fitted."""
        if stage != "fit" or self.scaling_fitted:
            return
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "train_features"):
            raise ValueError(
                "FeatureCVAE needs a data module with train_features() (e.g. FeatureDataModule) to fit its "
                f"min-max scaling; got {type(datamodule).__name__}"
            )
        self.fit_scaling(datamodule.train_features())

    def configure_callbacks(self) -> list[Callback]:
        """Early stopping on val/loss and a best-by-val/loss checkpoint (the recipe's own; see recipes)."""
        callbacks, self._own_callbacks = select_by_val_loss(
            self.trainer, self.hparams.early_stopping_patience, self._own_callbacks
        )
        return callbacks

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with the configured learning rate (no schedule)."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _check_labels(labels: torch.Tensor | np.ndarray, num_classes: int) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-d array of class indices; got shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}]; got values from {int(labels.min())} to {int(labels.max())}"
        )


def load_feature_cvae(checkpoint: str | Path, feature_dim: int, num_classes: int) -> FeatureCVAE:
    """Load a trained FeatureCVAE on the CPU, in eval mode and frozen, checking it fits the data.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the checkpoint was trained for another feature size or class count.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"CVAE checkpoint {path} does not exist")
    model = FeatureCVAE.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    found = (model.hparams.feature_dim, model.hparams.num_classes)
    if found != (feature_dim, num_classes):
        raise ValueError(
            f"CVAE checkpoint {path} was trained with feature_dim={found[0]}, num_classes={found[1]}; the data "
            f"has feature_dim={feature_dim}, num_classes={num_classes} (use the CVAE trained on these features)"
        )
    if not model.scaling_fitted:
        raise ValueError(f"CVAE checkpoint {path} has no fitted min-max scaling (it was saved before training)")
    model.eval()
    model.freeze()
    return model


def cvae_replica(
    model: FeatureCVAE, labels: np.ndarray, seed: int, std: float = 1.0, batch_size: int = 4096
) -> np.ndarray:
    """One synthetic feature vector per label, float32 (N, D), in the original feature space.

    All ε are drawn up front from one seeded CPU generator, so the result depends on the seed and the labels
    only: not on ``batch_size`` or the model's device.
    """
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    _check_labels(labels_t, model.hparams.num_classes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn((labels_t.shape[0], model.hparams.latent_dim), generator=generator)
    parts = [
        model.generate(std * eps[i : i + batch_size], labels_t[i : i + batch_size]).cpu()
        for i in range(0, labels_t.shape[0], batch_size)
    ]
    if not parts:
        return np.zeros((0, model.hparams.feature_dim), dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32, copy=False)
