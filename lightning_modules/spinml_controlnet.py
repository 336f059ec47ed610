"""ControlNet helpers of SegmentGeneration: default conditioning-embedding size, the fit check, local loading.

A ControlNet's conditioning embedding turns the control image (e.g. a Canny map at the output size) into features
on the UNet's input grid with one stride-2 convolution per stage after the first, so it downsamples
2^(stages - 1) times; that must equal the VAE's factor (1 in pixel space), or the residuals do not fit and diffusers
fails only mid-sampling with a tensor-size mismatch (offline_models.md §1.3).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def embedding_channels(latent_scale: int) -> list[int]:
    """Default ControlNet conditioning-embedding channels for a model whose VAE downsamples ``latent_scale``x
    (SD's (16, 32, 96, 256) for 8x, (16, 32) for 2x, (16,) = full resolution for pixel space)."""
    stages = int(math.log2(latent_scale)) + 1
    return ([16, 32, 96, 256] + [256] * 8)[:stages]


def check_controlnet(controlnet: Any, unet: Any, latent_scale: int, where: str) -> None:
    """Refuse a ControlNet that does not fit the UNet or whose conditioning embedding does not downsample the
    control image to the latent grid (the error diffusers would raise only mid-sampling, as a tensor mismatch)."""
    cfg, ucfg = controlnet.config, unet.config
    emb = list(cfg.conditioning_embedding_out_channels)
    factor = 2 ** (len(emb) - 1)
    space = "pixel space (no VAE)" if latent_scale == 1 else f"a VAE that downsamples {latent_scale}x"
    if factor != latent_scale:
        raise ValueError(
            f"{where}: the ControlNet's conditioning embedding {emb} downsamples the control image {factor}x, but "
            f"the model works in {space}; its edge features would not fit the UNet's input grid. A ControlNet "
            f"for this model needs {int(math.log2(latent_scale)) + 1} conditioning_embedding_out_channels (e.g. "
            f"{embedding_channels(latent_scale)})"
        )
    for key in ("in_channels", "block_out_channels", "cross_attention_dim", "down_block_types", "layers_per_block"):
        mine, theirs = getattr(cfg, key, None), getattr(ucfg, key, None)
        if mine is not None and theirs is not None and list(_seq(mine)) != list(_seq(theirs)):
            raise ValueError(
                f"{where}: ControlNet {key} {mine} differs from the UNet's {theirs}; it is not this model's"
            )


def _seq(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) else [value]


def load_controlnet(path: str | Path) -> Any:
    """A diffusers ``ControlNetModel`` from a local folder (``config.json`` + weights); nothing is downloaded."""
    from diffusers import ControlNetModel

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.controlnet_path: {folder} is not a ControlNet folder (no config.json); put a diffusers "
            "ControlNetModel there (save_pretrained / the AdapterExport of a `finetune: controlnet` fit), e.g. an "
            "SD2-compatible Canny ControlNet for SD2 bases"
        )
    return ControlNetModel.from_pretrained(str(folder), local_files_only=True)
