"""MembershipDataModule: the membership design of a shadow-model ensemble over any pool-capable data module.

Two constructions:

- ``balanced`` (reference LiRA, Carlini et al. 2022): the pool is the union of ``pool_splits`` of the source;
  a seeded K x N mask puts every example IN for exactly K/2 models. The shadows are queried on the whole
  pool. For a target trained on ``target_split`` (e.g. a teacher on ``train``), the pool examples of that
  split are its members and the rest its non-members (``target_members.txt`` / ``target_non_members.txt``).
- ``tckr`` (TCKR's notebook, ``seeds.md`` §3.4, flagged): the shadows train on balanced halves of the
  *test* split; the challenge set is ``challenge_size`` random train images (members of the target, never IN
  for any shadow) and as many random test images (non-members). Only offline attacks (or TCKR's global
  variant) are meaningful here, since no shadow ever trained on a member.

Training batches are built in the training step from the in-memory pool (``train_batch``): each of the K
models draws its own shuffled batch of its own members every step, so a model's loss only ever sees its
members. The loader itself only yields step numbers. Predict batches are the query set under Q views.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.pool import MembershipPool, QueryAugment, query_offsets, query_views
from privacy.membership import balanced_mask, ids_hash, load_mask, save_mask
from tools.files import write_text_atomic

Construction = Literal["balanced", "tckr"]
MEMBERSHIP_DIR = "membership"


class _QuerySet(Dataset):
    def __init__(self, pool: MembershipPool, queries: QueryAugment) -> None:
        self.pool, self.queries = pool, queries

    def __len__(self) -> int:
        return len(self.pool.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        views = query_views(self.pool, torch.tensor([index]), self.queries)[0]
        return {"image": views, "label": int(self.pool.labels[index]), "index": index}


class MembershipDataModule(LightningDataModule):
    """K x N membership design over the examples of a source data module."""

    def __init__(
        self,
        source: LightningDataModule,
        num_models: int = 16,
        construction: Construction = "balanced",
        pool_splits: list[str] | None = None,
        target_split: str | None = "train",
        challenge_size: int = 1000,
        mask_seed: int = 0,
        shuffle_seed: int = 0,
        batch_size: int = 128,
        queries: QueryAugment = "mirror",
        query_batch_size: int = 256,
        num_workers: int = 0,
        anonymise_members: bool = False,
        population_size: int = 0,
    ) -> None:
        """Fix the design (the pool itself is read in ``setup``).

        Args:
            source: data module holding the examples (e.g. ImageFolderDataModule with the target's data
                settings: same folders, fractions, split seed, image size, transform and normalisation).
            num_models: K, the number of shadow models (even, >= 2).
            construction: 'balanced' (reference LiRA) or 'tckr' (TCKR's notebook, flagged).
            pool_splits: source splits forming the pool (balanced); default ['train', 'test'].
            target_split: the pool split the attacked target trained on; its examples are written as the
                target's members. None writes no member lists.
            challenge_size: tckr only: members drawn from train and non-members drawn from test.
            mask_seed: seed of the membership mask (and of the tckr challenge draw).
            shuffle_seed: seed of every model's batch order and augmentation.
            batch_size: examples per model per step.
            queries: query views per example: 'none' (1), 'mirror' (2) or 'mirror_shifts' (18).
            query_batch_size: examples per predict batch.
            num_workers: predict loader workers.
            anonymise_members: train every shadow on its members passed through the source's anonymiser
                (``source.anonymise_members``; FeatureDataModule: identity or k-Same), mirroring a target trained
                on anonymised data; the shadows are still queried on the real pool. Off: shadows train on the
                real examples.
            population_size: balanced only: this many of the target's non-members (seeded by mask_seed) form
                RMIA's population of known non-members, written to ``membership/population.txt`` and flagged in
                the mask and ``shadows.npz``; they are removed from ``target_non_members.txt``, so attacks never
                evaluate on them. 0: no population (RMIA then needs ``synthpriv attack --population_file``).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["source"])
        if num_models < 2 or num_models % 2:
            raise ValueError(
                f"data.num_models must be even and at least 2 (each example IN for exactly half); got {num_models}"
            )
        if batch_size < 1 or query_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.query_batch_size must be positive; got {batch_size}, {query_batch_size}"
            )
        if population_size < 0:
            raise ValueError(f"data.population_size must be 0 or positive; got {population_size}")
        if population_size and (construction != "balanced" or target_split is None):
            raise ValueError(
                "data.population_size needs construction 'balanced' and a target_split: the population is drawn "
                f"from the target's non-members; got construction {construction!r}, target_split {target_split!r}"
            )
        if construction == "tckr" and challenge_size < 1:
            raise ValueError(f"data.challenge_size must be positive; got {challenge_size}")
        if anonymise_members and not hasattr(source, "anonymise_members"):
            raise ValueError(
                f"data.anonymise_members: {type(source).__name__} has no anonymiser to pass the members through"
            )
        if not hasattr(source, "membership_pool"):
            raise ValueError(
                f"data.source: {type(source).__name__} cannot provide an in-memory pool (no membership_pool method)"
            )
        self.source = source
        self.pool_splits = list(pool_splits or ["train", "test"])
        if construction == "balanced" and target_split is not None and target_split not in self.pool_splits:
            raise ValueError(f"data.target_split {target_split!r} is not among data.pool_splits {self.pool_splits}")
        self.pool: MembershipPool | None = None  # what the shadows train on (N examples)
        self.mask: np.ndarray | None = None  # (K, N)
        self.query: MembershipPool | None = None  # what the shadows are queried on (M examples)
        self.query_mask: np.ndarray | None = None  # (K, M)
        self.target_members: list[str] = []
        self.target_non_members: list[str] = []
        self.population: list[str] = []  # RMIA's known non-members, kept apart from the evaluated examples
        self._orders: dict[int, np.ndarray] = {}
        self._train_pool: MembershipPool | None = None  # what the shadows train on (anonymised or the pool)
        self._train_members: list[np.ndarray] | None = None  # per model: its positions in _train_pool

    @property
    def num_classes(self) -> int:
        """Number of classes of the source (linked into the model)."""
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names of the source (linked into the model)."""
        return self.source.class_names

    @property
    def input_size(self) -> int:
        """Input side in pixels of the source (linked into the model)."""
        return self.source.input_size

    @property
    def feature_dim(self) -> int:
        """Feature size of a feature-vector source (linked into the model); images have none."""
        return self.source.feature_dim

    @property
    def num_models(self) -> int:
        """K."""
        return self.hparams.num_models

    def setup(self, stage: str) -> None:
        """Read the pool and build mask, query set and member lists (deterministic from the seeds)."""
        if self.pool is not None:
            return
        hp = self.hparams
        if hp.construction == "balanced":
            parts = {split: self.source.membership_pool(split) for split in self.pool_splits}
            self.pool = MembershipPool.concat(list(parts.values()))
            self.mask = balanced_mask(hp.num_models, len(self.pool.ids), hp.mask_seed)
            self.query, self.query_mask = self.pool, self.mask
            if hp.target_split is not None:
                members = set(parts[hp.target_split].ids)
                self.target_members = [i for i in self.pool.ids if i in members]
                self.target_non_members = [i for i in self.pool.ids if i not in members]
                self._draw_population()
            self._check_every_model_has_members()
            return
        train, test = self.source.membership_pool("train"), self.source.membership_pool("test")
        for split, part in (("train", train), ("test", test)):
            if len(part.ids) < hp.challenge_size:
                raise ValueError(f"data.challenge_size={hp.challenge_size} but the {split} split has {len(part.ids)}")
        self.pool = test
        self.mask = balanced_mask(hp.num_models, len(test.ids), hp.mask_seed)
        rng = np.random.default_rng([hp.mask_seed, 1])
        members = np.sort(rng.choice(len(train.ids), hp.challenge_size, replace=False))
        non_members = np.sort(rng.choice(len(test.ids), hp.challenge_size, replace=False))
        self.query = MembershipPool.concat([train.subset(members), test.subset(non_members)])
        never_in = np.zeros((hp.num_models, hp.challenge_size), dtype=bool)
        self.query_mask = np.concatenate([never_in, self.mask[:, non_members]], axis=1)
        self.target_members = [train.ids[i] for i in members]
        self.target_non_members = [test.ids[i] for i in non_members]
        self._check_every_model_has_members()

    def _draw_population(self) -> None:
        """Move ``population_size`` seeded target non-members into RMIA's population."""
        size = self.hparams.population_size
        if not size:
            return
        if size >= len(self.target_non_members):
            raise ValueError(
                f"data.population_size={size} leaves no evaluated non-members: the target has "
                f"{len(self.target_non_members)} non-members in the pool; use fewer"
            )
        rng = np.random.default_rng([self.hparams.mask_seed, 2])
        chosen = set(rng.choice(len(self.target_non_members), size, replace=False).tolist())
        self.population = [i for k, i in enumerate(self.target_non_members) if k in chosen]
        self.target_non_members = [i for k, i in enumerate(self.target_non_members) if k not in chosen]

    def _population_flags(self) -> np.ndarray | None:
        if not self.population:
            return None
        return np.isin(np.asarray(self.query.ids), self.population)

    def _check_every_model_has_members(self) -> None:
        empty = np.flatnonzero(self.mask.sum(axis=1) == 0)
        if len(empty):
            raise ValueError(
                f"data: shadow model {int(empty[0])} has no member examples: the pool of {self.mask.shape[1]} examples "
                f"is too small for data.num_models={self.hparams.num_models}; use more examples or fewer models"
            )

    # ---- training: every model its own member batches -------------------------------------------------
    def _training_sets(self) -> tuple[MembershipPool, list[np.ndarray]]:
        """The examples the shadows train on and each model's positions in them (built on first use, so
        querying never pays for the anonymisation)."""
        if self._train_members is None:
            if not self.hparams.anonymise_members:
                self._train_pool, self._train_members = self.pool, [np.flatnonzero(row) for row in self.mask]
            else:
                if self.pool.is_image:
                    raise ValueError("data.anonymise_members works on feature-vector pools, not images")
                parts, members, start = [], [], 0
                for k, row in enumerate(self.mask):
                    positions = np.flatnonzero(row)
                    inputs, labels = self.source.anonymise_members(
                        self.pool.inputs[positions], self.pool.labels[positions]
                    )
                    parts.append(MembershipPool(inputs, labels, [f"shadow{k}/{i}" for i in range(len(labels))]))
                    members.append(np.arange(start, start + len(labels)))
                    start += len(labels)
                self._train_pool, self._train_members = MembershipPool.concat(parts), members
        return self._train_pool, self._train_members

    @property
    def steps_per_epoch(self) -> int:
        """Steps of one epoch: the mean member count per model over the batch size, rounded up."""
        _, members = self._training_sets()
        return max(1, math.ceil(np.mean([len(m) for m in members]) / self.hparams.batch_size))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(K, steps * B) pool positions: each model's members shuffled, wrapping round when it has fewer."""
        if epoch not in self._orders:
            hp, length = self.hparams, self.steps_per_epoch * self.hparams.batch_size
            order = np.empty((hp.num_models, length), dtype=np.int64)
            for k, members in enumerate(self._training_sets()[1]):
                rng = np.random.default_rng([hp.shuffle_seed, epoch, k])
                reps = math.ceil(length / len(members))
                order[k] = np.concatenate([rng.permutation(members) for _ in range(reps)])[:length]
            self._orders = {epoch: order}  # one epoch cached at a time
        return self._orders[epoch]

    def train_batch(self, epoch: int, step: int, device: torch.device) -> dict[str, torch.Tensor]:
        """(K, B, ...) inputs and (K, B) labels of ``step`` in ``epoch``, augmented like the source."""
        pool, _ = self._training_sets()
        if pool.inputs.device != device:
            pool.inputs = pool.inputs.to(device)
        b = self.hparams.batch_size
        positions = torch.from_numpy(self.epoch_order(epoch)[:, step * b : (step + 1) * b])
        seed = np.random.SeedSequence([self.hparams.shuffle_seed, epoch, step]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        inputs = pool.training_inputs(positions, generator)
        labels = torch.from_numpy(pool.labels[positions.numpy()]).to(device)
        return {"image": inputs, "label": labels}

    def member_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, D) mean and standard deviation (ddof 0) of the features each model trains on (feature pools
        only; with anonymise_members, those of its anonymised members, as the target probe z-scores)."""
        if self.pool is None or self.pool.is_image:
            raise ValueError("member statistics exist for feature-vector pools after setup")
        pool, positions = self._training_sets()
        x = pool.inputs.detach().cpu().double()
        members = [x[torch.from_numpy(row)] for row in positions]
        mean = torch.stack([m.mean(0) for m in members]).float()
        return mean, torch.stack([m.std(0, correction=0) for m in members]).float()

    def train_dataloader(self) -> DataLoader:
        """Step numbers of one epoch (the training step assembles the K member batches)."""
        return DataLoader(range(self.steps_per_epoch), batch_size=None, shuffle=False)

    # ---- querying: every example under Q views ----------------------------------------------------------
    @property
    def num_queries(self) -> int:
        """Q."""
        return len(query_offsets(self.hparams.queries))

    def predict_dataloader(self) -> DataLoader:
        """Query examples in order, each as (Q, ...) views."""
        return DataLoader(
            _QuerySet(self.query, self.hparams.queries),
            batch_size=self.hparams.query_batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
        )

    def example_ids(self, split: str = "query") -> list[str]:
        """Ids of the query set (the examples the shadows' logits are saved for)."""
        return list(self.query.ids)

    # ---- bookkeeping next to the run --------------------------------------------------------------------
    def save_membership(self, run_dir: str | Path) -> Path:
        """Write (or, on resume, check) ``membership/mask.npz`` and the target's member lists."""
        folder = Path(run_dir) / MEMBERSHIP_DIR
        mask_file = folder / "mask.npz"
        population = self._population_flags()
        if mask_file.is_file():
            saved = load_mask(mask_file, self.pool.ids)
            with np.load(mask_file, allow_pickle=False) as data:
                saved_population = data["population"] if "population" in data.files else None
            same_population = (saved_population is None and population is None) or (
                saved_population is not None and population is not None and np.array_equal(saved_population, population)
            )
            if not np.array_equal(saved, self.mask) or not same_population:
                raise ValueError(
                    f"{mask_file} holds another membership design than data.num_models/mask_seed/population_size "
                    "give now; resume with the original settings or start a new run (--run.name)"
                )
        else:
            save_mask(mask_file, self.mask, self.pool.ids, self.hparams.mask_seed, population)
        if self.target_members:
            write_text_atomic(folder / "target_members.txt", "\n".join(self.target_members) + "\n")
            write_text_atomic(folder / "target_non_members.txt", "\n".join(self.target_non_members) + "\n")
        if self.population:
            write_text_atomic(folder / "population.txt", "\n".join(self.population) + "\n")
        return folder

    def query_design(self) -> dict[str, np.ndarray]:
        """Arrays stored with the shadows' logits: query ids, labels, mask, the ids hash and (with a population)
        the (M,) bool RMIA population flags."""
        design = {
            "ids": np.asarray(self.query.ids),
            "labels": self.query.labels,
            "mask": self.query_mask,
            "ids_hash": np.asarray(ids_hash(self.query.ids)),
        }
        population = self._population_flags()
        if population is not None:
            design["population"] = population
        return design
