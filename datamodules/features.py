"""FeatureDataModule: extracted feature vectors, optionally anonymised, for linear probes and CVAEs.

Batches are dicts ``{"features": (B, D) float32, "label": (B,), "index": (B,)}`` of **raw** features. The
z-scoring of the CVAE study (with the, possibly anonymised, training set's mean and std) belongs to the model:
``standardisation()`` gives those statistics and ``LinearProbe`` stores them as buffers, so a probe checkpoint
can be queried with raw features (by the test split and by membership attacks alike).

Anonymisers (``seeds.md`` §4): ``identity``; ``ksame`` (k-Same of the training features); ``cvae`` (a 1:1
replica sampled once from a FeatureCVAE checkpoint, seeded); ``cvae-online`` (``online_factor`` x |train| fresh
samples every epoch, decoded on the model's device; the labels follow the real class frequencies). Validation
and test features are always real. Test noise ``sigma`` is N(0, sigma^2) in the z-scored space, as the original
adds it after z-scoring. That space is each probe's own: anonymised sets spread less than the real one (k-Same
centroids at k = 20 keep about 0.73 of its std), so the same sigma is less raw noise for them. ``equal_noise``
adds loaders whose noise is sigma x the real training std, the same raw noise for every anonymiser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.anonymised import cvae_train, ksame_train
from datamodules.feature_files import FeatureSplit, read_class_names, read_feature_folder
from datamodules.hparams import save_own_hyperparameters
from datamodules.pool import MembershipPool
from privacy.ksame import ksame

Anonymiser = Literal["identity", "ksame", "cvae", "cvae-online"]
FeatureSplitName = Literal["train", "val", "test"]


class _FeatureSet(Dataset):
    def __init__(self, embeddings: np.ndarray, labels: np.ndarray) -> None:
        self.embeddings = torch.from_numpy(embeddings)
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"features": self.embeddings[index], "label": self.labels[index], "index": index}


class _SlotSet(Dataset):
    """Online training: only positions; the features are decoded per batch on the device."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index}


def _mean_and_std(embeddings: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(D,) float64 mean and std (ddof 0) of (N, D) features; a zero std counts as 1 (constant features)."""
    x = torch.from_numpy(embeddings).double()
    std = x.std(0, correction=0)
    return x.mean(0), torch.where(std > 0, std, torch.ones_like(std))


class FeatureDataModule(LightningDataModule):
    """Train/val/test feature vectors from a feature folder, with the CVAE study's anonymisers."""

    def __init__(
        self,
        root: str,
        anonymiser: Anonymiser = "identity",
        k: int | None = None,
        cvae_checkpoint: str | None = None,
        cvae_seed: int = 42,
        variance: float = 1.0,
        online_factor: int = 10,
        sigma: float | list[float] = 0.0,
        noise_seed: int = 0,
        equal_noise: bool = False,
        predict_split: FeatureSplitName = "test",
        class_names: list[str] | None = None,
        cache_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        """Check the options and read the class list (the features are read in ``setup``).

        Args:
            root: folder with train.npz, val.npz, test.npz (embeddings, labels, ids) and manifest.json.
            anonymiser: identity, ksame, cvae (offline replica) or cvae-online (fresh samples every epoch).
            k: cluster size of k-Same (2 <= k <= number of training examples).
            cvae_checkpoint: FeatureCVAE checkpoint for cvae / cvae-online: a file, or the CVAE's run folder
                (its best checkpoint).
            cvae_seed: seed of the CVAE samples (the original's --seed).
            variance: multiplier of the prior's standard deviation when sampling (the original's --variance).
            online_factor: cvae-online draws online_factor x |train| samples per epoch (the original: 10).
            sigma: std of the Gaussian noise added to the z-scored test features (floats allowed; 0: none); a
                list gives one test loader per value (the original re-tests one probe per sigma).
            noise_seed: seed of the test noise.
            equal_noise: also test every sigma > 0 with noise of sigma x the **real** training set's std (metric
                keys test/real_sigma<s>/...), the same raw noise whatever the anonymiser; sigma alone is in the
                probe's own z-scored space, as the original.
            predict_split: split that `predict` runs on.
            class_names: class names in label order; default those of root/manifest.json.
            cache_dir: where anonymised training sets are cached; default root/anonymised.
            batch_size: training batch size (the original: 128).
            eval_batch_size: batch size of val/test/predict; default batch_size.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        if anonymiser == "ksame" and k is None:
            raise ValueError("data.anonymiser=ksame needs data.k (the k-Same cluster size)")
        if anonymiser in ("cvae", "cvae-online") and not cvae_checkpoint:
            raise ValueError(f"data.anonymiser={anonymiser} needs data.cvae_checkpoint (a FeatureCVAE checkpoint)")
        sigmas = [float(v) for v in (sigma if isinstance(sigma, list) else [sigma])]
        if not sigmas or len(set(sigmas)) != len(sigmas):
            raise ValueError(f"data.sigma: give one value or a list of distinct values; got {sigma}")
        for name, value in [*(("sigma", v) for v in sigmas), ("variance", variance)]:
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"data.{name} must be a finite number >= 0; got {value}")
        if online_factor < 1:
            raise ValueError(f"data.online_factor must be at least 1; got {online_factor}")
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size is not None and size < 1:
                raise ValueError(f"data.{name}: expected a positive number of examples per batch; found {size}")
        save_own_hyperparameters(self, ignore=["class_names"])
        self.test_sigmas = sigmas
        # One test loader per name: the original's per-probe noise, then equal raw noise (sigma 0 is shared).
        self.test_loader_names = [f"sigma{v:g}" for v in sigmas]
        if equal_noise:
            self.test_loader_names += [f"real_sigma{v:g}" for v in sigmas if v > 0]
        self.root = Path(root)
        self._class_names = read_class_names(self.root, class_names)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / "anonymised"
        self.splits: dict[str, FeatureSplit] = {}
        self.real_train: FeatureSplit | None = None
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        self._real_std: torch.Tensor | None = None
        self._decoder: Any = None
        self._feature_dim: int | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (linked into the model)."""
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (linked into the model)."""
        return list(self._class_names)

    @property
    def feature_dim(self) -> int:
        """Feature size D (linked into the model); read from the train file's header."""
        if self._feature_dim is None:
            with np.load(self._file("train"), allow_pickle=False) as data:
                if "embeddings" not in data.files:
                    raise ValueError(f"{self._file('train')} lacks key 'embeddings'; it holds {sorted(data.files)}")
                self._feature_dim = int(data["embeddings"].shape[-1])
        return self._feature_dim

    def _file(self, split: str) -> Path:
        path = self.root / f"{split}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"data.root: feature file {path} does not exist (expected train/val/test.npz)")
        return path

    # ---- reading and anonymising ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Compute (once, on one process) the anonymised training set, cached under cache_dir."""
        self._anonymised_train(read_feature_folder(self.root, self.num_classes, ("train",))["train"])

    def _anonymised_train(self, train: FeatureSplit) -> FeatureSplit:
        hp = self.hparams
        if hp.anonymiser == "ksame":
            return ksame_train(train, self._file("train"), hp.k, self.cache_dir, self.num_classes)
        if hp.anonymiser == "cvae":
            checkpoint = self._cvae_checkpoint()
            return cvae_train(train, checkpoint, hp.cvae_seed, hp.variance, self.cache_dir, self.num_classes)
        return train

    def _cvae_checkpoint(self) -> Path:
        from tools.target_logits import resolve_target_checkpoint

        try:
            return Path(resolve_target_checkpoint(self.hparams.cvae_checkpoint))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"data.cvae_checkpoint: {self.hparams.cvae_checkpoint} is neither a checkpoint file nor a run folder "
                f"with checkpoints ({err}); train the CVAE first (synthpriv fit with FeatureCVAE)"
            ) from err

    def setup(self, stage: str) -> None:
        """Read every split, anonymise the training set and fix the z-scoring statistics."""
        if self.splits:
            return
        hp = self.hparams
        loaded = read_feature_folder(self.root, self.num_classes)
        self.real_train = loaded["train"]
        self.splits = dict(loaded)
        self.splits["train"] = self._anonymised_train(self.real_train)
        # The probe's z-scoring: the anonymised training set's statistics, except online, where the original
        # z-scores with the real training set (the CVAE is trained and sampled in that space).
        basis = self.real_train if hp.anonymiser == "cvae-online" else self.splits["train"]
        mean, std = _mean_and_std(basis.embeddings)
        self._mean, self._std = mean.float(), std.float()
        self._real_std = _mean_and_std(self.real_train.embeddings)[1]
        # One noise draw, scaled per loader: the noise levels differ only in size, as with a fixed seed.
        test = self.splits["test"]
        draw = np.random.default_rng(hp.noise_seed).standard_normal(test.embeddings.shape)
        scales = [s * self._std.numpy() for s in self.test_sigmas]
        scales += [s * self._real_std.numpy() for s in self.test_sigmas if s > 0 and hp.equal_noise]
        self.noisy_tests = [
            FeatureSplit((test.embeddings + draw * scale).astype(np.float32), test.labels, test.ids) for scale in scales
        ]
        if hp.anonymiser == "cvae-online":
            from lightning_modules.cvae import load_feature_cvae

            self._decoder = load_feature_cvae(self._cvae_checkpoint(), self.feature_dim, self.num_classes)
            counts = np.bincount(self.real_train.labels, minlength=self.num_classes)
            self._class_probs = torch.from_numpy(counts / counts.sum())

    def standardisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D,) mean and std (ddof 0, zeros replaced by 1) the model z-scores its inputs with."""
        if self._mean is None:
            self.setup("fit")
        return self._mean.clone(), self._std.clone()

    def noise_scale(self) -> float:
        """Raw noise of one unit of sigma relative to data.equal_noise's (root mean square of the probe's z-scoring
        std over the real training std): below 1 when the anonymised set spreads less than the real one."""
        self.setup("fit")
        return float(torch.sqrt((self._std.double() ** 2).sum() / (self._real_std**2).sum()))

    def train_features(self) -> torch.Tensor:
        """(N, D) training features as trained on (anonymised; the real ones for cvae-online)."""
        self.setup("fit")
        source = self.real_train if self.hparams.anonymiser == "cvae-online" else self.splits["train"]
        return torch.from_numpy(source.embeddings)

    def audit_samples(self) -> np.ndarray:
        """(N, D) anonymised training vectors for distance audits; cvae-online: one replica-sized fresh draw."""
        self.setup("fit")
        if self.hparams.anonymiser != "cvae-online":
            return self.splits["train"].embeddings
        from lightning_modules.cvae import cvae_replica

        hp = self.hparams
        return cvae_replica(self._decoder.cpu(), self.real_train.labels, seed=hp.cvae_seed, std=hp.variance)

    def anonymise_members(self, features: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """A shadow model's member features through this module's anonymiser, for anonymiser-aware shadows
        (MembershipDataModule.anonymise_members): identity leaves them; ksame gives their k-Same centroids
        (dropping the last N mod k, as for the target). The CVAE anonymisers would need a CVAE trained on each
        shadow's members, which is not built: they are refused."""
        hp = self.hparams
        if hp.anonymiser == "identity":
            return features, labels
        if hp.anonymiser != "ksame":
            raise ValueError(
                f"data.source.anonymiser={hp.anonymiser}: anonymiser-aware shadows would need a CVAE trained on every "
                "shadow model's members, which synthpriv does not do; use identity or ksame, or shadows on real "
                "features (data.anonymise_members: false)"
            )
        if not 2 <= hp.k <= len(labels):
            raise ValueError(f"data.source.k={hp.k}: a shadow model has {len(labels)} members; k-Same needs k <= that")
        centroids, kept = ksame(features.detach().cpu().numpy(), labels, hp.k)
        return torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)), kept

    def example_ids(self, split: FeatureSplitName) -> list[str]:
        """Ids of a split in index order (anonymised training rows keep the ids of the rows they replace)."""
        self.setup("fit")
        return list(self.splits[split].ids)

    def membership_pool(self, split: FeatureSplitName) -> MembershipPool:
        """A split's **real** features (membership concerns real records), for shadow models."""
        self.setup("fit")
        part = self.real_train if split == "train" else self.splits[split]
        return MembershipPool(torch.from_numpy(part.embeddings.copy()), part.labels.copy(), list(part.ids))

    # ---- loaders --------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool, part: FeatureSplit | None = None) -> DataLoader:
        part = part or self.splits[split]
        hp = self.hparams
        return DataLoader(
            _FeatureSet(part.embeddings, part.labels),
            batch_size=hp.batch_size if shuffle else hp.eval_batch_size or hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training features; cvae-online: online_factor x |train| slots decoded per batch."""
        if self.hparams.anonymiser == "cvae-online":
            length = self.hparams.online_factor * len(self.real_train)
            return DataLoader(_SlotSet(length), batch_size=self.hparams.batch_size, shuffle=False)
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test features plus N(0, sigma^2) noise in z-scored space: one loader per test_loader_names."""
        loaders = [self._loader("test", False, part) for part in self.noisy_tests]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """cvae-online: decode fresh samples for the batch's slots on the batch's device.

        The draws are seeded by (cvae_seed, epoch, first slot), so a resumed or repeated run sees the same
        samples, and DDP ranks (which get different slots) see different ones.
        """
        if "features" in batch or self._decoder is None:
            return batch
        index = batch["index"]
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        seed = np.random.SeedSequence([self.hparams.cvae_seed, epoch, int(index[0])]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        labels = torch.multinomial(self._class_probs, len(index), replacement=True, generator=generator)
        self._decoder.to(index.device)
        features = self._decoder.sample(labels.to(index.device), std=self.hparams.variance, generator=generator)
        return {"features": features, "label": labels.to(index.device), "index": index}

    def train_example_ids(self) -> list[str]:
        """Ids of the **real** records whose information the training loss saw (the fit records them in
        ``<run>/trained_ids.txt``; the same strings as ``membership_pool('train')``): identity, the training
        split; ksame, the records the centroids average (the last N mod k are dropped); cvae and cvae-online,
        the CVAE's training records (its run's trained_ids.txt when recorded, else this root's training split)."""
        self.setup("fit")
        if self.hparams.anonymiser == "ksame":
            return list(self.splits["train"].ids)
        if self.hparams.anonymiser in ("cvae", "cvae-online"):
            from tools.trained_ids import read_trained_ids

            recorded = read_trained_ids(self._cvae_checkpoint())
            if recorded is not None:
                return recorded
        return list(self.real_train.ids)
