"""ImageClassifier training throughput vs a plain PyTorch loop, same model, data and optimiser, same run.

Prints images/s of both and the ratio ours / plain (goal >= 0.95). Both paths draw batches from the same
in-memory DataLoader; timing starts after ``--warmup`` steps and covers ``--steps`` steps; the two paths
alternate ``--repeats`` times and the medians are compared.

    .venv/bin/python benchmarks/classifier_step.py [--backbone resnet8-2 --image-size 28 --device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules import ImageClassifier


class RandomImages(Dataset):
    """Fixed random images and labels, returned as synthpriv batch dicts."""

    def __init__(self, n: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": i}


class StepTimer(Callback):
    """Wall time from the first timed step to the end of the last."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.end = time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_lightning(model: ImageClassifier, loader: DataLoader, args: argparse.Namespace) -> float:
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        precision=args.precision,
    )
    trainer.fit(model, train_dataloaders=loader)
    return args.steps * args.batch_size / (timer.end - timer.start)


def time_plain(model: ImageClassifier, loader: DataLoader, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    net = model.model.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=5e-5)
    autocast = args.precision == "bf16-mixed"
    step, start = 0, 0.0
    while step < args.warmup + args.steps:
        for batch in loader:
            if step == args.warmup:
                _sync(device)
                start = time.perf_counter()
            images, labels = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(net(images), labels, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == args.warmup + args.steps:
                break
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet8-2")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="32-true", help="Lightning precision; bf16-mixed on GPU")
    args = parser.parse_args()
    torch.manual_seed(0)
    template = ImageClassifier(
        backbone=args.backbone,
        num_classes=10,
        image_size=args.image_size,
        scheduler="none",
        label_smoothing=0.1,
        weight_decay=5e-5,
    )
    data = RandomImages(args.batch_size * (args.warmup + args.steps), args.image_size, 10)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=0)
    ours, plain = [], []
    for _ in range(args.repeats):
        plain.append(time_plain(copy.deepcopy(template), loader, args))
        ours.append(time_lightning(copy.deepcopy(template), loader, args))
    ours_med, plain_med = statistics.median(ours), statistics.median(plain)
    print(
        f"backbone={args.backbone} image={args.image_size} batch={args.batch_size} device={args.device} "
        f"precision={args.precision} threads={torch.get_num_threads()}"
    )
    print(f"plain PyTorch loop : {plain_med:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"ImageClassifier    : {ours_med:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in ours)})")
    print(f"ratio ours/plain   : {ours_med / plain_med:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
