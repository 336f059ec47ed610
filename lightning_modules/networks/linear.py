"""A linear classifier on feature vectors that standardises its own inputs."""

from __future__ import annotations

import torch
from torch import nn


class StandardisedLinear(nn.Module):
    """``Linear((x - mean) / std)``: a linear probe that carries its z-scoring as buffers.

    The statistics live in the network (and its checkpoints), so whoever queries the model (a test split, an
    attack with the raw features of a membership pool) gives raw features and gets the probe's own scaling.
    """

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be at least 1; got {feature_dim} (is data.feature_dim linked?)")
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.fc = nn.Linear(feature_dim, num_classes)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use ``mean``/``std`` (D,) for the z-scoring; zero std (a constant feature) counts as 1."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"statistics of shape {tuple(mean.shape)} for a probe on {self.mean.shape[0]} features")
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc((features - self.mean) / self.std)
