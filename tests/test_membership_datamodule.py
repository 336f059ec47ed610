"""MembershipPool (batched augmentation, query views) and MembershipDataModule (balanced and TCKR designs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import tiny_dataset
from lightning import LightningDataModule

from cli import SynthPrivCLI
from datamodules import ImageFolderDataModule, MembershipDataModule
from datamodules.pool import MembershipPool
from privacy.membership import ids_hash, load_mask

K = 4
N_PER_SPLIT = 24  # tiny_dataset: 3 classes x 8 images per split


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("membership") / "data")


def _source(root: Path, transform: str = "none") -> ImageFolderDataModule:
    return ImageFolderDataModule(
        train_roots=str(root / "train"),
        val_root=str(root / "val"),
        test_root=str(root / "test"),
        image_size=16,
        transform=transform,
    )


def _design(root: Path, transform: str = "none", **kwargs) -> MembershipDataModule:
    kwargs.setdefault("num_models", K)
    dm = MembershipDataModule(_source(root, transform), **kwargs)
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------- designs


def test_balanced_design(data_root: Path, tmp_path: Path) -> None:
    dm = _design(data_root, mask_seed=0)
    source = dm.source
    train_ids, test_ids = source.example_ids("train"), source.example_ids("test")
    assert dm.pool.ids == train_ids + test_ids and len(dm.pool.ids) == 2 * N_PER_SPLIT
    assert dm.mask.shape == (K, 2 * N_PER_SPLIT) and dm.mask.dtype == bool
    assert (dm.mask.sum(axis=0) == K // 2).all()
    assert dm.target_members == train_ids and dm.target_non_members == test_ids
    assert all(i.startswith("train0/") for i in dm.target_members)
    assert dm.num_classes == 3 and dm.class_names == ["ant", "bee", "cow"] and dm.input_size == 16

    design = dm.query_design()
    assert list(design["ids"]) == dm.pool.ids
    assert np.array_equal(design["mask"], dm.mask)
    assert np.array_equal(design["labels"], dm.pool.labels)
    assert str(design["ids_hash"]) == ids_hash(dm.pool.ids)

    assert np.array_equal(_design(data_root, mask_seed=0).mask, dm.mask)  # deterministic
    assert not np.array_equal(_design(data_root, mask_seed=1).mask, dm.mask)

    wide = _design(data_root, num_models=6, pool_splits=["train", "val", "test"])
    assert wide.mask.shape == (6, 3 * N_PER_SPLIT) and (wide.mask.sum(axis=0) == 3).all()
    assert wide.target_members == train_ids
    assert wide.target_non_members == source.example_ids("val") + test_ids

    none = _design(data_root, target_split=None)
    assert none.target_members == [] and none.target_non_members == []
    assert not (none.save_membership(tmp_path / "none") / "target_members.txt").exists()


def test_rmia_population_is_drawn_from_target_non_members_and_kept_apart(data_root: Path, tmp_path: Path) -> None:
    dm = _design(data_root, mask_seed=0, population_size=5)
    test_ids = dm.source.example_ids("test")
    # 5 of the 24 test images (the target's non-members) become the population; 19 stay evaluated non-members.
    assert len(dm.population) == 5 and set(dm.population) <= set(test_ids)
    assert sorted(dm.population + dm.target_non_members) == sorted(test_ids)
    assert not set(dm.population) & set(dm.target_members)
    design = dm.query_design()
    assert design["population"].sum() == 5 and set(design["ids"][design["population"]]) == set(dm.population)
    folder = dm.save_membership(tmp_path / "run")
    assert (folder / "population.txt").read_text().split() == dm.population
    assert len((folder / "target_non_members.txt").read_text().split()) == 19
    assert _design(data_root, mask_seed=0, population_size=5).population == dm.population  # seeded
    with pytest.raises(ValueError, match="another membership design"):
        _design(data_root, mask_seed=0, population_size=4).save_membership(tmp_path / "run")
    with pytest.raises(ValueError, match="population_size=24 leaves no evaluated non-members"):
        _design(data_root, population_size=24)
    with pytest.raises(ValueError, match="population_size needs construction 'balanced' and a target_split"):
        MembershipDataModule(_source(data_root), num_models=K, target_split=None, population_size=3)


def test_save_membership_writes_and_checks_the_design(data_root: Path, tmp_path: Path) -> None:
    dm = _design(data_root, mask_seed=0)
    folder = dm.save_membership(tmp_path / "run")
    assert folder == tmp_path / "run" / "membership"
    assert np.array_equal(load_mask(folder / "mask.npz", dm.pool.ids), dm.mask)
    assert (folder / "target_members.txt").read_text().split() == dm.target_members
    assert (folder / "target_non_members.txt").read_text().split() == dm.target_non_members
    dm.save_membership(tmp_path / "run")  # the same design again: accepted
    with pytest.raises(ValueError, match="another membership design"):
        _design(data_root, mask_seed=1).save_membership(tmp_path / "run")
    with pytest.raises(ValueError, match="another membership design"):
        _design(data_root, num_models=2).save_membership(tmp_path / "run")


def test_tckr_design(data_root: Path, tmp_path: Path) -> None:
    dm = _design(data_root, construction="tckr", challenge_size=5, mask_seed=3)
    source = dm.source
    test_ids = source.example_ids("test")
    assert dm.pool.ids == test_ids  # the shadows train on halves of the test split only
    assert dm.mask.shape == (K, N_PER_SPLIT) and (dm.mask.sum(axis=0) == K // 2).all()
    assert len(dm.target_members) == 5 and len(dm.target_non_members) == 5
    assert set(dm.target_members) <= set(source.example_ids("train"))
    assert set(dm.target_non_members) <= set(test_ids)
    assert dm.query.ids == dm.target_members + dm.target_non_members
    assert dm.query_mask.shape == (K, 10)
    assert not dm.query_mask[:, :5].any()  # challenge members are never IN for a shadow
    for j, example in enumerate(dm.target_non_members):
        assert np.array_equal(dm.query_mask[:, 5 + j], dm.mask[:, test_ids.index(example)])
    design = dm.query_design()
    assert list(design["ids"]) == dm.query.ids and np.array_equal(design["mask"], dm.query_mask)
    labels = dict(zip(dm.pool.ids, dm.pool.labels))
    assert [int(labels[i]) for i in dm.target_non_members] == [int(v) for v in dm.query.labels[5:]]

    other = _design(data_root, construction="tckr", challenge_size=5, mask_seed=4)
    assert other.target_members != dm.target_members or other.target_non_members != dm.target_non_members

    folder = dm.save_membership(tmp_path / "run")
    assert (folder / "target_members.txt").read_text().split() == dm.target_members
    with pytest.raises(ValueError, match="challenge_size=25 but the train split has 24"):
        _design(data_root, construction="tckr", challenge_size=25)
    with pytest.raises(ValueError, match="challenge_size must be positive"):
        MembershipDataModule(_source(data_root), construction="tckr", challenge_size=0)


class _NoPool(LightningDataModule):
    num_classes = 3


def test_bad_design_settings(data_root: Path) -> None:
    source = _source(data_root)
    for k in (3, 0, 1, -2):
        with pytest.raises(ValueError, match=f"num_models must be even and at least 2.*got {k}"):
            MembershipDataModule(source, num_models=k)
    with pytest.raises(ValueError, match="batch_size"):
        MembershipDataModule(source, batch_size=0)
    with pytest.raises(ValueError, match="_NoPool cannot provide an in-memory pool"):
        MembershipDataModule(_NoPool())
    with pytest.raises(ValueError, match=r"target_split 'val' is not among data\.pool_splits"):
        MembershipDataModule(source, target_split="val")
    with pytest.raises(ValueError, match="target_split 'test' is not among"):
        MembershipDataModule(source, pool_splits=["train", "val"], target_split="test")


class _FeatureSource(LightningDataModule):
    """A pool-capable source of (N, 5) float features (no images)."""

    num_classes, class_names, input_size = 2, ["a", "b"], 1

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def membership_pool(self, split: str) -> MembershipPool:
        gen = torch.Generator().manual_seed(len(split))
        ids = [f"{split}/{i}" for i in range(self.n)]
        return MembershipPool(torch.randn(self.n, 5, generator=gen), np.arange(self.n) % 2, ids)


def test_feature_source(tmp_path: Path) -> None:
    dm = MembershipDataModule(_FeatureSource(10), num_models=K, batch_size=3, queries="none")
    dm.setup("fit")
    assert dm.mask.shape == (K, 20) and dm.steps_per_epoch == 4
    out = dm.train_batch(0, 1, torch.device("cpu"))
    assert out["image"].shape == (K, 3, 5) and out["image"].dtype == torch.float32
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape == (20, 1, 5)
    torch.testing.assert_close(batch["image"][:, 0], dm.query.inputs)
    mirrored = MembershipDataModule(_FeatureSource(10), num_models=K)  # default queries: mirror
    mirrored.setup("fit")
    with pytest.raises(ValueError, match="feature pools need 'none'"):
        next(iter(mirrored.predict_dataloader()))


def test_pool_too_small_for_every_model_to_have_members_is_a_clear_error() -> None:
    """With fewer examples than models some model gets no member; it must say so (not divide by zero)."""
    dm = MembershipDataModule(_FeatureSource(1), num_models=8, pool_splits=["train"], queries="none")
    with pytest.raises(ValueError, match="member"):
        dm.setup("fit")
        assert (dm.mask.sum(axis=1) == 0).any()  # the seeded mask leaves some model without members
        dm.train_batch(0, 0, torch.device("cpu"))


# --------------------------------------------------------------------------- training batches


def _positions(dm: MembershipDataModule, inputs: torch.Tensor) -> np.ndarray:
    """Pool positions of un-augmented training inputs (K, B, C, H, W), found by exact match."""
    pool = dm.pool.normalise(dm.pool.inputs).flatten(1)
    flat = inputs.flatten(0, 1).flatten(1)
    dist = (flat[:, None, :] - pool[None, :, :]).abs().amax(-1)
    best = dist.argmin(1)
    assert (dist[torch.arange(len(flat)), best] < 1e-5).all()
    return best.view(inputs.shape[:2]).numpy()


def test_every_model_draws_only_its_own_members(data_root: Path) -> None:
    batch = 5
    dm = _design(data_root, batch_size=batch, mask_seed=2, shuffle_seed=1)
    assert dm.steps_per_epoch == 5  # ceil(24 mean members / 5)
    assert list(dm.train_dataloader()) == list(range(5))
    members = dm.mask.sum(axis=1)
    length = dm.steps_per_epoch * batch
    for epoch in range(2):
        drawn = []
        for step in range(dm.steps_per_epoch):
            out = dm.train_batch(epoch, step, torch.device("cpu"))
            assert out["image"].shape == (K, batch, 3, 16, 16) and out["label"].shape == (K, batch)
            pos = _positions(dm, out["image"])
            assert np.array_equal(out["label"].numpy(), dm.pool.labels[pos])
            drawn.append(pos)
        drawn = np.concatenate(drawn, axis=1)
        for k in range(K):
            assert dm.mask[k, drawn[k]].all(), f"model {k} drew a non-member in epoch {epoch}"
            if members[k] >= length:
                assert len(set(drawn[k])) == length  # no repeats before every member was seen once
            else:
                assert set(drawn[k]) == set(np.flatnonzero(dm.mask[k]))  # wraps round: all members seen

    dm16 = _design(data_root, batch_size=16)
    assert dm16.steps_per_epoch == 2
    big = _design(data_root, batch_size=100)
    assert big.steps_per_epoch == 1
    out = big.train_batch(0, 0, torch.device("cpu"))
    pos = _positions(big, out["image"])
    assert all(big.mask[k, pos[k]].all() for k in range(K))  # fewer members than a batch: repeats, still IN


def test_training_batches_are_deterministic(data_root: Path) -> None:
    cpu = torch.device("cpu")
    a = _design(data_root, transform="cifar", batch_size=4, shuffle_seed=0)
    b = _design(data_root, transform="cifar", batch_size=4, shuffle_seed=0)
    c = _design(data_root, transform="cifar", batch_size=4, shuffle_seed=1)
    for epoch, step in ((0, 0), (1, 3), (0, 5)):
        first, second = a.train_batch(epoch, step, cpu), b.train_batch(epoch, step, cpu)
        assert torch.equal(first["image"], second["image"]) and torch.equal(first["label"], second["label"])
        assert not torch.equal(first["image"], c.train_batch(epoch, step, cpu)["image"])
    assert not torch.equal(a.train_batch(0, 0, cpu)["image"], a.train_batch(1, 0, cpu)["image"])
    # The cifar preset augments: the batch is no exact copy of pool images.
    plain = _design(data_root, transform="none", batch_size=4, shuffle_seed=0)
    assert not torch.equal(a.train_batch(0, 0, cpu)["image"], plain.train_batch(0, 0, cpu)["image"])
    assert torch.equal(a.train_batch(0, 0, cpu)["label"], plain.train_batch(0, 0, cpu)["label"])


# --------------------------------------------------------------------------- predict


@pytest.mark.parametrize(("queries", "q"), [("none", 1), ("mirror", 2), ("mirror_shifts", 18)])
def test_predict_loader_yields_every_query_example_under_q_views(data_root: Path, queries: str, q: int) -> None:
    dm = _design(data_root, queries=queries, query_batch_size=20)
    assert dm.num_queries == q
    batches = list(dm.predict_dataloader())
    assert [len(b["index"]) for b in batches] == [20, 20, 8]
    assert batches[0]["image"].shape == (20, q, 3, 16, 16)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(2 * N_PER_SPLIT))
    assert torch.cat([b["label"] for b in batches]).tolist() == dm.query.labels.tolist()
    torch.testing.assert_close(batches[1]["image"][:, 0 if q < 18 else 4], dm.pool.normalise(dm.pool.inputs[20:40]))
    assert dm.example_ids() == dm.query.ids


# --------------------------------------------------------------------------- hyperparameters through the CLI


def test_nested_source_keeps_its_own_hyperparameters(data_root: Path, tmp_path: Path) -> None:
    config = {
        "model": {"class_path": "ShadowEnsemble", "init_args": {"backbone": "resnet8-1"}},
        "data": {
            "class_path": "MembershipDataModule",
            "init_args": {
                "num_models": 2,
                "batch_size": 3,
                "source": {
                    "class_path": "ImageFolderDataModule",
                    "init_args": {
                        "train_roots": str(data_root / "train"),
                        "test_root": str(data_root / "test"),
                        "image_size": 16,
                        "check_images": False,
                        "batch_size": 7,
                    },
                },
            },
        },
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cli = SynthPrivCLI(args=["--config", str(tmp_path / "c.yaml"), "--run.root", str(tmp_path / "runs")], run=False)
    source_hp = dict(cli.datamodule.source.hparams)
    assert source_hp["check_images"] is False
    assert source_hp["batch_size"] == 7 and source_hp["image_size"] == 16
    assert source_hp["train_roots"] == str(data_root / "train")
    assert "num_models" not in source_hp and "source" not in source_hp
    outer_hp = dict(cli.datamodule.hparams)
    assert outer_hp["num_models"] == 2 and outer_hp["batch_size"] == 3
    assert "check_images" not in outer_hp
    assert cli.model.hparams.num_classes == 3 and cli.model.hparams.image_size == 16

    # Built directly (no CLI) the source records its arguments too.
    direct = ImageFolderDataModule(train_roots=str(data_root / "train"), check_images=False, image_size=16)
    assert direct.hparams["check_images"] is False


def test_anonymise_members_errors(data_root: Path, tmp_path: Path) -> None:
    from fixtures_features import make_feature_folder

    from datamodules import FeatureDataModule

    with pytest.raises(ValueError, match=r"data\.anonymise_members: _FeatureSource has no anonymiser"):
        MembershipDataModule(_FeatureSource(10), num_models=K, anonymise_members=True)
    source = _source(data_root)
    source.anonymise_members = lambda x, y: (x, y)  # even an image source that could: the pool holds images
    images = MembershipDataModule(source, num_models=K, anonymise_members=True)
    images.setup("fit")
    with pytest.raises(ValueError, match="feature-vector pools, not images"):
        images.train_batch(0, 0, torch.device("cpu"))
    feats = make_feature_folder(tmp_path / "feats", sizes=(20, 10, 10))
    cvae = FeatureDataModule(root=str(feats), anonymiser="cvae", cvae_checkpoint=str(tmp_path / "none.ckpt"))
    with pytest.raises(ValueError, match="anonymiser=cvae: anonymiser-aware shadows would need a CVAE"):
        cvae.anonymise_members(torch.zeros(4, 8), np.zeros(4, dtype=np.int64))
    ksame = FeatureDataModule(root=str(feats), anonymiser="ksame", k=5)
    with pytest.raises(ValueError, match=r"data\.source\.k=5: a shadow model has 4 members"):
        ksame.anonymise_members(torch.zeros(4, 8), np.zeros(4, dtype=np.int64))
