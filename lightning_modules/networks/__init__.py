"""Plain ``nn.Module`` architectures (no Lightning imports)."""

from lightning_modules.networks.cifar import CifarResNet, ConvNet
from lightning_modules.networks.factory import (
    KNOWN_BACKBONES,
    build_backbone,
    check_backbone_name,
    load_weights,
    read_state_dict,
)

__all__ = [
    "KNOWN_BACKBONES",
    "CifarResNet",
    "ConvNet",
    "build_backbone",
    "check_backbone_name",
    "load_weights",
    "read_state_dict",
]
