"""SpinML's MI and SIM (``privacy.image_leakage``): our batched code vs a per-image Python loop, same run, same data.

* **MI** over ``--pairs`` image pairs (default 10,000) of ``--side`` px RGB, 8-bit: ours (``mutual_information``:
  all pairs binned through per-range lookup tables, one ``bincount`` per chunk, the sum over non-empty cells only)
  vs a loop calling numpy ``histogram2d`` per pair, then summing p·ln(p / (p_a p_b)) over its non-empty cells
  with numpy (the original's formula, vectorised within the pair). The original's own inner sum is a Python
  double loop over all 256 x 256 cells; it is timed on ``--literal`` pairs and extrapolated (marked so).
  Sizes: the original letterboxes into 512 x 512 canvases (786,432 values a pair); 64 px (12,288 values) keeps
  10,000 pairs within a minute on a CPU while the 256 x 256 joint histogram, the part that does not shrink with
  the image, still dominates the per-pair work; ``--side 512`` measures the original's size.
* **SIM** over ``--pairs`` synthetic and as many real embeddings of ``--dim`` (1280: MobileNetV2) dimensions:
  ours (``sim_score``: the mean of all M·N cosines as the dot product of the two mean unit vectors; with and
  without its 1,000-draw bootstrap interval) vs a loop over synthetic images, each row's cosines to all real
  images (a numpy matrix-vector product) averaged; and the original's full M x N cosine matrix in one product.
* **Nearest real** (``nearest_real``, faiss IndexFlatIP) vs a per-image loop taking each row's argmax.

Every pair of results is checked equal (MI and SIM to 1e-9 relative, nearest indices exactly). Data are seeded
and structured: smooth colour gradients with blobs and noise; half of the "real" images are noisy, shifted copies
of their synthetic partner, half independent. Prints one table; writes nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spinml_metrics.py            # 10,000 pairs, 64 px
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spinml_metrics.py --small    # 200 pairs, 32 px: seconds
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy.image_leakage import mutual_information, nearest_real, sim_score


def structured_images(n: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(synthetic, real) (n, side, side, 3) uint8: gradients + a blob + noise; half the real ones derived."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side

    def make(count: int) -> np.ndarray:
        slope = rng.uniform(-120, 120, (count, 2, 3)).astype(np.float32)
        base = rng.uniform(40, 200, (count, 1, 1, 3)).astype(np.float32)
        img = base + slope[:, None, None, 0] * xx[None, :, :, None] + slope[:, None, None, 1] * yy[None, :, :, None]
        centre = rng.uniform(0.2, 0.8, (count, 2)).astype(np.float32)
        blob = np.exp(-((xx - centre[:, None, None, 0]) ** 2 + (yy - centre[:, None, None, 1]) ** 2) / 0.02)
        img += blob[..., None] * rng.uniform(-100, 100, (count, 1, 1, 3)).astype(np.float32)
        img += rng.normal(0, 12, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    synthetic, real = make(n), make(n)
    derived = np.arange(n) % 2 == 0
    shifted = np.roll(synthetic[derived], 2, axis=2).astype(np.float32) + rng.normal(0, 20, real[derived].shape)
    real[derived] = np.clip(shifted, 0, 255).astype(np.uint8)
    return synthetic, real


def structured_embeddings(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(synthetic, real) (n, dim) float32: 20 shared cluster centres plus noise (ReLU-like: non-negative)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim), dtype=np.float32)
    syn = centres[rng.integers(0, 20, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    real = centres[rng.integers(0, 20, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    return np.maximum(syn, 0), np.maximum(real, 0)


def loop_mi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair: numpy histogram2d, then the original's sum over non-empty cells (vectorised within the pair)."""
    out = np.empty(len(a))
    for k in range(len(a)):
        hist, _, _ = np.histogram2d(a[k].ravel(), b[k].ravel(), bins=256)
        joint = hist / hist.sum()
        pa, pb = joint.sum(axis=1), joint.sum(axis=0)
        i, j = np.nonzero(joint)
        out[k] = np.sum(joint[i, j] * np.log(joint[i, j] / (pa[i] * pb[j])))
    return out


def literal_mi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The original's inner sum as written: a Python double loop over all 256 x 256 cells of each pair."""
    out = np.empty(len(a))
    for k in range(len(a)):
        hist, _, _ = np.histogram2d(a[k].ravel(), b[k].ravel(), bins=256)
        joint = hist / np.sum(hist)
        pa, pb = np.sum(joint, axis=1), np.sum(joint, axis=0)
        total = 0.0
        for i in range(joint.shape[0]):
            for j in range(joint.shape[1]):
                if joint[i, j] > 0:
                    total += joint[i, j] * np.log(joint[i, j] / (pa[i] * pb[j]))
        out[k] = total
    return out


def loop_sim(syn: np.ndarray, real: np.ndarray) -> float:
    """Per synthetic image: its cosines to every real image, averaged; then the mean over synthetic images."""
    r = real.astype(np.float64)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    rows = []
    for v in syn.astype(np.float64):
        rows.append(np.mean(r @ (v / np.linalg.norm(v))))
    return float(np.mean(rows))


def matrix_sim(syn: np.ndarray, real: np.ndarray) -> float:
    """The original: the full M x N cosine matrix in one product, then its mean."""
    s, r = syn.astype(np.float64), real.astype(np.float64)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    return float((s @ r.T).mean())


def loop_nearest(syn: np.ndarray, real: np.ndarray) -> np.ndarray:
    r = real.astype(np.float64) / np.linalg.norm(real, axis=1, keepdims=True)
    return np.array([int(np.argmax(r @ (v / np.linalg.norm(v)))) for v in syn.astype(np.float64)])


def _timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=64, help="image side in px (the original: 512)")
    parser.add_argument("--dim", type=int, default=1280, help="embedding width (MobileNetV2: 1280)")
    parser.add_argument("--literal", type=int, default=10, help="pairs timed with the original's double loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="200 pairs of 32 px, 256-d embeddings: seconds")
    if parser.parse_args(argv).small:  # smaller defaults; explicit options still win
        parser.set_defaults(pairs=200, side=32, dim=256, literal=2)
    args = parser.parse_args(argv)
    print(
        f"{platform.node()} python {platform.python_version()} numpy {np.__version__}; pairs={args.pairs} "
        f"side={args.side} dim={args.dim} seed={args.seed}"
    )

    syn_px, real_px = structured_images(args.pairs, args.side, args.seed)
    ours_mi, t_ours_mi = _timed(mutual_information, syn_px, real_px)
    loop_mi_values, t_loop_mi = _timed(loop_mi, syn_px, real_px)
    literal, t_literal = _timed(literal_mi, syn_px[: args.literal], real_px[: args.literal])
    mi_diff = float(np.max(np.abs(ours_mi - loop_mi_values) / np.maximum(loop_mi_values, 1e-300)))
    literal_diff = float(np.max(np.abs(ours_mi[: args.literal] - literal) / np.maximum(literal, 1e-300)))
    if mi_diff > 1e-9 or literal_diff > 1e-9:
        raise SystemExit(f"MI differs: ours vs loop {mi_diff:.3g}, ours vs literal {literal_diff:.3g} (relative)")
    t_literal_all = t_literal / max(args.literal, 1) * args.pairs

    syn_e, real_e = structured_embeddings(args.pairs, args.dim, args.seed)
    ours_sim, t_ours_sim = _timed(lambda s, r: sim_score(s, r, resamples=0)["sim"], syn_e, real_e)
    _, t_ours_sim_ci = _timed(lambda s, r: sim_score(s, r, resamples=1000), syn_e, real_e)
    loop_sim_value, t_loop_sim = _timed(loop_sim, syn_e, real_e)
    matrix_value, t_matrix = _timed(matrix_sim, syn_e, real_e)
    sim_diff = max(abs(ours_sim - loop_sim_value), abs(ours_sim - matrix_value)) / abs(loop_sim_value)
    if sim_diff > 1e-9:
        raise SystemExit(f"SIM differs: ours {ours_sim!r}, loop {loop_sim_value!r}, matrix {matrix_value!r}")

    ours_nn, t_ours_nn = _timed(nearest_real, syn_e, real_e)
    loop_nn, t_loop_nn = _timed(loop_nearest, syn_e, real_e)
    mismatched = int((ours_nn["index"] != loop_nn).sum())
    if mismatched:
        raise SystemExit(f"nearest real image differs for {mismatched} synthetic images")

    rows = [
        ("MI", "ours (batched)", t_ours_mi, t_loop_mi),
        ("MI", "per-pair loop (histogram2d + numpy sum)", t_loop_mi, t_loop_mi),
        ("MI", f"original double loop (extrapolated from {args.literal})", t_literal_all, t_loop_mi),
        ("SIM", "ours (mean-vector identity)", t_ours_sim, t_loop_sim),
        ("SIM", "ours + 1,000-draw bootstrap interval", t_ours_sim_ci, t_loop_sim),
        ("SIM", "per-image loop", t_loop_sim, t_loop_sim),
        ("SIM", "original: full M x N matrix", t_matrix, t_loop_sim),
        ("nearest", "ours (faiss IndexFlatIP)", t_ours_nn, t_loop_nn),
        ("nearest", "per-image loop (argmax)", t_loop_nn, t_loop_nn),
    ]
    print(f"{'metric':8} {'method':52} {'seconds':>10} {'per-image loop / this':>22}")
    for metric, method, seconds, loop in rows:
        print(f"{metric:8} {method:52} {seconds:10.4f} {loop / seconds:22.1f}")
    print(
        f"max relative difference: MI {mi_diff:.2e} (literal {literal_diff:.2e}), SIM {sim_diff:.2e}; "
        f"nearest indices identical; mean MI {ours_mi.mean():.4f} nats, SIM {ours_sim:.4f}"
    )
    return {
        "mi_ours_s": t_ours_mi,
        "mi_loop_s": t_loop_mi,
        "mi_literal_extrapolated_s": t_literal_all,
        "mi_ratio": t_loop_mi / t_ours_mi,
        "mi_max_rel_diff": mi_diff,
        "sim_ours_s": t_ours_sim,
        "sim_loop_s": t_loop_sim,
        "sim_ratio": t_loop_sim / t_ours_sim,
        "sim_max_rel_diff": sim_diff,
        "nearest_ratio": t_loop_nn / t_ours_nn,
    }


if __name__ == "__main__":
    main()
