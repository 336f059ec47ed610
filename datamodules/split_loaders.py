"""DataLoaders of a data module that keeps one dataset per split in ``self._datasets`` (shared by the image,
SpinML and human-annotation data modules)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader


class SplitLoaders:
    """Mixin: ``train/val/test_dataloader`` from ``self._datasets[split]`` and the hyperparameters ``batch_size``,
    ``eval_batch_size`` (None: batch_size), ``num_workers``. Training batches are shuffled; a module without a
    "val" dataset (val_fraction 0) gets no validation loader."""

    _datasets: dict[str, Any]
    hparams: Any

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self._datasets[split],
            batch_size=hp.batch_size if split == "train" else (hp.eval_batch_size or hp.batch_size),
            shuffle=shuffle,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (none when there is no validation split)."""
        return self._loader("val", shuffle=False) if "val" in self._datasets else []

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test", shuffle=False)
