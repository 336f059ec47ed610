"""Backbone registry: build a classifier network by name, load local weights, replace the head.

Names: the torchvision models in ``TORCHVISION_BACKBONES`` and the CIFAR-style families ``resnet{depth}-{width}``
(e.g. ``resnet20-4``, ``resnet8-1``) and ``convnet-{width}`` (e.g. ``convnet-64``), and ``linear`` for feature
vectors (a standardised linear probe; needs ``feature_dim``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from lightning_modules.networks.cifar import CifarResNet, ConvNet
from lightning_modules.networks.linear import StandardisedLinear

TORCHVISION_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}
_RESNET = re.compile(r"^resnet(\d+)-(\d+)$")
_CONVNET = re.compile(r"^convnet-(\d+)$")
KNOWN_BACKBONES = (
    *TORCHVISION_BACKBONES,
    "resnet{depth}-{width} (e.g. resnet20-4)",
    "convnet-{width} (e.g. convnet-64)",
    "linear (feature vectors: z-scoring + one linear layer)",
)
# Parameter-name prefixes of each family's classification head (dropped from weight files of another size).
_HEAD_PREFIXES = {"mobilenet": ("classifier.",), "resnet": ("fc.",), "convnet": ("fc.",)}


def check_backbone_name(name: str) -> None:
    """Raise a ValueError naming the known backbones when ``name`` is not one of them."""
    if name in TORCHVISION_BACKBONES or name == "linear" or _RESNET.match(name) or _CONVNET.match(name):
        return
    raise ValueError(f"model.backbone: unknown backbone {name!r}; expected one of: {', '.join(KNOWN_BACKBONES)}")


def build_backbone(
    name: str,
    num_classes: int,
    image_size: int = 32,
    bn_momentum: float | None = 0.1,
    feature_dim: int | None = None,
) -> nn.Module:
    """Build network ``name`` with a freshly initialised ``num_classes``-way head.

    Args:
        name: backbone name (see module docstring).
        num_classes: size of the classification head.
        image_size: input side in pixels (only the ConvNet head depends on it).
        bn_momentum: BatchNorm momentum for every BN layer; torchvision's MobileNetV3 uses 0.01, which leaves
            the running statistics useless after a few hundred steps. ``None`` keeps each model's own value.
        feature_dim: input size of the ``linear`` backbone (feature vectors).
    """
    check_backbone_name(name)
    if name == "linear":
        if not feature_dim:
            raise ValueError("backbone 'linear' needs the feature size (model.feature_dim, linked from data)")
        return StandardisedLinear(feature_dim, num_classes)
    if name in TORCHVISION_BACKBONES:
        net = TORCHVISION_BACKBONES[name](weights=None)
        replace_head(net, num_classes)
    elif match := _RESNET.match(name):
        net = CifarResNet(depth=int(match[1]), width=int(match[2]), num_classes=num_classes)
    else:
        net = ConvNet(width=int(_CONVNET.match(name)[1]), num_classes=num_classes, image_size=image_size)
    if bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return net


def head_layer(net: nn.Module) -> nn.Linear:
    """Return the final linear layer of a registry network."""
    if hasattr(net, "fc"):
        return net.fc
    return net.classifier[-1]


def replace_head(net: nn.Module, num_classes: int) -> None:
    """Swap the final linear layer for a new ``num_classes``-way one."""
    old = head_layer(net)
    new = nn.Linear(old.in_features, num_classes)
    if hasattr(net, "fc"):
        net.fc = new
    else:
        net.classifier[-1] = new


def _head_prefixes(name: str) -> tuple[str, ...]:
    family = next(f for f in _HEAD_PREFIXES if name.startswith(f))
    return _HEAD_PREFIXES[family]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; accept plain state dicts and Lightning checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: file {path} does not exist; give a local .pth/.ckpt state dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unpickling error types
        raise ValueError(
            f"model.weights: {path} is not a PyTorch state dict readable with weights_only=True ({err})"
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        # A Lightning checkpoint of an ImageClassifier: its network lives under "model.".
        obj = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        found = type(obj).__name__ if not isinstance(obj, Mapping) else "a mapping that is not str -> Tensor"
        raise ValueError(f"model.weights: {path} must hold a state dict (parameter name -> tensor); found {found}")
    return dict(obj)


def load_weights(net: nn.Module, name: str, path: str | Path) -> None:
    """Load pretrained weights into ``net``; head weights of another class count are skipped.

    Every non-head parameter must be present with the right shape, else a ValueError lists the differences.
    """
    state = read_state_dict(path)
    own = net.state_dict()
    heads = _head_prefixes(name)
    usable = {}
    for key, value in state.items():
        if key.startswith(heads) and (key not in own or own[key].shape != value.shape):
            continue  # an ImageNet or other-task head; ours stays freshly initialised
        usable[key] = value
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in usable.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in usable and not k.startswith(heads)]
    unexpected = [k for k in usable if k not in own]
    if mismatched or missing or unexpected:
        parts = []
        for label, items in (("shape mismatches", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise ValueError(f"model.weights: {path} does not fit backbone {name!r}: " + "; ".join(parts))
    net.load_state_dict(usable, strict=False)
