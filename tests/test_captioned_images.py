"""CaptionedImageDataModule: captions.jsonl -> {pixel_values in [-1, 1], prompt} batches for TextToImageDiffusion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.captioned_images import CaptionedImageDataModule


def write_captions(root: Path, n: int = 4, missing: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        path = root / "img" / f"{i}.png"
        if not (missing and i == n - 1):
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
        cls = ["cat", "dog"][i % 2]
        record = {"id": f"x{i}", "split": "train", "path": f"img/{i}.png", "label": i % 2, "class": cls}
        lines.append(json.dumps({**record, "caption": f"a {cls} on grass"}))
    lines.append(
        json.dumps({"id": "v0", "split": "val", "path": "nowhere.png", "label": 0, "class": "cat", "caption": "x"})
    )
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "captions.jsonl"


def test_batches_and_prompts(tmp_path: Path) -> None:
    dm = CaptionedImageDataModule(str(write_captions(tmp_path)), resolution=16, batch_size=2)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert dm.prompts[1] == "dog: a dog on grass"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert len(batch["prompt"]) == 2 and all(isinstance(p, str) for p in batch["prompt"])
    template = CaptionedImageDataModule(str(tmp_path / "captions.jsonl"), prompt_type="template", resolution=16)
    assert template.prompts[0] == "a photo of a cat"
    assert (
        CaptionedImageDataModule(str(tmp_path / "captions.jsonl"), prompt_type="caption").prompts[0] == "a cat on grass"
    )


def test_missing_image_is_an_error(tmp_path: Path) -> None:
    captions = write_captions(tmp_path, missing=True)
    with pytest.raises(ValueError, match=r"id x3.*3\.png"):
        CaptionedImageDataModule(str(captions))
    with pytest.raises(ValueError, match="does not exist"):
        CaptionedImageDataModule(str(tmp_path / "other.jsonl"))


def test_trains_diffusion(tmp_path: Path, one_torch_thread) -> None:
    from lightning import Trainer

    from lightning_modules.diffusion import TextToImageDiffusion
    from tests.test_diffusion import tiny_config

    dm = CaptionedImageDataModule(str(write_captions(tmp_path)), resolution=16, batch_size=2)
    model = TextToImageDiffusion(components=tiny_config(), prompt_dropout=0.2)
    trainer = Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, dm)
    assert trainer.global_step == 2
