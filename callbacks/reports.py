"""TestReport: a Markdown summary and a PNG grid of test images with their predictions (also sent to W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from callbacks.run_dir import metrics_to_floats
from tools.files import atomic_path, write_text_atomic

ABSENT = "–"  # a metric that is NaN (None after metrics_to_floats), e.g. the accuracy of a class with no examples


class TestReport(Callback):
    """After `test`: ``<run>/test/summary.md`` and ``<run>/test/predictions.png``.

    The grid shows the first ``num_images`` test images with predicted and true class (green when right).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, num_images: int = 32, columns: int = 8, title: str | None = None) -> None:
        """Args:
        num_images: images in the grid.
        columns: grid columns.
        title: heading of the summary; default the run folder name.
        """
        super().__init__()
        self.num_images = num_images
        self.columns = columns
        self.title = title
        self._images: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._preds: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Reset the collected images."""
        self._images, self._labels, self._preds = [], [], []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep up to an equal share of images per class until the grid is full (test sets are often sorted)."""
        if not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        quota = -(-self.num_images // pl_module.hparams["num_classes"])
        labels = batch["label"].detach().cpu()
        have = sum(len(x) for x in self._labels)
        # labels[:0] keeps torch.cat valid before the first kept batch.
        counts = torch.bincount(torch.cat([*self._labels, labels[:0]]), minlength=pl_module.hparams["num_classes"])
        keep = []
        for i, label in enumerate(labels.tolist()):
            if have + len(keep) >= self.num_images:
                break
            if counts[label] < quota:
                counts[label] += 1
                keep.append(i)
        if keep:
            self._images.append(batch["image"][keep].detach().cpu())
            self._labels.append(labels[keep])
            self._preds.append(outputs["logits"][keep].argmax(dim=1).cpu())

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the grid and the summary on rank zero."""
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        folder = Path(trainer.default_root_dir) / "test"
        names = pl_module.hparams.get("class_names") or [str(i) for i in range(pl_module.hparams["num_classes"])]
        metrics = metrics_to_floats(trainer.callback_metrics)
        grid_path = folder / "predictions.png"
        if self._images:
            figure = self._grid(trainer, names)
            with atomic_path(grid_path) as tmp:
                figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image("test/predictions", [figure])
            plt.close(figure)
        write_text_atomic(folder / "summary.md", self._markdown(trainer, metrics, names))

    def _grid(self, trainer: Trainer, names: list[str]) -> plt.Figure:
        images = torch.cat(self._images)
        labels, preds = torch.cat(self._labels), torch.cat(self._preds)
        datamodule = trainer.datamodule
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is not None and std is not None:
            images = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        images = images.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        rows = int(np.ceil(len(images) / self.columns))
        fig, axes = plt.subplots(rows, self.columns, figsize=(1.6 * self.columns, 1.8 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, image, label, pred in zip(axes.flat, images, labels.tolist(), preds.tolist()):
            ax.imshow(image)
            ax.set_title(f"{names[pred]}\n({names[label]})", fontsize=7, color="green" if pred == label else "red")
        fig.suptitle("test images: predicted (true)", fontsize=9)
        return fig

    def _markdown(self, trainer: Trainer, metrics: dict[str, float], names: list[str]) -> str:
        title = self.title or Path(trainer.default_root_dir).name
        lines = [f"# {title}: test results", ""]
        main = [k for k in ("test/acc", "test/acc_top5", "test/auroc", "test/loss") if k in metrics]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(metrics[k])} |" for k in main]
        per_class = [(n, metrics[f"test/acc_class/{n}"]) for n in names if f"test/acc_class/{n}" in metrics]
        if per_class:
            lines += ["", "## Accuracy per class", "", "| class | accuracy |", "|---|---|"]
            lines += [f"| {n} | {_fmt(v)} |" for n, v in per_class]
            absent = [n for n, v in per_class if v is None]
            if absent:
                present = len(names) - len(absent)
                lines += [
                    "",
                    f"{ABSENT}: no test examples of {', '.join(absent)} (absent); test/auroc is the macro average "
                    f"over the {present} present class(es).",
                ]
        if self._images:
            lines += ["", "![test predictions](predictions.png)"]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return ABSENT if value is None else f"{value:.4f}"
