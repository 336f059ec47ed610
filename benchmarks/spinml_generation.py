"""SpinML generation at three levels: one loaded model for L0/L1/L2 vs three separately loaded models, same run.

Both sides generate the same ``--n`` foreground requests at L0 (text), L1 (ControlNet on Canny edges) and L2
(img2img, strength 0.6) with ``SegmentGeneration`` from the same diffusers folder and ControlNet folder (written to a
temporary directory first, so both sides read weights from disk):

* ``one model``: load once (``pretrained_model_path`` + ``controlnet_path``), then generate the three levels from
  the shared UNet / text encoder / scheduler (what diffusers' ``from_pipe`` does for its pipelines);
* ``separate``: for each level load a fresh model from the folders and generate that level only (the way three
  separately loaded pipelines work).

Reported: wall time of each side (fastest of ``--repeats``; other processes on a shared machine only add time),
their ratio, the load time alone, the parameter memory held (one model vs three), and whether both sides give
byte-identical images (they must: each image depends on its seed only). The model is the TCKR CPU study's
generator (28 px grayscale pixel space, 1.1 M UNet parameters; 15 DPM-Solver steps, guidance 1.5) with a ControlNet
made from its UNet. Its weights are random: cost does not depend on them.

    .venv/bin/python benchmarks/spinml_generation.py               # CPU-study model, 32 requests a level
    .venv/bin/python benchmarks/spinml_generation.py --small       # 16 px tiny model, 4 requests, 4 steps: seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CPU_STUDY = {  # configs/tckr/cpu/base.yaml's components
    "seed": 0,
    "unet": dict(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=[32, 32, 64],
        down_block_types=["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "text_encoder": dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2, projection_dim=64
    ),
    "tokenizer": {
        "words": ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"],
        "max_length": 8,
    },
    "scheduler": {
        "kind": "ddpm",
        "prediction_type": "v_prediction",
        "beta_schedule": "squaredcos_cap_v2",
        "num_train_timesteps": 1000,
    },
}
SMALL = {
    **CPU_STUDY,
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
}


def write_model(folder: Path, components: dict) -> tuple[Path, Path]:
    """The base model as a diffusers folder and a ControlNet folder made from its UNet."""
    from diffusers import ControlNetModel

    from lightning_modules.networks.diffusion import build_components, save_components
    from lightning_modules.spinml_controlnet import embedding_channels

    parts = build_components(components)
    save_components(parts, folder / "base")
    cn = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=tuple(embedding_channels(1)))
    cn.save_pretrained(str(folder / "controlnet"))
    return folder / "base", folder / "controlnet"


def load(base: Path, controlnet: Path, steps: int):
    from lightning_modules.spinml_generation import SegmentGeneration

    return SegmentGeneration(
        pretrained_model_path=str(base),
        controlnet_path=str(controlnet),
        finetune="full",
        sampler="dpm",
        num_inference_steps=steps,
        guidance_scale=1.5,
        strength=0.6,
    ).eval()


def requests(n: int, size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "prompts": [f"a photo of a {['cat', 'dog', 'horse', 'sheep'][i % 4]}" for i in range(n)],
        "seeds": list(range(n)),
        "segment": torch.rand(n, 3, size, size, generator=gen) * 2 - 1,
        "guide": (torch.rand(n, 3, size, size, generator=gen) > 0.8).float(),
    }


def generate(model, level: int, req: dict) -> torch.Tensor:
    return model.generate_level(
        req["prompts"],
        req["seeds"],
        level,
        segment=req["segment"] if level == 2 else None,
        guide=req["guide"] if level == 1 else None,
    )


def param_bytes(*models) -> int:
    seen, total = set(), 0
    for m in models:
        for p in m.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="requests per level")
    p.add_argument("--steps", type=int, default=15, help="sampling steps (the CPU study: 15)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the fastest counts (shared CPUs)")
    p.add_argument("--small", action="store_true", help="16 px tiny model, 4 requests, 4 steps, 1 repeat (seconds)")
    args = p.parse_args(argv)
    if args.small:
        args.n, args.steps, args.repeats = 4, 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    components = SMALL if args.small else CPU_STUDY
    size = components["unet"]["sample_size"]
    with tempfile.TemporaryDirectory() as tmp:
        base, cn = write_model(Path(tmp), components)
        req = requests(args.n, size)
        load(base, cn, args.steps)  # warm-up: imports, first-call allocations
        one, separate, load_s, outs_one, outs_sep, mem = [], [], [], {}, {}, {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = load(base, cn, args.steps)
            load_s.append(time.perf_counter() - start)
            outs_one = {lv: generate(model, lv, req) for lv in (0, 1, 2)}
            one.append(time.perf_counter() - start)
            mem["one"] = param_bytes(model)
            start = time.perf_counter()
            models = []
            for lv in (0, 1, 2):
                models.append(load(base, cn, args.steps))
                outs_sep[lv] = generate(models[-1], lv, req)
            separate.append(time.perf_counter() - start)
            mem["separate"] = param_bytes(*models)
    identical = all(torch.equal(outs_one[lv], outs_sep[lv]) for lv in (0, 1, 2))
    results = {
        "one_model_s": min(one),
        "separate_s": min(separate),
        "load_s": min(load_s),
        "ratio": min(separate) / min(one),
        "memory_ratio": mem["separate"] / mem["one"],
    }
    print(
        f"torch {torch.__version__} | {platform.processor() or platform.machine()} | threads {torch.get_num_threads()}"
        f" | {'small' if args.small else 'CPU-study'} model {size} px, {args.n} requests x 3 levels, {args.steps} steps"
    )
    print(f"one model (1 load + L0, L1, L2) : {results['one_model_s']:8.3f} s  (load {results['load_s']:.3f} s)")
    print(f"separate (3 loads, one level each): {results['separate_s']:8.3f} s")
    print(
        f"ratio separate / one model: {results['ratio']:.2f}x time; parameter memory "
        f"{mem['separate'] / 2**20:.1f} MiB vs {mem['one'] / 2**20:.1f} MiB ({results['memory_ratio']:.2f}x)"
    )
    print(f"identical images: {identical}")
    if not identical:
        raise SystemExit("the two ways gave different images")
    return results


if __name__ == "__main__":
    main()
