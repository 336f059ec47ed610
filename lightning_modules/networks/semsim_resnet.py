"""SemSim's embedding network: a CIFAR-style ResNet18 with the classifier removed (``seeds.md`` §2.3).

3x3 stem (stride 1, no max-pool), four stages of two BasicBlocks with widths w, 2w, 4w, 8w (w = 64 in the
paper: 64/128/256/512) and strides 1/2/2/2, global average pool; ``fc`` is the identity, so the output is the
8w-dimensional (512-d) embedding. Trained from scratch (the original's 1149-class ``fc`` was never used).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.networks.cifar import BasicBlock, init_resnet_weights


class CifarResNet18Embedding(nn.Module):
    """CIFAR ResNet18 trunk returning (N, 8 * width) embeddings."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"model.width must be a positive number of stem channels; got {width}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages: list[nn.Module] = []
        for planes, stride in zip(widths, (1, 2, 2, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()  # the original replaces its classifier by identity: the embedding is the pool
        self.embedding_dim = widths[-1]
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
