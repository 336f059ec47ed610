"""Gradient inversion of many targets in parallel (one ``invert`` call) vs one after another (one call each).

Both paths run ``privacy.inversion.invert`` with the ``inversed`` preset (Inverting Gradients: cosine cost,
signed Adam, boxed) shortened to ``--iterations``, on the same device, victim (``build_backbone``: ConvNet-64
or ResNet20-4, random init, eval mode, 100 classes, 32 px) and observed gradients (computed once, untimed).
"parallel": all ``--targets`` in one batch, each against its own gradient (vmap of per-example double
backward). "sequential": the same targets one call each (batch of one). After ``--warmup`` untimed rounds the
modes alternate ``--repeats`` times; medians are compared. images/s counts targets finished per second at
``--iterations`` iterations; ratio = sequential time / parallel time (>1: parallel faster). The two paths'
reconstructions are compared as well (max abs difference in normalised units).

``--estimate`` times ResNet20-4 and extrapolates SemSim's full protocol (600 images x 8,000 iterations, 1 restart)
from the measured seconds per iteration, in device-hours, for both paths (parallel: ceil(600 / targets) batches).

Goal: ratio >= 10 on a GPU for ResNet20-4. CPU figures are for reference (vmap over convolutions is no faster
than separate passes on a CPU; ``shared/reference/environment.md`` (f)).

    .venv/bin/python benchmarks/inversion.py --arch convnet --targets 8 --iterations 2     # CPU, small
    .venv/bin/python benchmarks/inversion.py --device cuda --arch resnet20 --targets 64 --iterations 20
    .venv/bin/python benchmarks/inversion.py --device cuda --estimate --targets 64 --iterations 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.networks import build_backbone
from privacy.inversion import PRESETS, invert, observed_gradients

ARCHS = {"convnet": "convnet-{w}", "resnet20": "resnet20-{w}"}
SEMSIM_WIDTH = {"convnet": 64, "resnet20": 4}
MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100
PROTOCOL_IMAGES, PROTOCOL_ITERATIONS = 600, 8000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """Victim, per-target observed gradients and labels (seeded; untimed)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    width = args.width or SEMSIM_WIDTH[args.arch]
    net = build_backbone(ARCHS[args.arch].format(w=width), 100, image_size=args.image_size).to(device).eval()
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(args.targets, 3, args.image_size, args.image_size, generator=g)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    labels = torch.randint(0, 100, (args.targets,), generator=g)
    images = ((pixels - mean) / std).to(device)
    return net, observed_gradients(net, images, labels.to(device)), labels.to(device)


def run_parallel(net, grads, labels, args, iterations: int) -> tuple[float, torch.Tensor]:
    config = PRESETS["inversed"].with_iterations(iterations)
    shape = (3, args.image_size, args.image_size)
    _sync(torch.device(args.device))
    start = time.perf_counter()
    result = invert(net, grads, labels, config, shape, MEAN, STD, seed=0)
    _sync(torch.device(args.device))
    return time.perf_counter() - start, result.images


def run_sequential(net, grads, labels, args, iterations: int) -> tuple[float, torch.Tensor]:
    config = PRESETS["inversed"].with_iterations(iterations)
    shape = (3, args.image_size, args.image_size)
    _sync(torch.device(args.device))
    start = time.perf_counter()
    rows = []
    for i in range(len(labels)):
        one = [g[i : i + 1] for g in grads]
        rows.append(invert(net, one, labels[i : i + 1], config, shape, MEAN, STD, seed=0, target_ids=[i]).images)
    _sync(torch.device(args.device))
    return time.perf_counter() - start, torch.cat(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="convnet")
    parser.add_argument("--width", type=int, help="network width (default: SemSim's, ConvNet-64 / ResNet20-4)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--targets", type=int, default=64, help="targets inverted together (and one by one)")
    parser.add_argument("--iterations", type=int, default=2, help="iterations per target in each timed run")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of both modes first (1 iteration)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--estimate", action="store_true", help="ResNet20-4: extrapolate 600 images x 8,000 iterations")
    args = parser.parse_args(argv)
    if args.estimate:
        args.arch, args.width, args.image_size = "resnet20", 4, 32
    if args.targets < 1 or args.iterations < 1 or args.repeats < 1:
        parser.error("--targets, --iterations and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    net, grads, labels = setup(args)
    for _ in range(args.warmup):  # one-time costs (allocator, kernels, vmap tracing)
        run_parallel(net, grads, labels, args, 1)
        run_sequential(net, grads, labels, args, 1)
    par: list[float] = []
    seq: list[float] = []
    for _ in range(args.repeats):
        seconds, par_images = run_parallel(net, grads, labels, args, args.iterations)
        par.append(seconds)
        seconds, seq_images = run_sequential(net, grads, labels, args, args.iterations)
        seq.append(seconds)
    p, s = statistics.median(par), statistics.median(seq)
    width = args.width or SEMSIM_WIDTH[args.arch]
    results = {
        "parallel_s": p,
        "sequential_s": s,
        "parallel_ips": args.targets / p,
        "sequential_ips": args.targets / s,
        "ratio": s / p,
        "max_diff": float((par_images - seq_images).abs().max()),
    }
    print(
        f"arch={ARCHS[args.arch].format(w=width)} image={args.image_size} targets={args.targets} "
        f"iterations={args.iterations} device={args.device} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(f"{'mode':<12} {'seconds':>9} {'images/s':>10} {'ratio':>7}  runs (s)")
    for name, sec, runs in (("sequential", s, seq), ("parallel", p, par)):
        print(f"{name:<12} {sec:9.3f} {args.targets / sec:10.3f} {s / sec:7.2f}  {', '.join(f'{r:.3f}' for r in runs)}")
    print(
        "ratio = sequential / parallel time (>1: parallel faster); "
        f"max |parallel - sequential| = {results['max_diff']:.2e}"
    )
    if args.estimate:
        batches = math.ceil(PROTOCOL_IMAGES / args.targets)
        results["parallel_hours"] = batches * p / args.iterations * PROTOCOL_ITERATIONS / 3600
        results["sequential_hours"] = (
            PROTOCOL_IMAGES * (s / args.targets) / args.iterations * PROTOCOL_ITERATIONS / 3600
        )
        print(
            f"full protocol ({PROTOCOL_IMAGES} images x {PROTOCOL_ITERATIONS} iterations, ResNet20-4, 1 restart) on "
            f"{args.device}: parallel ({batches} batches of {args.targets}) {results['parallel_hours']:.1f} h, "
            f"sequential {results['sequential_hours']:.1f} h"
        )
    return results


if __name__ == "__main__":
    main()
