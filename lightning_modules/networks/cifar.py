"""CIFAR-style networks of the SemSim / Inverting-Gradients victims (``seeds.md`` §2.3).

``ResNet{depth}-{width}``: 3x3 stem without max-pool, three stages of BasicBlocks (widths 16w/32w/64w,
strides 1/2/2, (depth-2)/6 blocks each), global average pool, linear head. ResNet20-4 is the SemSim victim.

``ConvNet-{width}``: eight conv3x3+BN+ReLU layers (w, 2w, 2w, 4w, 4w, 4w, pool3, 4w, 4w, pool3) and a linear
head over the flattened 4w x 3 x 3 map (for 28-32 px inputs). ConvNet-64 is the SemSim victim.
"""

from __future__ import annotations

import torch
from torch import nn


def init_resnet_weights(model: nn.Module) -> None:
    """He et al. 2015 init of every conv (fan_out, ReLU); BatchNorm weight 1, bias 0 (the CIFAR ResNets' scheme)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (1x1 conv when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 and width multiplier ``width`` (base 16 channels)."""

    def __init__(self, depth: int = 20, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...); got {depth}")
        blocks = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths, (1, 2, 2)):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class ConvNet(nn.Module):
    """The eight-layer ConvNet of Inverting Gradients with width ``width``."""

    def __init__(self, width: int = 64, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn_relu(3, w),
            _conv_bn_relu(w, 2 * w),
            _conv_bn_relu(2 * w, 2 * w),
            _conv_bn_relu(2 * w, 4 * w),
            _conv_bn_relu(4 * w, 4 * w),
            _conv_bn_relu(4 * w, 4 * w),
            nn.MaxPool2d(3),
            _conv_bn_relu(4 * w, 4 * w),
            _conv_bn_relu(4 * w, 4 * w),
            nn.MaxPool2d(3),
        )
        side = (image_size // 3) // 3
        if side < 1:
            raise ValueError(f"ConvNet needs images of at least 9 px per side; got image_size={image_size}")
        # 36*w for 27-35 px inputs, as in the original; other sizes keep the layout and resize the head.
        self.fc = nn.Linear(4 * w * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))
