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


# --------------------------------------------------------------------------- include_ids / exclude_ids


def _ids_file(path: Path, ids: list[str]) -> str:
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def test_include_ids_keeps_exactly_the_listed_images(tmp_path: Path) -> None:
    captions = write_captions(tmp_path, n=6)
    # Blank lines and surrounding spaces are ignored; the data set keeps the captions file's order.
    (tmp_path / "keep.txt").write_text("x4\n\n  x1 \nx2\n")
    dm = CaptionedImageDataModule(str(captions), include_ids=str(tmp_path / "keep.txt"), resolution=16)
    assert dm.train_example_ids() == ["x1", "x2", "x4"]
    assert [Path(r["path"]).name for r in dm.records] == ["1.png", "2.png", "4.png"]
    dm.setup("fit")
    assert len(dm.train_dataset) == 3
    assert dm.hparams.include_ids == str(tmp_path / "keep.txt")


def test_exclude_ids_drops_the_listed_images(tmp_path: Path) -> None:
    captions = write_captions(tmp_path, n=6)
    # An id of another split (or unknown) in the exclude list is harmless as long as one id matches.
    drop = _ids_file(tmp_path / "drop.txt", ["x0", "x3", "v0", "elsewhere"])
    dm = CaptionedImageDataModule(str(captions), exclude_ids=drop, resolution=16)
    assert dm.train_example_ids() == ["x1", "x2", "x4", "x5"]
    dm.setup("fit")
    assert len(dm.train_dataset) == 4
    # Without either option every train image is used.
    assert CaptionedImageDataModule(str(captions)).train_example_ids() == [f"x{i}" for i in range(6)]


def test_include_and_exclude_together(tmp_path: Path) -> None:
    captions = write_captions(tmp_path, n=6)
    keep = _ids_file(tmp_path / "keep.txt", ["x0", "x1", "x2", "x3"])
    drop = _ids_file(tmp_path / "drop.txt", ["x1", "x5"])
    dm = CaptionedImageDataModule(str(captions), include_ids=keep, exclude_ids=drop)
    assert dm.train_example_ids() == ["x0", "x2", "x3"]
    # Excluding everything that was included leaves nothing: an error, not an empty data set.
    with pytest.raises(ValueError, match=r"no image .* is left"):
        CaptionedImageDataModule(str(captions), include_ids=drop, exclude_ids=drop)


def test_include_trained_ids_of_a_teacher_and_exclude_them_for_the_base(tmp_path: Path) -> None:
    """The TCKR use: the teacher's trained_ids.txt selects the private fine-tune set and its complement."""
    captions = write_captions(tmp_path, n=6)
    teacher = _ids_file(tmp_path / "trained_ids.txt", ["x5", "x1", "x3"])
    private = CaptionedImageDataModule(str(captions), include_ids=teacher).train_example_ids()
    public = CaptionedImageDataModule(str(captions), exclude_ids=teacher).train_example_ids()
    assert sorted(private) == ["x1", "x3", "x5"]
    assert not set(private) & set(public)
    assert sorted(private + public) == [f"x{i}" for i in range(6)]


@pytest.mark.parametrize("option", ["include_ids", "exclude_ids"])
def test_id_file_missing_or_empty(tmp_path: Path, option: str) -> None:
    captions = write_captions(tmp_path)
    with pytest.raises(ValueError) as err:
        CaptionedImageDataModule(str(captions), **{option: str(tmp_path / "absent.txt")})
    assert f"data.{option}" in str(err.value) and "does not exist" in str(err.value)
    assert "absent.txt" in str(err.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError) as err:
        CaptionedImageDataModule(str(captions), **{option: str(empty)})
    assert f"data.{option}" in str(err.value) and "lists no ids" in str(err.value)


def test_include_id_without_caption_is_an_error(tmp_path: Path) -> None:
    captions = write_captions(tmp_path)  # train ids x0..x3, val id v0
    keep = _ids_file(tmp_path / "keep.txt", ["x0", "nope1", "x2", "v0", "nope2"])
    with pytest.raises(ValueError) as err:
        CaptionedImageDataModule(str(captions), include_ids=keep)
    msg = str(err.value)
    assert "data.include_ids" in msg
    assert "3 of the 5 ids" in msg  # v0 is captioned, but for the val split, not the train split
    assert "nope1" in msg and "v0" in msg and "nope2" in msg
    assert "captions.jsonl" in msg


def test_exclude_list_matching_nothing_is_an_error(tmp_path: Path) -> None:
    captions = write_captions(tmp_path)
    drop = _ids_file(tmp_path / "drop.txt", ["other/a.png", "other/b.png"])
    with pytest.raises(ValueError) as err:
        CaptionedImageDataModule(str(captions), exclude_ids=drop)
    msg = str(err.value)
    assert "data.exclude_ids" in msg and "none of the 2 ids" in msg and "nothing would be excluded" in msg
