"""SyntheticPoolDataModule: TCKR's periodic replacement of the synthetic training set.

TCKR (``seeds.md`` §3.2, ``synthetic_dataset_epochs_replacement``) generates a pool larger than the training set
and, every R epochs, trains on a fresh draw from it, so the student sees more distinct synthetic images without a
larger epoch. Here the pool is the train split of an ``ImageFolderDataModule`` (``train_roots`` = the generated
folder); it is shuffled once (seeded by ``split_seed``) and cut into disjoint draws of ``draw_size`` images; epochs
``[d * R, (d + 1) * R)`` train on draw ``d``. Lightning rebuilds the training loader every R epochs
(``trainer.reload_dataloaders_every_n_epochs: R``, checked at setup), so samplers, DDP sharding and workers are the
usual ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from datamodules.images import ImageFileDataset, ImageFolderDataModule


class SyntheticPoolDataModule(ImageFolderDataModule):
    """An ``ImageFolderDataModule`` whose training set is redrawn, disjoint, from its pool every R epochs."""

    def __init__(self, *args: Any, draw_size: int, replace_every_n_epochs: int, **kwargs: Any) -> None:
        """Args (besides ``ImageFolderDataModule``'s):
        draw_size: training images per draw (TCKR: cardinality x |real train|).
        replace_every_n_epochs: R, epochs trained on one draw before the next one replaces it.

        Raises:
            ValueError: draw_size or R below 1, or a pool with fewer images than one draw.
        """
        super().__init__(*args, **kwargs)
        if draw_size < 1:
            raise ValueError(f"data.draw_size: expected a positive number of images per draw; found {draw_size}")
        if replace_every_n_epochs < 1:
            raise ValueError(
                f"data.replace_every_n_epochs: expected a positive number of epochs; found {replace_every_n_epochs}"
            )
        self.hparams["draw_size"] = draw_size
        self.hparams["replace_every_n_epochs"] = replace_every_n_epochs
        self.draw_size = draw_size
        self.replace_every_n_epochs = replace_every_n_epochs
        pool = len(self._samples_by_split["train"])
        if pool < draw_size:
            raise ValueError(
                f"data.train_roots: the synthetic pool holds {pool} training images, fewer than one draw "
                f"(data.draw_size {draw_size}); generate a larger pool or lower draw_size"
            )
        self._pool_order: np.ndarray | None = None

    def draws_needed(self, max_epochs: int) -> int:
        """Number of disjoint draws a fit of ``max_epochs`` epochs uses."""
        return math.ceil(max_epochs / self.replace_every_n_epochs)

    def _check_trainer(self) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        every = trainer.reload_dataloaders_every_n_epochs
        if every != self.replace_every_n_epochs:
            raise ValueError(
                f"data.replace_every_n_epochs is {self.replace_every_n_epochs} but "
                f"trainer.reload_dataloaders_every_n_epochs is {every}; set them equal so the training loader is "
                "rebuilt at each replacement"
            )
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            raise ValueError("SyntheticPoolDataModule needs a finite trainer.max_epochs to size the pool")
        needed = self.draws_needed(max_epochs) * self.draw_size
        pool = len(self._samples_by_split["train"])
        if pool < needed:
            raise ValueError(
                f"data.train_roots: the synthetic pool holds {pool} training images, but {max_epochs} epochs with a "
                f"replacement every {self.replace_every_n_epochs} need {self.draws_needed(max_epochs)} disjoint "
                f"draws of {self.draw_size} = {needed}; generate at least {needed} images (or fewer epochs, a "
                "smaller draw_size or a larger replace_every_n_epochs)"
            )

    def setup(self, stage: str) -> None:
        """The parent's setup, plus the pool-size and reload-interval checks before fit."""
        if stage == "fit":
            self._check_trainer()
        super().setup(stage)
        if "train" in self._datasets and self._pool_order is None:
            # After the parent's corrupt-file checks, so the order covers exactly the readable pool.
            rng = np.random.default_rng([int(self.hparams.split_seed), 7])
            self._pool_order = rng.permutation(len(self._datasets["train"]))

    def draw_indices(self, draw: int) -> np.ndarray:
        """Indices into the pool (train split) of draw ``draw``."""
        order = self._pool_order
        if order is None:
            raise RuntimeError("SyntheticPoolDataModule: setup('fit') has not run, so the pool is not drawn yet")
        start = draw * self.draw_size
        if start + self.draw_size > len(order):
            raise ValueError(f"draw {draw} needs pool images up to {start + self.draw_size}; the pool has {len(order)}")
        return np.sort(order[start : start + self.draw_size])

    def current_draw(self) -> int:
        """The draw the current epoch trains on (0 outside a fit)."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return epoch // self.replace_every_n_epochs

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the current draw."""
        pool = self._datasets["train"]
        samples = [pool.samples[i] for i in self.draw_indices(self.current_draw())]
        hp = self.hparams
        return DataLoader(
            ImageFileDataset(samples, pool.transform),
            batch_size=hp.batch_size,
            shuffle=True,
            num_workers=hp.num_workers,
            persistent_workers=False,  # the loader is rebuilt every R epochs
        )

    def train_example_ids(self) -> list[str]:
        """Ids of every image the fit trains on: the draws of all its epochs, in draw order."""
        ids = super().train_example_ids()
        max_epochs = self.trainer.max_epochs if self.trainer is not None else self.replace_every_n_epochs
        draws = min(self.draws_needed(max_epochs), len(ids) // self.draw_size)
        return [ids[i] for d in range(draws) for i in self.draw_indices(d)]
