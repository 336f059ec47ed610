"""TextToImageDiffusion and its components, on tiny config-built models (no weights, CPU)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]

UNET = dict(
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
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=[32, 64],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    norm_num_groups=32,
    sample_size=16,
)
TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    hidden_act="gelu",
    projection_dim=32,
)


def tiny_config(prediction_type: str = "epsilon", vae: bool = True) -> dict:
    unet = dict(UNET)
    if not vae:
        unet.update(in_channels=3, out_channels=3, sample_size=16)
    return {
        "unet": unet,
        "vae": dict(VAE) if vae else None,
        "text_encoder": dict(TEXT),
        "tokenizer": {"words": ["cat", "dog", "bird"], "max_length": 8},
        "scheduler": {
            "kind": "ddpm",
            "prediction_type": prediction_type,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
        },
    }


class FixedBatch(Dataset):
    """The same 4 images and prompts every epoch (the loss must fall on them)."""

    def __init__(self, n: int = 4, size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
        self.images = torch.nn.functional.interpolate(base, size=size, mode="nearest")
        self.prompts = ["a photo of a cat", "a dog", "a red bird", "a cat and a dog"][:n]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "prompt": self.prompts[i]}


def loader(size: int = 16) -> DataLoader:
    return DataLoader(FixedBatch(size=size), batch_size=4, shuffle=False)


def trainer(tmp_path: Path, steps: int, **kw) -> Trainer:
    return Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def make(**kw):
    from lightning_modules.diffusion import TextToImageDiffusion

    kw.setdefault("components", tiny_config())
    return TextToImageDiffusion(**kw)


def test_import_is_lazy() -> None:
    code = "import sys, cli, lightning_modules; print('diffusers' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_build_save_load_roundtrip(tmp_path: Path, one_torch_thread) -> None:
    from lightning_modules.networks.diffusion import build_components, load_components, save_components

    parts = build_components(tiny_config("v_prediction"))
    assert parts["scheduler_config"]["prediction_type"] == "v_prediction"
    save_components(parts, tmp_path / "sd")
    loaded = load_components(tmp_path / "sd")
    assert loaded["scheduler_config"]["prediction_type"] == "v_prediction"
    for name in ("unet", "vae", "text_encoder"):
        a, b = parts[name].state_dict(), loaded[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = parts["tokenizer"](["a cat"]).input_ids
    assert loaded["tokenizer"](["a cat"]).input_ids == ids
    # a latent model's folder is a diffusers pipeline folder too (model_index.json, no safety checker)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    assert pipe.safety_checker is None and torch.equal(pipe.unet.conv_in.weight, parts["unet"].conv_in.weight)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # same config, same seed -> same weights
    again = build_components(tiny_config("v_prediction"))
    assert torch.equal(again["unet"].conv_in.weight, parts["unet"].conv_in.weight)

    (tmp_path / "sd" / "unet" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"unet/config\.json"):
        load_components(tmp_path / "sd")
    with pytest.raises(ValueError, match="not a folder"):
        load_components(tmp_path / "nowhere")


def test_model_from_folder_pixel_space(tmp_path: Path, one_torch_thread) -> None:
    from lightning_modules.networks.diffusion import build_components, save_components

    save_components(build_components(tiny_config(vae=False)), tmp_path / "px")
    model = make(components=None, pretrained_model_path=str(tmp_path / "px"))
    assert model.vae is None and model.latent_scale == 1
    batch = next(iter(loader()))
    assert torch.isfinite(model.shared_step(batch))
    with pytest.raises(ValueError, match="exactly one"):
        make(pretrained_model_path=str(tmp_path / "px"))


def test_lora_params_fp32_and_frozen(one_torch_thread) -> None:
    model = make(lora_rank=4, text_encoder_lora=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(n.startswith("text_encoder.") for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not model.vae.training and not model.text_encoder.training
    full = make(finetune="full")
    assert all(p.requires_grad for p in full.unet.parameters())
    assert not any(p.requires_grad for p in full.text_encoder.parameters())
    # bf16-mixed: frozen weights go to bf16, trainable LoRA weights stay fp32
    model.trainer = trainer(Path("."), 1, precision="bf16-mixed")
    model.setup("fit")
    assert model.unet.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_target_matches_scheduler(prediction_type: str, one_torch_thread) -> None:
    model = make(components=tiny_config(prediction_type), snr_gamma=5.0)
    lat, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    expected = noise if prediction_type == "epsilon" else model.noise_scheduler.get_velocity(lat, noise, t)
    assert torch.equal(model.target(lat, noise, t), expected)
    if prediction_type == "v_prediction":
        a = model.noise_scheduler.alphas_cumprod[t]
        assert torch.allclose(
            expected, a.sqrt()[:, None, None, None] * noise - (1 - a).sqrt()[:, None, None, None] * lat
        )
    snr = model.noise_scheduler.alphas_cumprod[t] / (1 - model.noise_scheduler.alphas_cumprod[t])
    denom = snr + 1 if prediction_type == "v_prediction" else snr
    assert torch.allclose(model.loss_weights(t), torch.clamp(snr, max=5.0) / denom)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_lora_loss_falls_and_checkpoint(prediction_type: str, tmp_path: Path, one_torch_thread) -> None:
    seed_everything(0)
    model = make(
        components=tiny_config(prediction_type), lr=1e-2, lora_init="gaussian", noise_offset=0.05, prompt_dropout=0.1
    )
    batch = next(iter(loader()))

    def eval_loss(m) -> float:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return sum(float(m.shared_step(batch)) for _ in range(8)) / 8

    before = eval_loss(model)
    fit = trainer(tmp_path, 30)
    fit.fit(model, loader())
    after = eval_loss(model)
    assert after < before, (before, after)
    assert not model.vae.training and not model.text_encoder.training

    ckpt = tmp_path / "lora.ckpt"
    fit.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(raw["state_dict"]) == model.trainable_keys
    assert all("lora_" in k for k in raw["state_dict"])
    assert raw["optimizer_states"]

    from lightning_modules.diffusion import TextToImageDiffusion

    loaded = TextToImageDiffusion.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)

    # resume: optimiser state and step counter come back and training continues from step 30 to 32
    seed_everything(1)
    resumed = TextToImageDiffusion.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    trainer(tmp_path / "r", 32).fit(resumed, loader(), ckpt_path=ckpt)
    assert resumed.global_step == 32
    assert all(torch.isfinite(p).all() for p in resumed.parameters() if p.requires_grad)


def test_full_finetune_checkpoint_only_unet(tmp_path: Path, one_torch_thread) -> None:
    model = make(finetune="full", lr=1e-3)
    fit = trainer(tmp_path, 2)
    fit.fit(model, loader())
    fit.save_checkpoint(tmp_path / "full.ckpt")
    raw = torch.load(tmp_path / "full.ckpt", map_location="cpu", weights_only=True)
    assert raw["state_dict"] and all(k.startswith("unet.") for k in raw["state_dict"])
    assert set(raw["state_dict"]) == set(f"unet.{k}" for k in model.unet.state_dict())
    lora = make()
    with pytest.raises(ValueError, match="lacks"):
        lora.on_load_checkpoint(copy.deepcopy(raw))


def test_cached_latents_and_embeddings(one_torch_thread) -> None:
    model = make(prompt_dropout=0.5)
    batch = next(iter(loader()))
    with torch.no_grad():
        cached = {
            "latents": model.encode_images(batch["pixel_values"]),
            "prompt_embeds": model.encode_prompts(batch["prompt"]),
        }
    assert cached["latents"].shape == (4, 4, 8, 8)
    assert torch.isfinite(model.shared_step(cached))


def test_predict_seeds_independent_of_batching(one_torch_thread) -> None:
    model = make(sampler="ddim", num_inference_steps=3, guidance_scale=2.0).eval()
    batch = {
        "index": torch.tensor([0, 1, 2]),
        "prompt": ["a cat", "a dog", "a bird"],
        "label": torch.tensor([0, 1, 2]),
        "seed": torch.tensor([7, 8, 9]),
    }
    out = model.predict_step(batch, 0)
    assert out["images"].dtype == torch.uint8 and out["images"].shape == (3, 3, 16, 16)
    assert out["prompt"] == batch["prompt"] and torch.equal(out["seed"], batch["seed"])
    single = model.predict_step({k: v[1:2] for k, v in batch.items()}, 0)
    diff = (single["images"][0].int() - out["images"][1].int()).abs().max()
    assert diff <= 1
    again = model.predict_step(batch, 0)
    assert torch.equal(again["images"], out["images"])
    dpm = make(sampler="dpm", num_inference_steps=3, components=tiny_config("v_prediction")).eval()
    assert dpm.predict_step(batch, 0)["images"].shape == (3, 3, 16, 16)


def test_adapter_export_loads_in_pipeline(tmp_path: Path, one_torch_thread) -> None:
    """A LoRA with alpha != rank exported by save_adapter reloads in StableDiffusionPipeline with the same output."""
    from diffusers import StableDiffusionPipeline

    from lightning_modules.networks.diffusion import sampling_scheduler

    model = make(lora_rank=4, lora_alpha=8, lora_init="random").eval()
    fresh = make(finetune="full")  # same config and seed -> same base weights as model's frozen UNet
    model.save_adapter(tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()

    pipe = StableDiffusionPipeline(
        vae=fresh.vae,
        text_encoder=fresh.text_encoder,
        tokenizer=fresh.tokenizer,
        unet=fresh.unet,
        scheduler=sampling_scheduler(fresh.scheduler_config, "ddim"),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(tmp_path / "lora")
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    emb = model.encode_prompts(["a cat", "a dog"])
    with torch.no_grad():
        ours = model(noisy, t, emb)
        theirs = pipe.unet(noisy, t, encoder_hidden_states=emb).sample
        pipe.unload_lora_weights()
        plain = pipe.unet(noisy, t, encoder_hidden_states=emb).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)

    full = make(finetune="full")
    full.save_adapter(tmp_path / "full")
    reloaded = make(components=None, pretrained_model_path=str(tmp_path / "full"))
    assert torch.equal(reloaded.unet.conv_in.weight, full.unet.conv_in.weight)


# --------------------------------------------------------------------------- lr warm-up and EMA checkpoints


class _LrRecorder(Callback):
    """Records, before each optimiser step, how many steps were done and the learning rate."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_lr_warmup_is_linear_then_constant(tmp_path: Path, one_torch_thread) -> None:
    lr, warmup, steps = 0.01, 4, 7
    model = make(components=tiny_config(vae=False), lr=lr, lr_warmup_steps=warmup)
    recorder = _LrRecorder()
    fit = trainer(tmp_path, steps, callbacks=[recorder])
    fit.fit(model, DataLoader(FixedBatch(), batch_size=2))  # 2 batches per epoch: the schedule spans epochs
    assert sorted(recorder.lrs) == list(range(steps))
    for k in range(steps):
        assert recorder.lrs[k] == pytest.approx(lr * min(1.0, (k + 1) / warmup)), k
    assert [recorder.lrs[k] / lr for k in range(steps)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1])
    (config,) = fit.lr_scheduler_configs
    assert config.interval == "step" and config.frequency == 1
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)

    # No warm-up: a constant rate and no scheduler at all.
    plain = make(components=tiny_config(vae=False), lr=lr)
    recorder = _LrRecorder()
    fit = trainer(tmp_path / "plain", 2, callbacks=[recorder])
    fit.fit(plain, DataLoader(FixedBatch(), batch_size=2))
    assert recorder.lrs == {0: lr, 1: lr}
    assert fit.lr_scheduler_configs == []


def test_negative_lr_warmup_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lr_warmup_steps.*-1"):
        make(components=tiny_config(vae=False), lr_warmup_steps=-1)


def _trainable(model) -> dict[str, torch.Tensor]:
    keys = model.trainable_keys
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}


def _ema_fit(root: Path, model, max_epochs: int, ckpt_path: Path | None = None, extra: list | None = None):
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    from callbacks.diffusion import AdapterExport

    fit = Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[
            EMAWeightAveraging(decay=0.9),
            ModelCheckpoint(dirpath=root / "checkpoints", save_last=True),
            AdapterExport(),
            *(extra or []),
        ],
    )
    fit.fit(model, DataLoader(FixedBatch(), batch_size=2), ckpt_path=ckpt_path)
    return fit


def test_ema_checkpoint_is_trimmed_resumes_and_export_holds_ema(tmp_path: Path, one_torch_thread) -> None:
    from lightning_modules.diffusion import TextToImageDiffusion

    class RawWeights(Callback):
        """The raw (non-averaged) trainable weights after every optimiser step."""

        def __init__(self) -> None:
            self.after_step: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.after_step.append(_trainable(pl_module))

    seed_everything(0)
    model = make(components=tiny_config(vae=False), lr=1e-2, lora_init="gaussian", lr_warmup_steps=2)
    keys = model.trainable_keys
    assert keys and all("lora_" in k for k in keys)
    raw = RawWeights()
    fit = _ema_fit(tmp_path, model, max_epochs=2, extra=[raw])
    assert fit.global_step == 4 and len(raw.after_step) == 4

    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == keys
    assert set(ckpt["current_model_state"]) == keys
    assert "averaging_state" in ckpt

    # current_model_state: the raw weights after the last step; state_dict: their EMA (decay 0.9, first = copy).
    expected = dict(raw.after_step[0])
    for weights in raw.after_step[1:]:
        expected = {k: 0.9 * expected[k] + 0.1 * weights[k] for k in keys}
    for k in keys:
        assert torch.equal(ckpt["current_model_state"][k], raw.after_step[-1][k]), k
        assert torch.allclose(ckpt["state_dict"][k], expected[k], atol=1e-6), k
    assert any(not torch.allclose(ckpt["state_dict"][k], ckpt["current_model_state"][k]) for k in keys)

    # After fit the module holds the EMA weights (Lightning copies them at train end) ...
    final = _trainable(model)
    assert all(torch.equal(final[k], ckpt["state_dict"][k]) for k in keys)
    # ... so AdapterExport (at fit end, afterwards) exported the EMA weights.
    exported = _trainable(make(components=tiny_config(vae=False), adapter_path=str(tmp_path / "adapter")))
    assert set(exported) == keys
    assert all(torch.allclose(exported[k], ckpt["state_dict"][k]) for k in keys)
    assert any(not torch.allclose(exported[k], ckpt["current_model_state"][k]) for k in keys)

    # Resume from last.ckpt for one more epoch: the raw weights come back into the module and the EMA into the
    # averaged model (both refilled with the frozen weights, else the strict loads would fail).
    class AtStart(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.module = _trainable(pl_module)
            ema = next(c for c in trainer.callbacks if type(c).__name__ == "EMAWeightAveraging")
            self.average = _trainable(ema._average_model.module)

    seed_everything(1)
    fresh = make(components=tiny_config(vae=False), lr=1e-2, lora_init="gaussian", lr_warmup_steps=2)
    start = AtStart()
    resumed = _ema_fit(tmp_path / "resume", fresh, max_epochs=3, ckpt_path=last, extra=[start])
    assert resumed.current_epoch == 3 and resumed.global_step == 6
    assert all(torch.equal(start.module[k], ckpt["current_model_state"][k]) for k in keys)
    assert all(torch.equal(start.average[k], ckpt["state_dict"][k]) for k in keys)
    again = torch.load(tmp_path / "resume" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(again["state_dict"]) == set(again["current_model_state"]) == keys
    assert again["global_step"] == 6

    # The EMA checkpoint also loads for inference (no trainer, no callback): the EMA weights.
    loaded = TextToImageDiffusion.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    assert all(torch.equal(_trainable(loaded)[k], ckpt["state_dict"][k]) for k in keys)


def test_bf16_mixed_lora_fit_on_cpu(tmp_path: Path, one_torch_thread) -> None:
    """A real bf16-mixed fit (CPU autocast): frozen weights bf16, LoRA weights trained in fp32, finite loss."""
    seed_everything(0)
    model = make(components=tiny_config("v_prediction"), lr=1e-2)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit = trainer(tmp_path, 4, precision="bf16-mixed")
    fit.fit(model, loader())
    assert (
        model.unet.conv_in.weight.dtype == torch.bfloat16 and model.vae.encoder.conv_in.weight.dtype == torch.bfloat16
    )
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trained.values())
    assert any(not torch.equal(start[n], trained[n]) for n in trained)
    assert torch.isfinite(fit.callback_metrics["train/loss"])
    images = model.generate(["a photo of a cat"], [0], num_inference_steps=2)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
