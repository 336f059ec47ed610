"""FeatureExtractor: frozen foundation-model embeddings of an image dataset (the CVAE study's ``create_db``).

Predict-only: ``synthpriv predict`` with ``FeatureWriter`` writes one npz per split plus a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule

from lightning_modules.networks.feature_backbones import build_feature_backbone, weights_sha256

PREDICT_ONLY = (
    "FeatureExtractor is predict-only (a frozen backbone has nothing to train); "
    "run `synthpriv predict` with the FeatureWriter callback"
)


class FeatureExtractor(LightningModule):
    """Frozen embedding network; ``predict_step`` returns one float32 vector per image.

    Images must arrive as [0, 1] RGB tensors, i.e. the data module is configured with ``normalize: false``:
    the extractor resizes them on the device to ``resolution`` (bicubic, antialiased) and normalises them with
    the backbone's own mean/std. Batches are dicts with ``image``, ``label`` and ``index`` as produced by
    ``ImageFolderDataModule``.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        weights: str | None = "imagenet",
        resolution: int = 224,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        image_size: int = 32,
    ) -> None:
        """Build the frozen backbone.

        Args:
            backbone: mobilenet_v2 (1280-d), mobilenet_v3_small (576-d) or mobilenet_v3_large (960-d) (pooled
                features before the classifier), resnet18 (512-d), resnet50 (2048-d), or hf:<local folder> for
                a Hugging Face transformers vision model (pooler_output, else mean of last_hidden_state; mean/std
                from the folder's preprocessor_config.json, else ImageNet's).
            weights: torchvision backbones: 'imagenet' (torchvision's file from the local cache), a local
                state-dict path (keys must match the full model, classifier included; the head is dropped),
                or null for random init (tests). hf: backbones read their folder and ignore 'imagenet'.
            resolution: side in pixels the images are resized to before the backbone.
            num_classes: number of classes (linked from the data module; recorded).
            class_names: class names in label order (linked from the data module; written to the manifest).
            image_size: side of the images the data module delivers (linked from the data module; recorded).
        """
        super().__init__()
        self.save_hyperparameters()
        if resolution < 8:
            raise ValueError(f"model.resolution must be at least 8 pixels; got {resolution}")
        built = build_feature_backbone(backbone, weights, resolution)
        self.net = built.net
        self.tag: str = built.tag
        self.feature_dim: int = built.feature_dim
        self.weight_files: list[Path] = built.weight_files
        self.register_buffer("mean", torch.tensor(built.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(built.std).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def weights_sha256(self) -> str | None:
        """sha256 of the weights file(s) read; None for random init."""
        return weights_sha256(self.weight_files)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> embeddings (B, feature_dim) float32."""
        if not images.is_floating_point():
            raise ValueError(f"FeatureExtractor expects float images in [0, 1]; got dtype {images.dtype}")
        low, high = float(images.min()), float(images.max())
        if low < -0.01 or high > 1.01:
            raise ValueError(
                f"FeatureExtractor got inputs in [{low:.3g}, {high:.3g}], i.e. already normalised; it normalises "
                "with the backbone's own mean/std, so set data.normalize: false"
            )
        side = self.hparams.resolution
        if images.shape[-2:] != (side, side):
            images = F.interpolate(images, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
            images = images.clamp(0.0, 1.0)  # bicubic overshoots; PIL-style resizing stays within [0, 1]
        images = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net(images).float()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Embeddings with the batch's labels and dataset indices."""
        with torch.inference_mode():
            embeddings = self(batch["image"])
        return {"embeddings": embeddings, "label": batch["label"], "index": batch["index"]}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Refuse: nothing to train."""
        raise ValueError(PREDICT_ONLY)

    def setup(self, stage: str) -> None:
        """Refuse every stage but predict early, before any data is loaded."""
        if str(getattr(stage, "value", stage)) != "predict":
            raise ValueError(PREDICT_ONLY)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: the backbone's BatchNorm/dropout must never switch to training behaviour."""
        return super().train(False)

    def configure_optimizers(self) -> None:
        """Refuse: nothing to train."""
        raise ValueError(PREDICT_ONLY)
