"""In-memory example pools for shadow-model training: batched augmentation and query views.

A pool holds every example of a split at once (uint8 images resized to the model's input size, or float
feature vectors), so that K models can each draw their own member batches every step without K data loaders.
Training augmentation reproduces the source data module's preset: ``none`` and ``cifar`` (random crop with
zero padding of 1/8 of the side, horizontal flip) run batched on the pool's device; any other preset (e.g.
``tckr`` with AugMix) runs the source's own torchvision pipeline image by image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

QueryAugment = Literal["none", "mirror", "mirror_shifts"]
BATCHED_PRESETS = ("none", "cifar")


@dataclass
class MembershipPool:
    """Examples of one or more splits, in a fixed order.

    Attributes:
        inputs: (N, C, H, W) uint8 images or (N, D) float features.
        labels: (N,) int64 class indices.
        ids: N stable example ids.
        augment: training augmentation preset of the source (images) or 'none' (features).
        mean, std: per-channel normalisation of images (None: only scale to [0, 1]).
        train_transform: the source's per-image training pipeline (for presets not run batched).
    """

    inputs: torch.Tensor
    labels: np.ndarray
    ids: list[str]
    augment: str = "none"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    train_transform: Callable[[Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.inputs.shape[0] != n or len(self.labels) != n:
            raise ValueError(f"pool has {self.inputs.shape[0]} inputs, {len(self.labels)} labels and {n} ids")
        if len(set(self.ids)) != n:
            raise ValueError("pool example ids must be unique (the same example appears twice)")

    @property
    def is_image(self) -> bool:
        return self.inputs.ndim == 4

    def subset(self, positions: np.ndarray) -> MembershipPool:
        """The examples at ``positions`` in that order."""
        index = torch.as_tensor(positions, dtype=torch.long)
        return MembershipPool(
            self.inputs[index],
            self.labels[positions],
            [self.ids[i] for i in positions],
            self.augment,
            self.mean,
            self.std,
            self.train_transform,
        )

    @staticmethod
    def concat(pools: Sequence[MembershipPool]) -> MembershipPool:
        """Pools of the same source, one after another."""
        first = pools[0]
        return MembershipPool(
            torch.cat([p.inputs for p in pools]),
            np.concatenate([p.labels for p in pools]),
            [i for p in pools for i in p.ids],
            first.augment,
            first.mean,
            first.std,
            first.train_transform,
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (..., C, H, W) -> float, scaled to [0, 1] and normalised like the source."""
        x = images.float() / 255.0
        if self.mean is not None and self.std is not None:
            shape = (-1, 1, 1)
            x = (x - torch.tensor(self.mean, device=x.device).view(shape)) / torch.tensor(
                self.std, device=x.device
            ).view(shape)
        return x

    def training_inputs(self, positions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented, normalised training inputs for the examples at ``positions`` (any shape of indices)."""
        flat = positions.reshape(-1).to(self.inputs.device)
        raw = self.inputs[flat]
        if not self.is_image:
            x = raw.float()
        elif self.augment == "none":
            x = self.normalise(raw)
        elif self.augment == "cifar":
            x = self.normalise(random_crop_flip(raw, max(1, raw.shape[-1] // 8), generator))
        else:
            if self.train_transform is None:
                raise ValueError(f"pool augmentation {self.augment!r} needs the source's training transform")
            x = torch.stack([self.train_transform(img.cpu()) for img in raw]).to(raw.device)
        return x.view(*positions.shape, *x.shape[1:])


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of a zero-padded image (torchvision RandomCrop(padding)) and random h-flip."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    cropped = padded[batch, channels, rows, cols]
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def query_offsets(kind: QueryAugment) -> list[tuple[bool, int, int]]:
    """(mirror, dy, dx) of each query view: 1 view, 2 (identity, mirror) or 18 (mirror x 3x3 one-pixel shifts)."""
    if kind == "none":
        return [(False, 0, 0)]
    if kind == "mirror":
        return [(False, 0, 0), (True, 0, 0)]
    return [(m, dy, dx) for m in (False, True) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def query_views(pool: MembershipPool, positions: torch.Tensor, kind: QueryAugment) -> torch.Tensor:
    """(B, Q, ...) evaluation inputs: each example under the Q query augmentations (reflect-padded shifts)."""
    raw = pool.inputs[positions.to(pool.inputs.device)]
    if not pool.is_image:
        if kind != "none":
            raise ValueError(f"query augmentation {kind!r} applies to images; feature pools need 'none'")
        return raw.float()[:, None]
    h, w = raw.shape[-2:]
    padded = F.pad(raw.float(), (1, 1, 1, 1), mode="reflect")
    views = []
    for mirror, dy, dx in query_offsets(kind):
        view = padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        views.append(view.flip(-1) if mirror else view)
    return pool.normalise(torch.stack(views, dim=1))
