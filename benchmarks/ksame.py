"""k-Same clustering: ``privacy.ksame.ksame_clusters`` vs a dense re-implementation of the original, same run.

Measures wall time and peak extra memory of both on the same seeded Gaussian-blob features (10 class centres,
float32) and checks that the cluster assignments are identical. Goals (issue 4): at 20,000 x 768, ≥ 5× faster
and ≥ 20× less memory than the original; 100,000 x 768 must finish (the original's distance matrix alone would
take 100,000² × 8 B = 80 GB; ``--skip-dense`` runs ours only).

The dense baseline is the original's procedure: the full float64 N x N Euclidean distance matrix computed once
(``torch.cdist``, diagonal set to exact zeros), then every round the sums of the unassigned rows over the
unassigned columns, the argmax starts a cluster with its k - 1 nearest unassigned points (stable argsort). The
original sums ``dist[np.ix_(idx, idx)]``, copying the submatrix every round (``--dense-rowsum ix``: up to
another N² × 8 B, and ~0.6 s a round on average at 20,000 in a micro-benchmark on the dev VM, ~40 min in all);
by default the same sums are taken as the masked matrix-vector product ``(dist @ unassigned)[idx]`` over the
full matrix (``--dense-rowsum matvec``, ~0.15 s a round there): the same arithmetic on the same N x N matrix,
so neither ratio is flattered by the copies.

Each side runs in its own subprocess (this script with a hidden ``--worker`` flag) that loads the features
from an .npy file, then reports the time of the clustering call (``time.perf_counter``), its CPU time (all
threads, ``time.process_time``: less sensitive than wall time to other processes on a shared machine) and its
peak extra memory: VmHWM − VmRSS after loading and a tiny warm-up run of both (libraries and thread pools load
lazily), the high-water mark reset through ``/proc/self/clear_refs``.

    .venv/bin/python benchmarks/ksame.py [--n 20000 --d 768 --k 5 --seed 0 --block 1024 --threads 1]
    .venv/bin/python benchmarks/ksame.py --n 100000 --skip-dense
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def blobs(n: int, d: int, seed: int, classes: int = 10) -> np.ndarray:
    """(n, d) float32 features: a random class centre per sample plus unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += centres[labels]
    return x


def dense_clusters(features: np.ndarray, k: int, rowsum: str) -> np.ndarray:
    """The original k-Same clustering on the full N x N float64 distance matrix."""
    import torch

    n = len(features) - len(features) % k
    x = torch.from_numpy(np.ascontiguousarray(features[:n], dtype=np.float64))
    dist = torch.cdist(x, x).numpy()
    del x
    np.fill_diagonal(dist, 0.0)
    unassigned = np.ones(n, dtype=bool)
    cluster = np.full(n, -1, dtype=np.int64)
    for c in range(n // k):
        idx = np.flatnonzero(unassigned)
        if rowsum == "ix":
            sums = dist[np.ix_(idx, idx)].sum(1)
        else:
            sums = (dist @ unassigned.astype(np.float64))[idx]
        start = idx[np.argmax(sums)]
        nearest = idx[np.argsort(dist[start, idx], kind="stable")[:k]]
        cluster[nearest] = c
        unassigned[nearest] = False
    return cluster


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """One side, in its own process: cluster the saved features, write clusters and figures to args.dir."""
    import torch

    sys.path.insert(0, str(ROOT))
    from privacy.ksame import ksame_clusters

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    features = np.load(folder / "features.npy")
    ksame_clusters(features[:64], 2)  # warm-up, not counted
    dense_clusters(features[:64], 2, args.dense_rowsum)
    base = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.worker == "ours":
        cluster = ksame_clusters(features, args.k, block=args.block)
    else:
        cluster = dense_clusters(features, args.k, args.dense_rowsum)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_kib("VmHWM")
    np.save(folder / f"{args.worker}.npy", cluster)
    figures = {"seconds": seconds, "cpu_seconds": cpu_seconds, "extra_bytes": (peak - base) * 1024}
    (folder / f"{args.worker}.json").write_text(json.dumps(figures))


def _figures(side: dict) -> str:
    return f"{side['seconds']:9.1f} s (CPU {side['cpu_seconds']:.1f} s)   peak extra {side['extra_bytes'] / MB:9.1f} MB"


def run_side(side: str, folder: Path, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    cmd = [sys.executable, __file__, "--worker", side, "--dir", str(folder), "--k", str(args.k)]
    cmd += ["--block", str(args.block), "--dense-rowsum", args.dense_rowsum]
    env = dict(os.environ)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    subprocess.run(cmd, check=True, env=env)
    return json.loads((folder / f"{side}.json").read_text()), np.load(folder / f"{side}.npy")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=1024, help="tile size passed to ksame_clusters")
    p.add_argument("--skip-dense", action="store_true", help="run ours only (the 100,000 run)")
    p.add_argument("--dense-rowsum", choices=["matvec", "ix"], default="matvec")
    p.add_argument("--threads", type=int, default=0, help="torch/BLAS threads of both sides (0: default)")
    p.add_argument("--worker", choices=["ours", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    n_kept = args.n - args.n % args.k
    matrix = n_kept**2 * 8
    print(f"k-Same N={args.n} d={args.d} k={args.k} seed={args.seed} block={args.block} threads={args.threads}")
    print(f"dense distance matrix: {n_kept}² × 8 B = {matrix / 1e9:.2f} GB")
    with tempfile.TemporaryDirectory(prefix="ksame-bench-") as tmp:
        folder = Path(tmp)
        np.save(folder / "features.npy", blobs(args.n, args.d, args.seed))
        ours, ours_clusters = run_side("ours", folder, args)
        print(f"ours : {_figures(ours)}", flush=True)
        dense = None
        if not args.skip_dense:
            dense, dense_clusters_ = run_side("dense", folder, args)
            print(f"dense: {_figures(dense)}")

    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {version('torch').split('+')[0]}"
    shown = " ".join(a for a in sys.argv[1:])
    command = f"`benchmarks/ksame.py{' ' + shown if shown else ''}`"
    ours_s, ours_mb = f"{ours['seconds']:.1f}", f"{ours['extra_bytes'] / MB:.0f}"
    if dense is None:
        print(f"identical: not checked (--skip-dense); the dense matrix would take {matrix / 1e9:.1f} GB")
        row = [command, "—", ours_s, "—", f"— ({matrix / 1e9:.0f} GB matrix)", ours_mb, "—", "not checked"]
        identical = True
    else:
        identical = bool(np.array_equal(ours_clusters, dense_clusters_))
        speed = dense["seconds"] / ours["seconds"]
        memory = dense["extra_bytes"] / max(ours["extra_bytes"], 1)
        cpu = dense["cpu_seconds"] / max(ours["cpu_seconds"], 1e-9)
        print(f"speed ratio dense/ours: {speed:.1f}× (CPU time: {cpu:.1f}×)")
        print(f"memory ratio dense/ours: {memory:.1f}×")
        print(f"identical: {identical}")
        dense_s, dense_mb = f"{dense['seconds']:.1f}", f"{dense['extra_bytes'] / MB:.0f}"
        row = [command, dense_s, ours_s, f"**{speed:.1f}×**", dense_mb, ours_mb, f"**{memory:.1f}×**", str(identical)]
    print()
    header = ["date", "machine", "command", "dense s", "ours s", "speed ratio", "dense MB", "ours MB", "memory ratio"]
    print("| " + " | ".join([*header, "identical"]) + " |")
    print("|" + "---|" * (len(header) + 1))
    print("| " + " | ".join([datetime.date.today().isoformat(), machine, *row]) + " |")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
