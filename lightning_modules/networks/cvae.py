"""Conditional VAE on feature vectors (the CVAE study, ``seeds.md`` §4.4): one hidden layer each way."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConditionalVAE(nn.Module):
    """Encoder [x, one-hot(y)] → hidden → (μ, log_var); decoder [z, one-hot(y)] → hidden → sigmoid(D).

    The sigmoid output means the decoder models min-max scaled features in [0, 1]; scaling is the caller's
    job (``FeatureCVAE``).
    """

    def __init__(self, feature_dim: int, num_classes: int, hidden_dim: int = 256, latent_dim: int = 50) -> None:
        """Build encoder and decoder.

        Args:
            feature_dim: size D of a feature vector.
            num_classes: number of classes C (the one-hot condition).
            hidden_dim: width of the single hidden layer of encoder and decoder.
            latent_dim: size of the latent code z.
        """
        super().__init__()
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(feature_dim + num_classes, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + num_classes, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim), nn.Sigmoid()
        )

    def _condition(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(labels.long(), self.num_classes).to(inputs.dtype)
        return torch.cat([inputs, one_hot], dim=1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, log_var), each (N, latent_dim), for features x (N, D) and labels (N,)."""
        mu, log_var = self.encoder(self._condition(x, labels)).chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return reconstructions in [0, 1], (N, D), for latents z (N, latent_dim) and labels (N,)."""
        return self.decoder(self._condition(z, labels))
