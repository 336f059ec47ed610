"""SpinML mask compositing: the batched ``composite_uint8`` vs per-image loops, same run, same pairs.

Composites ``--n`` (default 10,000) seeded foreground/background pairs of ``--size`` px through 8-bit masks
(random values 0..255, so soft edges are exercised; the cost does not depend on the content) and times:

* ``batched``: ``datamodules.spinml_layout.composite_uint8`` on chunks of ``--batch`` stacked channel-first
  images (the path ``synthpriv spinml-demo-data`` uses to write ``clean/``);
* ``PIL loop``: one ``PIL.Image.composite`` call per pair on channel-last arrays (the plain per-image way; the
  arrays are converted to Pillow's layout before timing, wrapped and unwrapped inside it);
* ``torch loop``: one ``composite_uint8`` call per pair (the per-item path of the data module's ``__getitem__``).

All three outputs are checked byte-identical (the rule is exact rounding of ``(fg*m + bg*(255-m)) / 255``, which is
also what Pillow computes). Inputs are generated before timing; each side is timed ``--repeats`` times
(default 3, the fastest counts: other processes on a shared machine only add time) with ``time.perf_counter``
after a small warm-up, in one process, torch on ``--threads`` threads (default 1, since
Pillow's composite is single-threaded).

    .venv/bin/python benchmarks/spinml_compositing.py                # 10,000 pairs at 128 px
    .venv/bin/python benchmarks/spinml_compositing.py --small          # 500 pairs at 32 px: seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.spinml_layout import composite_uint8  # noqa: E402


def make_pairs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) uint8 foregrounds and backgrounds and (n, 1, size, size) uint8 masks, seeded."""
    gen = torch.Generator().manual_seed(seed)
    fg = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    bg = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    mask = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen)
    return fg, bg, mask


def batched(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat(
        [composite_uint8(fg[i : i + batch], bg[i : i + batch], mask[i : i + batch]) for i in range(0, len(fg), batch)]
    )


def torch_loop(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.stack([composite_uint8(fg[i], bg[i], mask[i]) for i in range(len(fg))])


def pil_loop(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image Pillow composite on channel-last arrays (Pillow's own layout, converted before timing)."""
    out = np.empty_like(fg)
    for i in range(len(fg)):
        out[i] = np.asarray(Image.composite(Image.fromarray(fg[i]), Image.fromarray(bg[i]), Image.fromarray(mask[i])))
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="image pairs")
    p.add_argument("--size", type=int, default=128, help="side in pixels")
    p.add_argument("--batch", type=int, default=256, help="images per batched call")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the fastest counts (shared CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="500 pairs of 32 px, one repeat (seconds; for tests)")
    args = p.parse_args(argv)
    if args.small:
        args.n, args.size, args.repeats = 500, 32, 1
    for name in ("n", "size", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    fg, bg, mask = make_pairs(args.n, args.size, args.seed)
    # Pillow's layout (H, W, C) made before timing, so the loop is not charged for the conversion
    pil_inputs = (
        fg.permute(0, 2, 3, 1).numpy().copy(),
        bg.permute(0, 2, 3, 1).numpy().copy(),
        mask[:, 0].numpy().copy(),
    )
    sides = {
        "batched": lambda: batched(fg, bg, mask, args.batch),
        "pil_loop": lambda: pil_loop(*pil_inputs),
        "torch_loop": lambda: torch_loop(fg, bg, mask),
    }
    warm = min(8, args.n)
    batched(fg[:warm], bg[:warm], mask[:warm], args.batch)
    pil_loop(*(a[:warm] for a in pil_inputs))
    torch_loop(fg[:warm], bg[:warm], mask[:warm])
    results, outputs = {}, {}
    for name, fn in sides.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[name] = fn()
            times.append(time.perf_counter() - start)
        results[f"{name}_s"] = min(times)
    outputs = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}
    outputs["batched"] = outputs["batched"].transpose(0, 2, 3, 1)
    outputs["torch_loop"] = outputs["torch_loop"].transpose(0, 2, 3, 1)
    identical = all(np.array_equal(outputs["batched"], outputs[k]) for k in ("pil_loop", "torch_loop"))
    results["ratio_pil"] = results["pil_loop_s"] / results["batched_s"]
    results["ratio_torch"] = results["torch_loop_s"] / results["batched_s"]
    results["identical"] = float(identical)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {version('torch').split('+')[0]}"
    print(
        f"SpinML compositing: {args.n} pairs of {args.size}x{args.size} RGB, batch {args.batch}, {machine}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"batched    : {results['batched_s']:8.3f} s  ({args.n / results['batched_s']:10.0f} images/s)")
    print(f"PIL loop   : {results['pil_loop_s']:8.3f} s  ({args.n / results['pil_loop_s']:10.0f} images/s)")
    print(f"torch loop : {results['torch_loop_s']:8.3f} s  ({args.n / results['torch_loop_s']:10.0f} images/s)")
    print(f"ratio PIL loop / batched: {results['ratio_pil']:.1f}x; torch loop / batched: {results['ratio_torch']:.1f}x")
    print(f"identical: {identical}")
    if not identical:
        raise SystemExit("outputs differ between the batched path and the per-image loops")
    return results


if __name__ == "__main__":
    main()
