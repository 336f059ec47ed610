"""SyntheticPoolDataModule: TCKR's periodic replacement of the training set, checked through real Lightning fits."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import SyntheticPoolDataModule

_SIZE = 4


def _pool_tree(root: Path, per_class: int) -> dict[int, str]:
    """``root/{a,b}/<i>.png``: every image one flat grey level, distinct across the pool.

    Returns {grey level: example id}; the id format is the data module's (``<source tag>/<class>/<file>``), checked
    against ``example_ids`` by the caller.
    """
    levels: dict[int, str] = {}
    level = 10
    for name in ("a", "b"):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((_SIZE, _SIZE, 3), level, dtype=np.uint8)).save(folder / f"{i}.png")
            levels[level] = f"{name}/{i}.png"
            level += 10
    return levels


def _dm(root: Path, draw_size: int, every: int, **kwargs) -> SyntheticPoolDataModule:
    return SyntheticPoolDataModule(
        train_roots=str(root),
        val_fraction=0.0,
        image_size=_SIZE,
        normalize=False,
        batch_size=2,
        draw_size=draw_size,
        replace_every_n_epochs=every,
        check_images=False,
        **kwargs,
    )


class _Recorder(lightning.LightningModule):
    """Records, per epoch, the grey levels of the images it trains on (the identity of each image)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        images = batch["image"]
        for img in images:
            value = img.flatten()
            assert torch.allclose(value, value[0])  # flat images stay flat through the transform
            self.seen.setdefault(self.current_epoch, []).append(round(float(value[0]) * 255))
        return (self.weight * images.mean()).sum() ** 2 + self.weight.sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(max_epochs: int, every: int) -> lightning.Trainer:
    return lightning.Trainer(
        max_epochs=max_epochs,
        reload_dataloaders_every_n_epochs=every,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


@pytest.mark.parametrize(("max_epochs", "every", "draw_size"), [(6, 2, 3), (3, 1, 4)])
def test_fit_trains_on_disjoint_draws_replaced_every_r_epochs(
    tmp_path: Path, one_torch_thread, max_epochs: int, every: int, draw_size: int
) -> None:
    root = tmp_path / "pool"
    levels = _pool_tree(root, per_class=6)  # 12 images; 3 draws of 3 or 4
    dm = _dm(root, draw_size, every)
    tag = dm.example_ids("train")[0].split("/")[0]
    id_of = {lvl: f"{tag}/{rel}" for lvl, rel in levels.items()}
    assert set(id_of.values()) == set(dm.example_ids("train"))

    model = _Recorder()
    _trainer(max_epochs, every).fit(model, datamodule=dm)

    assert sorted(model.seen) == list(range(max_epochs))
    draws: list[list[int]] = []
    for epoch in range(max_epochs):
        images = model.seen[epoch]
        # Each epoch sees every image of its draw exactly once.
        assert len(images) == draw_size
        assert len(set(images)) == draw_size
        assert set(images) <= set(levels)
        if epoch % every == 0:
            draws.append(sorted(images))
        else:
            assert sorted(images) == draws[-1], f"epoch {epoch} left draw {len(draws) - 1} before the replacement"
    assert len(draws) == dm.draws_needed(max_epochs) == -(-max_epochs // every)
    for d in range(1, len(draws)):
        assert not set(draws[d]) & set().union(*map(set, draws[:d])), f"draw {d} repeats an earlier image"

    # The recorded draws are the data module's draws, and train_example_ids lists them in draw order.
    pool_ids = dm.example_ids("train")
    for d, images in enumerate(draws):
        assert sorted(id_of[lvl] for lvl in images) == sorted(pool_ids[i] for i in dm.draw_indices(d))
    expected = [id_of[lvl] for images in draws for lvl in sorted(images, key=lambda lv: pool_ids.index(id_of[lv]))]
    assert dm.train_example_ids() == expected
    assert len(dm.train_example_ids()) == len(draws) * draw_size


def test_draws_are_seeded_by_split_seed(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    _pool_tree(root, per_class=6)

    def draw0(seed: int) -> list[int]:
        dm = _dm(root, 4, 1, split_seed=seed)
        dm.setup("fit")  # no trainer attached: the trainer checks are skipped
        return dm.draw_indices(0).tolist()

    assert draw0(0) == draw0(0)
    assert any(draw0(0) != draw0(s) for s in (1, 2, 3))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"draw_size": 0, "replace_every_n_epochs": 1}, ["draw_size", "positive", "0"]),
        ({"draw_size": -2, "replace_every_n_epochs": 1}, ["draw_size", "-2"]),
        ({"draw_size": 2, "replace_every_n_epochs": 0}, ["replace_every_n_epochs", "positive", "0"]),
        ({"draw_size": 13, "replace_every_n_epochs": 1}, ["pool holds 12", "draw_size 13"]),
    ],
)
def test_construction_errors(tmp_path: Path, kwargs: dict, words: list[str]) -> None:
    root = tmp_path / "pool"
    _pool_tree(root, per_class=6)
    with pytest.raises(ValueError) as err:
        SyntheticPoolDataModule(train_roots=str(root), val_fraction=0.0, image_size=_SIZE, **kwargs)
    for word in words:
        assert word in str(err.value)


def test_pool_too_small_for_max_epochs_is_refused_at_fit(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    _pool_tree(root, per_class=6)  # 12 images
    dm = _dm(root, draw_size=5, every=2)  # 5 epochs / R 2 = 3 draws of 5 = 15 > 12
    model = _Recorder()
    with pytest.raises(ValueError) as err:
        _trainer(5, 2).fit(model, datamodule=dm)
    msg = str(err.value)
    assert "pool holds 12" in msg
    assert "3 disjoint draws of 5 = 15" in msg
    assert "at least 15 images" in msg
    assert model.seen == {}  # refused before any training step


def test_pool_exactly_large_enough_fits(tmp_path: Path, one_torch_thread) -> None:
    root = tmp_path / "pool"
    _pool_tree(root, per_class=6)
    dm = _dm(root, draw_size=4, every=2)  # 5 epochs -> 3 draws of 4 = 12
    model = _Recorder()
    _trainer(5, 2).fit(model, datamodule=dm)
    seen = set().union(*map(set, model.seen.values()))
    assert len(seen) == 12
    assert len(dm.train_example_ids()) == 12


def test_reload_interval_must_match_r(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    _pool_tree(root, per_class=6)
    dm = _dm(root, draw_size=2, every=2)
    model = _Recorder()
    with pytest.raises(ValueError) as err:
        _trainer(2, 1).fit(model, datamodule=dm)
    msg = str(err.value)
    assert "replace_every_n_epochs is 2" in msg
    assert "reload_dataloaders_every_n_epochs is 1" in msg
    assert model.seen == {}


def test_draw_indices_before_setup_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    _pool_tree(root, per_class=6)
    dm = _dm(root, draw_size=2, every=1)
    with pytest.raises(RuntimeError, match="setup"):
        dm.draw_indices(0)
