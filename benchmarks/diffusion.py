"""TextToImageDiffusion LoRA training and generation vs plain diffusers-style code, same models, same run.

Training: seconds per optimiser step of

* a plain loop written here after the diffusers ``train_text_to_image_lora`` recipe (VAE encode -> latent sample x
  scaling factor, text encode, Gaussian noise, uniform timesteps, ``add_noise``, epsilon/v target, MSE in fp32,
  backward, grad-norm clip 1.0, AdamW over the LoRA weights; frozen weights in bf16 and LoRA weights in fp32 under
  ``--precision bf16-mixed``, with autocast),
* ours: a Lightning fit of ``TextToImageDiffusion`` (``training_step`` + AdamW step, the same clip), and
* ours with cached latents and text embeddings (computed once before the timed loop, as a cached-feature
  datamodule would hand them over).

Same components (built from the same config and seed), same LoRA rank/targets, same batches, same seed. Goals:
ours/plain >= 1.0 as is, >= 1.3 with the caches (speed ratio = plain s/step / ours s/step).

Generation: images/s of ours (``generate``: one batch of prompts, one CPU generator per image) vs a naive loop calling
a ``StableDiffusionPipeline`` built from the same components once per prompt (DPM-Solver, same steps and guidance).
Goal >= 1.5x. The first image of both is compared (same seed, same scheduler: they should agree up to rounding).

Sizes:

* ``tiny``: the test-suite's tiny UNet/VAE/CLIP, 32 px (seconds on a CPU; what the test runs);
* ``small``: a 4-level SD-shaped UNet (32..128 channels), 8x VAE, 4-layer text encoder, 128 px (a CPU measurement);
* ``sd2``: the full-size Stable Diffusion 2(-base) architecture with **random weights** (SD2's published weights are
  not reachable offline and not needed for timing): UNet from stabilityai/stable-diffusion-2's ``unet/config.json``
  (block_out_channels 320/640/1280/1280, layers_per_block 2, cross_attention_dim 1024, attention_head_dim 5/10/20/20,
  use_linear_projection; 865.9 M parameters), the SD VAE (4 latent channels, /8), an OpenCLIP ViT-H-sized CLIP text
  encoder (hidden 1024, 23 layers, 16 heads, 77 tokens; a word-level tokenizer stands in for the CLIP BPE one), 512 px,
  epsilon prediction (2-base). Needs a GPU: ``--size sd2 --device cuda --precision bf16-mixed``.

Prints one table; writes nothing (record figures in ``benchmarks/RESULTS.md`` by hand, as the other benchmarks do).

    .venv/bin/python benchmarks/diffusion.py --size small
    .venv/bin/python benchmarks/diffusion.py --size sd2 --device cuda --precision bf16-mixed --batch 8
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["cat", "dog", "bird", "car", "tree", "house", "boat", "flower", "horse", "chair"]
SCHEDULER = {
    "kind": "ddpm",
    "prediction_type": "epsilon",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}


def _unet(channels: list[int], heads: list[int], layers: int, cross: int, sample: int) -> dict:
    return dict(
        sample_size=sample,
        in_channels=4,
        out_channels=4,
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D"] * (len(channels) - 1) + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(channels) - 1),
        cross_attention_dim=cross,
        attention_head_dim=heads,
        use_linear_projection=True,
        norm_num_groups=32,
    )


def _vae(channels: list[int], layers: int, sample: int) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        layers_per_block=layers,
        norm_num_groups=32,
        sample_size=sample,
    )


def _text(hidden: int, layers: int, heads: int) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        hidden_act="gelu",
        projection_dim=hidden,
    )


#: size -> (components config, default resolution, default batch, default generated images)
SIZES: dict[str, tuple[dict[str, Any], int, int, int]] = {
    "tiny": (
        {
            "unet": _unet([32, 64], [2, 4], 1, 32, 16),
            "vae": _vae([32, 64], 1, 32),
            "text_encoder": dict(_text(32, 2, 4), intermediate_size=37),
            "tokenizer": {"words": WORDS, "max_length": 8},
        },
        32,
        4,
        4,
    ),
    "small": (
        {
            "unet": _unet([32, 64, 128, 128], [2, 4, 8, 8], 1, 128, 16),
            "vae": _vae([32, 32, 64, 64], 1, 128),
            "text_encoder": _text(128, 4, 4),
            "tokenizer": {"words": WORDS, "max_length": 16},
        },
        128,
        4,
        4,
    ),
    # Stable Diffusion 2(-base) architecture, random weights (see the module docstring).
    "sd2": (
        {
            "unet": dict(
                _unet([320, 640, 1280, 1280], [5, 10, 20, 20], 2, 1024, 64),
                act_fn="silu",
                center_input_sample=False,
                downsample_padding=1,
                flip_sin_to_cos=True,
                freq_shift=0,
                mid_block_scale_factor=1,
                norm_eps=1e-5,
                dual_cross_attention=False,
                upcast_attention=False,
            ),
            "vae": _vae([128, 256, 512, 512], 2, 512),
            "text_encoder": dict(_text(1024, 23, 16), projection_dim=1024),
            "tokenizer": {"words": WORDS, "max_length": 77},
        },
        512,
        8,
        16,
    ),
}


def components_config(size: str) -> dict[str, Any]:
    """Components config (``build_components`` format) of a benchmark size, with the SD2 noise schedule."""
    config = copy.deepcopy(SIZES[size][0])
    config.update(scheduler=dict(SCHEDULER), seed=0)
    return config


class RandomPairs(Dataset):
    """Fixed random images in [-1, 1] with short prompts (or their cached latents / prompt embeddings)."""

    def __init__(self, n: int, resolution: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1
        words = torch.randint(0, len(WORDS), (n, 2), generator=g).tolist()
        self.prompts = [f"a {WORDS[a]} and a {WORDS[b]}" for a, b in words]
        self.cache: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None:
            return {"latents": self.cache["latents"][i], "prompt_embeds": self.cache["prompt_embeds"][i]}
        return {"pixel_values": self.images[i], "prompt": self.prompts[i]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bf16(args: argparse.Namespace) -> bool:
    return args.precision == "bf16-mixed"


def make_model(args: argparse.Namespace) -> Any:
    from lightning_modules.diffusion import TextToImageDiffusion

    return TextToImageDiffusion(
        components=components_config(args.size),
        lora_rank=args.rank,
        sampler="dpm",
        num_inference_steps=args.gen_steps,
        guidance_scale=args.guidance,
        height=args.resolution,
    )


# ---------------------------------------------------------------------------------------------------- training
def time_ours(args: argparse.Namespace, data: RandomPairs) -> float:
    """Seconds per step of a Lightning fit of TextToImageDiffusion (steps after the warm-up)."""
    from lightning import Callback, Trainer

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.start, self.end = 0.0, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == args.warmup:
                _sync(pl_module.device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(pl_module.device)
            self.end = time.perf_counter()

    torch.manual_seed(0)
    model = make_model(args)
    timer = StepTimer()
    trainer = Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        precision=args.precision,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=args.batch, shuffle=False))
    del model, trainer
    return (timer.end - timer.start) / args.steps


def build_plain(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The same components, LoRA attached and cast the way diffusers' LoRA script does it."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from lightning_modules.networks.diffusion import build_components

    parts = build_components(components_config(args.size))
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    weight_dtype = torch.bfloat16 if _bf16(args) else torch.float32
    unet.to(device, dtype=weight_dtype)
    vae.to(device, dtype=weight_dtype).eval()
    text_encoder.to(device, dtype=weight_dtype).eval()
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.rank,
        init_lora_weights="gaussian",
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )
    unet.add_adapter(lora)
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params:  # trainable weights in fp32 whatever the frozen ones are in
        p.data = p.data.float()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": parts["tokenizer"],
        "noise_scheduler": DDPMScheduler.from_config(parts["scheduler_config"]),
        "params": lora_params,
        "weight_dtype": weight_dtype,
    }


def time_plain(args: argparse.Namespace, data: RandomPairs) -> float:
    """Seconds per step of the plain diffusers-recipe LoRA loop (steps after the warm-up)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    m = build_plain(args, device)
    unet, vae, text_encoder, tokenizer = m["unet"], m["vae"], m["text_encoder"], m["tokenizer"]
    scheduler, dtype = m["noise_scheduler"], m["weight_dtype"]
    optimizer = torch.optim.AdamW(m["params"], lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    unet.train()
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    start = 0.0
    for step, batch in enumerate(loader):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        pixels = batch["pixel_values"].to(device, dtype=dtype)
        ids = tokenizer(
            list(batch["prompt"]),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16(args)):
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                hidden = text_encoder(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device).long()
            noisy = scheduler.add_noise(latents, noise, t)
            if scheduler.config.prediction_type == "epsilon":
                target = noise
            else:
                target = scheduler.get_velocity(latents, noise, t)
            pred = unet(noisy, t, hidden, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m["params"], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    del m, optimizer
    return seconds


def cache_features(args: argparse.Namespace, data: RandomPairs) -> float:
    """Latents and prompt embeddings of every pair, computed once with the model's own encoders (untimed)."""
    device = torch.device(args.device)
    model = make_model(args).to(device).eval()
    t0 = time.perf_counter()
    latents, embeds = [], []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16(args)):
        for i in range(0, len(data), args.batch):
            latents.append(model.encode_images(data.images[i : i + args.batch].to(device)).float().cpu())
            with torch.no_grad():
                embeds.append(model.encode_prompts(data.prompts[i : i + args.batch]).float().cpu())
    _sync(device)
    data.cache = {"latents": torch.cat(latents), "prompt_embeds": torch.cat(embeds)}
    del model
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------- generation
def time_generation(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of ours (batched ``generate``) and of one StableDiffusionPipeline call per prompt."""
    from diffusers import StableDiffusionPipeline

    from lightning_modules.networks.diffusion import sampling_scheduler

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_model(args).eval()
    model.to(device, dtype=torch.bfloat16 if _bf16(args) else torch.float32)
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=sampling_scheduler(model.scheduler_config, "dpm"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    n = args.gen_images
    data = RandomPairs(n, 8)
    prompts, seeds = data.prompts, list(range(n))

    def ours() -> torch.Tensor:
        out = []
        for i in range(0, n, args.gen_batch):
            out.append(model.generate(prompts[i : i + args.gen_batch], seeds[i : i + args.gen_batch]).float().cpu())
        return torch.cat(out)

    def naive() -> torch.Tensor:
        out = []
        for prompt, seed in zip(prompts, seeds):
            image = pipe(
                prompt,
                height=args.resolution,
                width=args.resolution,
                num_inference_steps=args.gen_steps,
                guidance_scale=args.guidance,
                generator=torch.Generator("cpu").manual_seed(seed),
                output_type="pt",
            ).images
            out.append(image.float().cpu() * 2 - 1)
        return torch.cat(out)

    def timed(fn) -> tuple[float, torch.Tensor]:
        _sync(device)
        t0 = time.perf_counter()
        images = fn()
        _sync(device)
        return n / (time.perf_counter() - t0), images

    with torch.no_grad():
        # warm-up: one image each (kernels, allocator, scheduler tables)
        model.generate(prompts[:1], seeds[:1], num_inference_steps=2)
        pipe(prompts[0], height=args.resolution, width=args.resolution, num_inference_steps=2, output_type="pt")
        naive_ips, naive_images = timed(naive)
        ours_ips, ours_images = timed(ours)
    diff = (ours_images - naive_images).abs().max().item()
    return {"naive": naive_ips, "ours": ours_ips, "max_diff": diff}


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default=None, help="32-true or bf16-mixed (default: bf16-mixed on cuda)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default per size)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: 32/128/512 per size)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (targets to_q/k/v/out.0)")
    parser.add_argument("--gen-images", type=int, default=None, help="images generated per path")
    parser.add_argument("--gen-batch", type=int, default=None, help="our generation batch (default all)")
    parser.add_argument("--gen-steps", type=int, default=20, help="sampling steps (DPM-Solver)")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--skip", choices=["train", "generate"], action="append", default=[])
    args = parser.parse_args(argv)
    _, resolution, batch, images = SIZES[args.size]
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    if args.precision not in ("32-true", "bf16-mixed"):
        parser.error("--precision: 32-true or bf16-mixed")
    args.resolution = args.resolution or resolution
    args.batch = args.batch or batch
    args.gen_images = args.gen_images or images
    args.gen_batch = args.gen_batch or args.gen_images
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print the table, return the figures (for the test)."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    results: dict[str, float] = {}
    rows: list[tuple[str, str, str, str]] = []
    if "train" not in args.skip:
        data = RandomPairs(args.batch * (args.warmup + args.steps), args.resolution)
        results["plain_s"] = time_plain(args, data)
        results["ours_s"] = time_ours(args, data)
        results["cache_build_s"] = cache_features(args, data)
        results["cached_s"] = time_ours(args, data)
        results["train_ratio"] = results["plain_s"] / results["ours_s"]
        results["cached_ratio"] = results["plain_s"] / results["cached_s"]
        rows += [
            ("train: plain diffusers-recipe loop", f"{results['plain_s']:.3f} s/step", "1.00", ""),
            (
                "train: TextToImageDiffusion",
                f"{results['ours_s']:.3f} s/step",
                f"{results['train_ratio']:.2f}",
                ">= 1.0",
            ),
            (
                "train: ours, cached latents + embeds",
                f"{results['cached_s']:.3f} s/step",
                f"{results['cached_ratio']:.2f}",
                ">= 1.3",
            ),
        ]
    if "generate" not in args.skip:
        gen = time_generation(args)
        results.update(naive_ips=gen["naive"], ours_ips=gen["ours"], gen_ratio=gen["ours"] / gen["naive"])
        results["gen_max_diff"] = gen["max_diff"]
        rows += [
            ("generate: pipeline call per prompt", f"{gen['naive']:.3f} img/s", "1.00", ""),
            (
                f"generate: ours, batch {args.gen_batch}",
                f"{gen['ours']:.3f} img/s",
                f"{results['gen_ratio']:.2f}",
                ">= 1.5",
            ),
        ]
    print(
        f"size={args.size} resolution={args.resolution} batch={args.batch} precision={args.precision} "
        f"device={args.device} steps={args.steps} (+{args.warmup} warm-up) rank={args.rank} "
        f"gen: {args.gen_images} images x {args.gen_steps} steps, guidance {args.guidance} "
        f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f}"
    )
    print(f"| {'path':<38} | {'figure':>14} | {'speed ratio':>11} | {'goal':>6} |")
    print(f"|{'-' * 40}|{'-' * 16}|{'-' * 13}|{'-' * 8}|")
    for name, figure, ratio, goal in rows:
        print(f"| {name:<38} | {figure:>14} | {ratio:>11} | {goal:>6} |")
    if "cache_build_s" in results:
        print(f"cache build (untimed above): {results['cache_build_s']:.2f} s for {args.warmup + args.steps} batches")
    if "gen_max_diff" in results:
        print(f"max |ours - pipeline| over the images (in [-1, 1]): {results['gen_max_diff']:.2e}")
    return results


if __name__ == "__main__":
    main()
