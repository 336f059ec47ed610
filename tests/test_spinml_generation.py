"""SpinML segment generation at levels L0/L1/L2 (SegmentGeneration, SegmentRequestDataModule, SegmentLevelWriter),
on tiny config-built models (CPU, offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Trainer
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The CPU study's generator shape (pixel space, 1 channel, no VAE), smaller.
PIXEL = {
    "seed": 0,
    "unet": dict(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=[16, 32],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "text_encoder": dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1, projection_dim=32
    ),
    "tokenizer": {"words": ["sitting", "eating", "sleeping", "playing", "dog"], "max_length": 8},
    "scheduler": {"kind": "ddpm", "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"},
}
LATENT = {
    **PIXEL,
    "unet": dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32,
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        norm_num_groups=32,
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=32,
        sample_size=16,
    ),
}


def make(**kw):
    from lightning_modules.spinml_generation import SegmentGeneration

    kw.setdefault("components", PIXEL)
    kw.setdefault("finetune", "full")
    kw.setdefault("sampler", "ddim")
    kw.setdefault("num_inference_steps", 4)
    kw.setdefault("guidance_scale", 2.0)
    return SegmentGeneration(**kw).eval()


@pytest.fixture()
def husky(tmp_path: Path) -> Path:
    """real/raw + real/raw_split for 2 images (48 px, a bright square object on a textured background)."""
    root = tmp_path / "husky"
    rng = np.random.default_rng(0)
    for name, (y, x) in (("a_sitting_1", (10, 12)), ("b_eating_2", (16, 8))):
        image = (rng.random((48, 48, 3)) * 60 + 40).astype(np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        mask[y : y + 24, x : x + 22] = 255
        image[mask > 0] = (220, 180, 60)
        fg = np.where(mask[:, :, None] > 0, image, 0).astype(np.uint8)
        bg = np.where(mask[:, :, None] > 0, 0, image).astype(np.uint8)
        for folder, pixels in (
            ("raw", image),
            ("raw_split/foreground", fg),
            ("raw_split/background", bg),
            ("raw_split/mask", mask),
        ):
            (root / "real" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "real" / folder / f"{name}.png")
    return root


def requests(root: Path, **kw):
    from datamodules.spinml_requests import SegmentRequestDataModule

    kw.setdefault("resolution", 16)
    kw.setdefault("batch_size", 3)
    return SegmentRequestDataModule(root=str(root), **kw)


def batch_of(dm, part: str, level: int) -> dict:
    from torch.utils.data import default_collate

    ds = dm.predict_dataloader().dataset
    return default_collate(
        [ds[i] for i in range(len(ds)) if ds.items[i]["part"] == part and ds.items[i]["level"] == level]
    )


def test_levels_share_one_model_and_keep_their_invariants(husky: Path) -> None:
    dm = requests(husky)
    model = make(allow_untrained_controlnet=True, strength=0.5)
    b0, b1, b2 = (batch_of(dm, "foreground", lv) for lv in (0, 1, 2))
    assert b0["seed"].tolist() == b1["seed"].tolist() == b2["seed"].tolist()  # same noise at every level
    prompts, seeds = list(b0["prompt"]), b0["seed"].tolist()
    l0 = model.generate_level(prompts, seeds, 0)
    # L0 is exactly the TCKR generator; an untrained from-UNet ControlNet is an exact no-op (L1 == L0).
    assert torch.equal(l0, model.generate(prompts, seeds))
    assert torch.equal(model.generate_level(prompts, seeds, 1, guide=b1["guide"]), l0)
    l2 = model.generate_level(prompts, seeds, 2, segment=b2["segment"])
    assert l2.shape == l0.shape == (2, 3, 16, 16)
    gray = b2["segment"].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    assert (l2 - gray).abs().mean() < (l0 - gray).abs().mean()  # img2img stays near the real segment
    assert torch.equal(model.generate_level(prompts, seeds, 2, segment=b2["segment"]), l2)  # reproducible
    with pytest.raises(ValueError, match="expected segment of shape"):
        model.generate_level(prompts, seeds, 2)
    strict = make()
    with pytest.raises(ValueError, match="L1 needs a trained ControlNet"):
        strict.generate_level(prompts, seeds, 1, guide=b1["guide"])


def test_controlnet_that_does_not_fit_the_vae_is_refused_before_generating(tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    from lightning_modules.spinml_controlnet import check_controlnet

    pixel = make()
    assert list(pixel.controlnet.config.conditioning_embedding_out_channels) == [16]  # full resolution
    wrong = ControlNetModel.from_unet(pixel.unet, conditioning_embedding_out_channels=(16, 32))
    wrong.save_pretrained(str(tmp_path / "cn"))
    with pytest.raises(ValueError, match=r"downsamples the control image 2x, but the model works in pixel space"):
        make(controlnet_path=str(tmp_path / "cn"))
    with pytest.raises(FileNotFoundError, match="not a ControlNet folder"):
        make(controlnet_path=str(tmp_path / "nowhere"))
    latent = make(components=LATENT)  # 2x VAE: two embedding stages
    assert list(latent.controlnet.config.conditioning_embedding_out_channels) == [16, 32]
    sd_default = ControlNetModel.from_unet(latent.unet)  # SD's 8x embedding
    with pytest.raises(
        ValueError, match=r"downsamples the control image 8x, but the model works in a VAE that downsamples 2x"
    ):
        check_controlnet(sd_default, latent.unet, latent.latent_scale, "test")
    pipes = latent.pipelines()  # from_pipe: the same loaded modules in every level's pipeline
    assert pipes[1].unet is pipes[2].unet is latent.unet and pipes[1].controlnet is latent.controlnet
    assert pipes[2].vae is latent.vae and pipes[2].text_encoder is latent.text_encoder


def test_controlnet_finetune_trains_only_the_control_branch(husky: Path, tmp_path: Path) -> None:
    dm = requests(husky, batch_size=4)
    model = make(finetune="controlnet", lr=5e-3)
    trainable = model.trainable_keys
    assert trainable and all(k.startswith("controlnet.") for k in trainable)
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    trainer = Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    model.eval()
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in unet_before.items())
    b1 = batch_of(dm, "foreground", 1)
    prompts, seeds = list(b1["prompt"]), b1["seed"].tolist()
    l0 = model.generate_level(prompts, seeds, 0)
    l1 = model.generate_level(prompts, seeds, 1, guide=b1["guide"])
    assert not torch.equal(l1, l0)  # no longer a no-op
    out = model.save_adapter(tmp_path / "controlnet")
    loaded = make(controlnet_path=str(out))
    assert torch.equal(loaded.generate_level(prompts, seeds, 1, guide=b1["guide"]), l1)
    assert loaded.generation_config()["controlnet_sha256"]


def test_masked_loss_ignores_the_cut_out_region() -> None:
    from lightning_modules.networks.diffusion import masked_mse

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    plain = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(masked_mse(pred, target, None), plain)
    assert torch.allclose(masked_mse(pred, target, torch.ones(2, 1, 8, 8)), plain)
    keep = torch.ones(2, 1, 8, 8)
    keep[0, :, 2:6, 2:6] = 0
    keep[1] = 0  # nothing kept: the sample contributes 0
    other = target.clone()
    other[0, :, 2:6, 2:6] += 5.0  # only the left-out pixels change
    loss = masked_mse(pred, target, keep)
    assert torch.equal(loss, masked_mse(pred, other, keep)) and loss[1] == 0
    inside = keep[0, 0].bool()
    assert torch.allclose(loss[0], ((pred[0] - target[0]) ** 2)[:, inside].mean())
    # an image-size mask is area-resized to the latents: a 2x2 block half kept weighs its latent by 1/2
    half = torch.ones(1, 1, 8, 8)
    half[0, 0, :, :3] = 0  # latent column 0 left out, column 1 half kept, columns 2-3 kept
    sq = (pred[:1, :, :4, :4] - target[:1, :, :4, :4]) ** 2
    expected = (0.5 * sq[..., 1].sum() + sq[..., 2:].sum()) / (3 * 4 * 2.5)
    assert torch.allclose(masked_mse(pred[:1, :, :4, :4], target[:1, :, :4, :4], half), expected)
    with pytest.raises(ValueError, match="loss_mask: expected"):
        masked_mse(pred, target, torch.ones(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        masked_mse(pred, target, torch.full((2, 1, 8, 8), 2.0))


def test_training_pairs_mask_the_background_hole(husky: Path) -> None:
    from datamodules.spinml_layout import load_mask

    dm = requests(husky, batch_size=4)
    pairs = dm.train_dataloader().dataset
    seen = set()
    for i in range(len(pairs)):
        item, request = pairs[i], pairs.requests.items[i]
        keep = item["loss_mask"][0]
        if request["part"] == "foreground":
            assert torch.equal(keep, torch.ones(16, 16))
        else:  # 0 wherever the object covers any pixel of the 48 -> 16 px cell (3 x 3 blocks), 1 elsewhere
            mask = load_mask(husky / "real" / "raw_split" / "mask" / request["name"]) > 127
            touched = mask.reshape(16, 3, 16, 3).any(axis=(1, 3))
            assert torch.equal(keep, torch.from_numpy(~touched).float())
        seen.add(request["part"])
    assert seen == {"foreground", "background"}
    off = requests(husky, mask_background_loss=False).train_dataloader().dataset
    assert "loss_mask" not in off[0]


def _predict(root: Path, tmp_path: Path, **model_kw) -> tuple[Trainer, object]:
    from callbacks.spinml_writer import SegmentLevelWriter

    dm = requests(root, level_pairs=["L0_L0", "L1_L0", "L2_L0", "L2_L2"])
    model_kw.setdefault("allow_untrained_controlnet", True)
    model = make(**model_kw)
    writer = SegmentLevelWriter(output_dir=str(root / "synthetic"), mask_source="box-gmm")
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[writer],
        default_root_dir=tmp_path,
    )
    trainer.predict(model, datamodule=dm)
    return trainer, dm


def test_writer_builds_level_folders_resumes_and_refuses_other_configs(husky: Path, tmp_path: Path) -> None:
    from datamodules.spinml import SpinMLDataModule

    with pytest.raises(ValueError, match="L1 needs a trained ControlNet"):  # refused before anything is generated
        _predict(husky, tmp_path, allow_untrained_controlnet=False)
    assert not (husky / "synthetic").exists()

    _, dm = _predict(husky, tmp_path, strength=0.5)
    # (foreground L0, L1, L2) + (background L0, L2), 2 images each: every (part, level) generated once.
    assert len(dm.items) == 10
    out = husky / "synthetic"
    config = json.loads((out / "generation.json").read_text())
    assert config["complete"] and config["strength"] == 0.5 and config["canny_thresholds"] == [100, 200]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["pair"] for r in rows} == {"L0_L0", "L1_L0", "L2_L0", "L2_L2"}
    assert all(r["mask_fraction"] > 0.2 for r in rows if r["foreground_level"] > 0)  # the real 24x22 of 48x48 box
    real_mask = np.array(Image.open(husky / "real/raw_split/mask/a_sitting_1.png").resize((16, 16), Image.NEAREST))
    for pair in ("L0_L0", "L1_L0", "L2_L0", "L2_L2"):
        for part in ("foreground", "background", "mask"):
            assert sorted(p.name for p in (out / pair / part).iterdir()) == ["a_sitting_1.png", "b_eating_2.png"]
    assert np.array_equal(np.array(Image.open(out / "L1_L0/mask/a_sitting_1.png")), np.where(real_mask > 127, 255, 0))
    fg = np.array(Image.open(out / "L2_L0/foreground/a_sitting_1.png"))
    assert (fg[real_mask <= 127] == 0).all()  # object on black, like the real segments
    # L0_L0 and L1_L0 reuse the one generated background (linked, not regenerated)
    assert os.path.samefile(out / "L0_L0/background/a_sitting_1.png", out / "L1_L0/background/a_sitting_1.png")
    # SpinML's reader accepts the folder (hidden .segments/ is ignored)
    spin = SpinMLDataModule(
        root=str(husky),
        first_level="L1_L0",
        second_level="L2_L0",
        alpha=0.5,
        val_fraction=0.0,
        image_size=16,
        batch_size=2,
    )
    assert spin.levels == ["L0_L0", "L1_L0", "L2_L0", "L2_L2"]

    stamp = {p: p.stat().st_mtime_ns for p in (out / ".segments").rglob("*.png")}
    (out / ".segments/background/L2/b_eating_2.png").unlink()  # a killed run: one segment missing
    _, dm = _predict(husky, tmp_path, strength=0.5)
    again = {p: p.stat().st_mtime_ns for p in (out / ".segments").rglob("*.png")}
    changed = [p.name for p in again if again[p] != stamp.get(p)]
    assert changed == ["b_eating_2.png"] and len(dm.pending()) == 1
    with pytest.raises(FileExistsError, match=r"strength 0\.5 -> 0\.75"):
        _predict(husky, tmp_path, strength=0.75)


def test_requests_validate_inputs(husky: Path) -> None:
    with pytest.raises(ValueError, match="does not parse"):
        requests(husky, level_pairs=["L1-L0"])
    with pytest.raises(ValueError, match="outside 0, 1, 2"):
        requests(husky, level_pairs=["L3_L0"])
    with pytest.raises(ValueError, match=r"foreground_template: expected a '\{class_name\}' placeholder"):
        requests(husky, foreground_template="a photo of a dog")
    for bad in ("a {place} without a {class_name}", "a {class_name"):
        with pytest.raises(ValueError, match="background_template"):
            requests(husky, background_template=bad)
    free = requests(husky, background_template="a view")  # class-free backgrounds are allowed
    assert {i["prompt"] for i in free.items if i["part"] == "background"} == {"a view"}
    (husky / "real/raw_split/mask/b_eating_2.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask segment"):
        requests(husky)


def test_dpm_sampler_img2img_and_example_config_parses(husky: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    from cli import main

    dm = requests(husky)
    b2 = batch_of(dm, "background", 0)
    model = make(sampler="dpm", strength=0.75, allow_untrained_controlnet=True)
    prompts, seeds = list(b2["prompt"]), b2["seed"].tolist()
    l2 = model.generate_level(prompts, seeds, 2, segment=b2["segment"])  # DPM-Solver started mid-schedule
    assert torch.isfinite(l2).all() and not torch.equal(l2, model.generate_level(prompts, seeds, 0))
    with pytest.raises(SystemExit) as done:
        main(
            [
                "predict",
                "--config",
                str(Path(__file__).parents[1] / "configs/spinml/generate_cpu.yaml"),
                "--print_config",
            ]
        )
    assert done.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].endswith("SegmentGeneration")
    assert config["data"]["init_args"]["level_pairs"] == ["L0_L0", "L1_L0", "L2_L0"]
