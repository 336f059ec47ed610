"""Plain ``nn.Module`` architectures (no Lightning imports)."""

from lightning_modules.networks.cifar import CifarResNet, ConvNet
from lightning_modules.networks.cvae import ConditionalVAE
from lightning_modules.networks.factory import (
    KNOWN_BACKBONES,
    build_backbone,
    check_backbone_name,
    load_weights,
    read_state_dict,
)
from lightning_modules.networks.linear import StandardisedLinear

__all__ = [
    "KNOWN_BACKBONES",
    "CifarResNet",
    "ConditionalVAE",
    "ConvNet",
    "StandardisedLinear",
    "build_backbone",
    "check_backbone_name",
    "load_weights",
    "read_state_dict",
]
