"""Frozen embedding networks for feature extraction, built from a backbone spec.

Specs:
  * a torchvision name (``TORCHVISION_BACKBONES``) with weights 'imagenet', a local state-dict path or None
    (random init). The embedding is the pooled pre-logits vector: mobilenet_v2 1280, mobilenet_v3_small 576,
    mobilenet_v3_large 960 (the pooled features *before* the classifier's first Linear + Hardswish), resnet18
    512, resnet50 2048.
  * ``hf:<local folder>``: a Hugging Face transformers vision model. The embedding is ``pooler_output`` when the
    model has one (DINOv2: the layer-normed CLS token, equal to timm's ``forward_head(pre_logits=True)``), else
    the mean of ``last_hidden_state``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lightning_modules.networks.factory import TORCHVISION_BACKBONES, read_state_dict
from lightning_modules.pretrained import resolve_weights
from tools.files import file_sha256

# Same values as datamodules.transforms; repeated so networks/ stays free of Lightning imports.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_PREFIX = "hf:"
HF_CONFIG = "config.json"
HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
_HEAD_ATTR = {"mobilenet": "classifier", "resnet": "fc"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class FeatureBackbone:
    """A frozen network mapping normalised images (B, 3, H, W) to embeddings (B, feature_dim)."""

    net: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tag: str  # short folder name, e.g. mobilenet_v2-imagenet
    weight_files: list[Path]  # what the weights were read from (empty for random init)


def weights_sha256(files: list[Path]) -> str | None:
    """sha256 of a weights file (of the per-file hashes in order when there are several); None for none."""
    if not files:
        return None
    hashes = [file_sha256(p) for p in files]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()


def build_feature_backbone(backbone: str, weights: str | None, resolution: int = 224) -> FeatureBackbone:
    """Build the frozen embedding network of ``backbone`` (see module docstring) in eval mode.

    ``resolution`` is the input side used to measure an ``hf:`` model's embedding size.
    """
    if backbone.startswith(HF_PREFIX):
        if weights not in (None, "imagenet"):
            raise ValueError(
                f"model.weights={weights!r}: an {HF_PREFIX} backbone reads its weights from its folder; "
                "leave model.weights unset (null)"
            )
        built = _hf_backbone(Path(backbone[len(HF_PREFIX) :]).expanduser(), resolution)
    elif backbone in TORCHVISION_BACKBONES:
        built = _torchvision_backbone(backbone, weights)
    else:
        raise ValueError(
            f"model.backbone: {backbone!r} is not a feature backbone; expected one of "
            f"{', '.join(TORCHVISION_BACKBONES)} or {HF_PREFIX}<local Hugging Face folder>"
        )
    built.net.eval().requires_grad_(False)
    return built


def _torchvision_backbone(name: str, weights: str | None) -> FeatureBackbone:
    net = TORCHVISION_BACKBONES[name](weights=None)
    files: list[Path] = []
    if weights is not None:
        path = resolve_weights(weights, name)
        _load_strict(net, name, path)
        files = [path]
    head_attr = _HEAD_ATTR[next(f for f in _HEAD_ATTR if name.startswith(f))]
    head = getattr(net, head_attr)
    dim = next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features  # the head's first Linear
    setattr(net, head_attr, nn.Identity())  # forward now ends at the pooled, flattened features
    net = net.to(memory_format=torch.channels_last)  # about 2x faster convolutions on the CPU (measured)
    label = "random" if weights is None else ("imagenet" if weights == "imagenet" else files[0].stem)
    return FeatureBackbone(net, dim, IMAGENET_MEAN, IMAGENET_STD, f"{name}-{_safe(label)}", files)


def _load_strict(net: nn.Module, name: str, path: Path) -> None:
    """Load a full-model state dict: every key (classifier included) and no other; only head shapes may differ."""
    state = read_state_dict(path)
    own = net.state_dict()
    head = _HEAD_ATTR[next(f for f in _HEAD_ATTR if name.startswith(f))] + "."
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and not k.startswith(head) and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched))
            if items
        ]
        raise ValueError(f"model.weights: {path} does not fit backbone {name!r}: " + "; ".join(parts))
    # The head is dropped afterwards, so a head of another class count (a fine-tuned classifier) is fine.
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)}, strict=False)


class HFEmbedding(nn.Module):
    """A transformers vision model returning one vector per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``pooler_output`` when there is one, else the mean over tokens (or over space for CNN maps)."""
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=images.to(dtype))
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1).float()  # CNN poolers give (B, C, 1, 1)
        hidden = out.last_hidden_state
        return (hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)).float()


def check_hf_folder(folder: Path) -> list[Path]:
    """The weight files of a local Hugging Face folder, or a FileNotFoundError saying what is missing."""
    expected = f"{HF_CONFIG} and one of {', '.join(HF_WEIGHT_FILES)}"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model.backbone: Hugging Face folder {folder} does not exist; it must hold {expected} "
            "(save one with save_pretrained; nothing is downloaded)"
        )
    if not (folder / HF_CONFIG).is_file():
        raise FileNotFoundError(f"model.backbone: {folder} has no {HF_CONFIG}; expected {expected}")
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            if not name.endswith(".index.json"):
                return [folder / name]
            shards = sorted(set(json.loads((folder / name).read_text()).get("weight_map", {}).values()))
            return [folder / name, *(folder / s for s in shards)]
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise FileNotFoundError(
        f"model.backbone: {folder} has {HF_CONFIG} but no weights file; expected one of "
        f"{', '.join(HF_WEIGHT_FILES)} (found: {found})"
    )


def _hf_backbone(folder: Path, resolution: int) -> FeatureBackbone:
    files = check_hf_folder(folder)  # before transformers: its own errors for local folders are vague
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    net = HFEmbedding(model).eval()
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        config = json.loads(processor.read_text())
        mean = tuple(config.get("image_mean", mean))
        std = tuple(config.get("image_std", std))
    # The embedding size is not named the same way across architectures: measure it once.
    with torch.inference_mode():
        dim = net(torch.zeros(1, 3, resolution, resolution)).shape[1]
    return FeatureBackbone(net, int(dim), mean, std, f"hf-{_safe(folder.resolve().name)}", files)


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "weights"
