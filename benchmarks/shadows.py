"""K shadow models trained grouped (ShadowEnsemble, vmap) vs one after another (plain PyTorch loop).

Both paths train K networks of one architecture (``build_backbone``) on one synthetic pool (N random uint8
3xSxS images, 10 classes) under a balanced K x N membership mask: each model takes its own member batches in
``MembershipDataModule``'s order, AdamW with the same lr and weight decay, same batch size, steps and epochs.
"grouped": ``Trainer.fit`` of a ShadowEnsemble with ``group_size`` G (per step: forward_group per group,
cross-entropy, backward, one AdamW step over the stacked parameters). "sequential": model 1, then model 2, ...
with a plain loop. Timed: the training loop only (``on_train_start`` to ``on_train_end``; building excluded).
After ``--warmup`` untimed rounds the modes alternate ``--repeats`` times; medians are compared. images/s
counts the images of all K models; ratio = sequential time / grouped time (>1: grouped is faster).

Goal: ratio >= 3 on a GPU for small CNNs (resnet8-1, 28 px, K=16). CPU figures are for reference only: on a
CPU vmap over convolutions is known to be slower than separate passes (shared/reference/environment.md,
"(f) torch.func ensembles"), so G=1 is expected to be the best choice there.

    .venv/bin/python benchmarks/shadows.py --group-sizes 1,4,16                 # CPU
    .venv/bin/python benchmarks/shadows.py --device cuda --group-sizes 1,4,16   # GPU [--precision bf16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.membership import MembershipDataModule
from datamodules.pool import MembershipPool
from lightning_modules.networks import build_backbone
from lightning_modules.shadows import ShadowEnsemble

LR, WEIGHT_DECAY = 1e-3, 5e-5


class RandomSource:
    """A stand-in source data module: one split of N random uint8 images as a MembershipPool."""

    num_classes, class_names = 10, [str(c) for c in range(10)]

    def __init__(self, n: int, size: int, augment: str) -> None:
        g = torch.Generator().manual_seed(0)
        self.input_size = size
        images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g).numpy()
        self.pool = MembershipPool(images, labels, [f"x{i}" for i in range(n)], augment, (0.5,) * 3, (0.25,) * 3)

    def membership_pool(self, split: str) -> MembershipPool:
        return self.pool


class LoopTimer(Callback):
    """Wall time of the training loop."""

    def on_train_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_grouped(data: MembershipDataModule, group_size: int, root: str, args: argparse.Namespace) -> float:
    model = ShadowEnsemble(
        backbone=args.backbone, group_size=group_size, image_size=args.image_size, scheduler="none",
        lr=LR, weight_decay=WEIGHT_DECAY,
    )  # fmt: skip
    timer = LoopTimer()
    trainer = Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_epochs=args.epochs,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true",
        default_root_dir=root,  # ShadowEnsemble.setup writes membership/mask.npz there
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=data)
    return timer.seconds


def time_sequential(data: MembershipDataModule, args: argparse.Namespace) -> float:
    device, b = torch.device(args.device), args.batch_size
    nets = [build_backbone(args.backbone, 10, image_size=args.image_size) for _ in range(args.models)]
    orders = [data.epoch_order(epoch).copy() for epoch in range(args.epochs)]  # the grouped path's batches
    labels_all = torch.from_numpy(data.pool.labels).to(device)
    data.pool.inputs = data.pool.inputs.to(device)
    _sync(device)
    start = time.perf_counter()
    for k, net in enumerate(nets):
        net = net.to(device).train()
        opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        generator = torch.Generator().manual_seed(k)
        for order in orders:
            for step in range(data.steps_per_epoch):
                positions = torch.from_numpy(order[k, step * b : (step + 1) * b])
                images = data.pool.training_inputs(positions, generator)
                labels = labels_all[positions.to(device)]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    loss = F.cross_entropy(net(images), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet8-1")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--examples", type=int, default=2000, help="N, pool size (each model gets N/2 members)")
    parser.add_argument("--models", type=int, default=16, help="K, even")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--group-sizes", help="comma-separated group sizes to sweep (overrides --group-size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of every mode first")
    parser.add_argument("--augment", choices=["none", "cifar"], default="none", help="pool training augmentation")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16: autocast (mixed)")
    args = parser.parse_args()
    sizes = [int(g) for g in args.group_sizes.split(",")] if args.group_sizes else [args.group_size]
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banner
    torch.manual_seed(0)
    data = MembershipDataModule(
        RandomSource(args.examples, args.image_size, args.augment),
        num_models=args.models, pool_splits=["train"], target_split=None, batch_size=args.batch_size,
    )  # fmt: skip
    data.setup("fit")
    images = args.models * data.steps_per_epoch * args.batch_size * args.epochs
    seq: list[float] = []
    grouped: dict[int, list[float]] = {g: [] for g in sizes}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.warmup + args.repeats):  # warm-up rounds: one-time costs (allocator, kernels)
            seconds = [time_sequential(data, args)] + [time_grouped(data, g, root, args) for g in sizes]
            if r >= args.warmup:
                seq.append(seconds[0])
                for g, t in zip(sizes, seconds[1:]):
                    grouped[g].append(t)
    base = statistics.median(seq)
    print(
        f"backbone={args.backbone} image={args.image_size} N={args.examples} K={args.models} "
        f"batch={args.batch_size} steps/epoch={data.steps_per_epoch} epochs={args.epochs} augment={args.augment} "
        f"device={args.device} precision={args.precision} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(f"{'mode':<16} {'seconds':>9} {'images/s':>10} {'ratio':>7}  runs (s)")
    for name, runs in [("sequential", seq)] + [(f"grouped G={g}", grouped[g]) for g in sizes]:
        sec = statistics.median(runs)
        print(f"{name:<16} {sec:9.2f} {images / sec:10.1f} {base / sec:7.2f}  {', '.join(f'{r:.2f}' for r in runs)}")
    print("ratio = sequential / grouped time (>1: grouped faster); goal >= 3 on a GPU for small CNNs")


if __name__ == "__main__":
    main()
