"""Transform presets for image classifiers (torchvision v2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms import InterpolationMode, v2

from datamodules.ats_policies import ATSPolicy

TransformPreset = Literal["none", "cifar", "tckr", "ats", "robust"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(
    preset: TransformPreset,
    image_size: int,
    resize: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    train: bool,
    ats_policy: str = "",
) -> v2.Compose:
    """PIL RGB image -> normalised float tensor.

    Presets (training only; evaluation always gets resize + normalise):
      none: no augmentation.
      cifar: random crop with 1/8 padding (4 px at 32 px) and horizontal flip (SemSim's ``crop`` mode).
      tckr: horizontal flip, AugMix, random crop with 10 % padding (TCKR's classifier recipe).
      robust: ``cifar`` plus random per-channel gains (0.5-1.5), per-channel Gaussian pixel noise of a random
        scale (sigma ~ U(0, 0.35) in [0, 1] pixel units) and, half the time, a Gaussian blur: for a classifier that
        must name shapes through colour noise, e.g. the SemSim study's judge of gradient-inversion reconstructions.
      ats: the ATS policy ``ats_policy`` (e.g. "3-1-7", "3-1-7+43-18-18"; datamodules/ats_policies.py) after the
        resize, no crop or flip (SemSim's ``aug`` mode); an empty policy is no augmentation.
    """
    if ats_policy and preset != "ats":
        raise ValueError(f"data.ats_policy={ats_policy!r} is set but data.transform is {preset!r}; use transform: ats")
    policy = ATSPolicy(ats_policy) if preset == "ats" else None
    steps: list[v2.Transform] = [v2.ToImage()]
    if resize:
        steps.append(v2.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC, antialias=True))
    if train and preset == "cifar":
        steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8)), v2.RandomHorizontalFlip()]
    elif train and preset == "tckr":
        steps += [
            v2.RandomHorizontalFlip(),
            v2.AugMix(),
            v2.RandomCrop(image_size, padding=max(1, round(0.1 * image_size))),
        ]
    elif train and preset == "robust":
        steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8)), v2.RandomHorizontalFlip()]
    elif train and policy is not None and policy.chains:
        steps.append(policy)
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train and preset == "robust":
        steps += [
            RandomChannelNoise(max_gain=0.5, max_sigma=0.35),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.3, 1.0))], p=0.5),
        ]
    if mean is not None and std is not None:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


class RandomChannelNoise(torch.nn.Module):
    """Per-channel random gain ``U(1 - max_gain, 1 + max_gain)`` and Gaussian noise of a random scale
    ``sigma ~ U(0, max_sigma)``, on a (C, H, W) float image in [0, 1]; the result is clipped to [0, 1]."""

    def __init__(self, max_gain: float, max_sigma: float) -> None:
        super().__init__()
        if not 0 <= max_gain < 1 or max_sigma < 0:
            raise ValueError(
                f"RandomChannelNoise: need 0 <= max_gain < 1 and max_sigma >= 0; got {max_gain}, {max_sigma}"
            )
        self.max_gain, self.max_sigma = max_gain, max_sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        channels = image.shape[-3]
        gain = 1 + (torch.rand(channels, 1, 1) * 2 - 1) * self.max_gain
        sigma = torch.rand(()) * self.max_sigma
        return (image * gain + torch.randn_like(image) * sigma).clamp(0, 1)
