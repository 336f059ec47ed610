"""SemSim: HumanAnnotationDataModule (bundle layout, id pairing, split by original, sampling) and SemSimNet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import ROOT, one_line_error
from PIL import Image

import datamodules.human_annotations as ha
from cli import main
from datamodules import HumanAnnotationDataModule
from lightning_modules import SemSimNet
from privacy.agreement import pairwise_accuracy

GROUPS = 12


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def make_bundle(root: Path, size: int = 16, seed: int = 0) -> Path:
    """A fake ``train_with_ori``: originals are 4x4 blocks of colour, recognisable reconstructions very noisy
    copies, unrecognisable ones the same blocks shuffled with little noise (an untrained net ranks them only
    partly right: the ranking must be learnt). Group 5 has no -5 (others/ is its fallback), group 13 has no
    recognisable one, one reconstruction is 20 px (the resize makes pairs comparable). File names carry the
    group id, to check the pairing."""
    rng = np.random.default_rng(seed)
    for g in range(1, GROUPS + 2):
        coarse = rng.uniform(0, 255, (4, 4, 3))
        original = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
        _save(original, root / str(g) / f"{g}_{g % 7}_ori.png")
        if g != GROUPS + 1:
            for k in range(4):
                side = 20 if (g, k) == (2, 0) else size
                noisy = original + rng.normal(0, 70, original.shape)
                _save(np.array(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).resize((side, side))),
                      root / str(g) / f"rec{g}_{k}.png")  # fmt: skip
        if g != 5:
            for k in range(4):
                scrambled = rng.permutation(coarse.reshape(16, 3)).reshape(4, 4, 3)  # same colours, no layout
                blocks = np.kron(scrambled, np.ones((size // 4, size // 4, 1)))
                _save(blocks + rng.normal(0, 5, blocks.shape), root / f"-{g}" / f"neg_of_{g}_{k}.png")
    for k in range(3):
        _save(rng.uniform(0, 255, (size, size, 3)), root / "others" / f"other_{k}.png")
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "human_anno_id" / "train_with_ori")


def _module(root: Path, **kwargs) -> HumanAnnotationDataModule:
    args = {"val_fraction": 0.25, "test_fraction": 0.25, "image_size": 16, "batch_size": 4, **kwargs}
    return HumanAnnotationDataModule(str(root), **args)


def test_layout_is_read_pairing_is_by_id_and_split_is_by_original(bundle: Path) -> None:
    dm = _module(bundle)
    assert [g.group_id for g in dm.groups] == list(range(1, GROUPS + 1))  # numeric, not "1, 10, 11, 12, 2"
    assert dm.skipped_groups == [GROUPS + 1]  # no recognisable reconstruction: skipped and counted
    assert len(dm.others) == 3
    for g in dm.groups:
        assert g.original.name == f"{g.group_id}_{g.group_id % 7}_ori.png"
        assert len(g.positives) == 4 and all(p.name.startswith(f"rec{g.group_id}_") for p in g.positives)
        expected = [] if g.group_id == 5 else [f"neg_of_{g.group_id}_{k}.png" for k in range(4)]
        assert [n.name for n in g.negatives] == expected
    splits = dm.split_ids
    assert {len(splits["train"]), len(splits["val"]), len(splits["test"])} == {6, 3}
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(1, GROUPS + 1))
    assert _module(bundle).split_ids == splits and _module(bundle, split_seed=1).split_ids != splits
    dm.setup("test")
    records = dm.pair_records("test")
    assert {r[0] for r in records} == set(splits["test"])
    assert all(r[1].parent == r[2].parent or r[2].parent.name == f"-{r[0]}" for r in records)
    assert all(r[3] == (r[2].parent.name == str(r[0])) for r in records)
    item = dm._datasets["test"][0]
    assert item["original"].shape == item["reconstruction"].shape == (3, 16, 16)
    assert ha.PairDataset([(2, dm.groups[1].original, dm.groups[1].positives[0], True)], dm._transform(False))[0][
        "reconstruction"
    ].shape == (3, 16, 16)  # the 20 px reconstruction of group 2 is resized to its original's size


def _path_triplets(dm: HumanAnnotationDataModule, monkeypatch: pytest.MonkeyPatch) -> ha.TripletDataset:
    monkeypatch.setattr(ha, "load_rgb", lambda path: path)  # items hold the chosen files instead of pixels
    dm.setup("fit")
    dataset = dm._datasets["train"]
    dataset.transform = lambda x: x
    return dataset


def test_paper_sampling_anchors_on_the_original(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = _module(bundle)
    dataset = _path_triplets(dm, monkeypatch)
    groups = dm.split_groups("train")
    assert len(dataset) == 4 * len(groups)  # one triplet per recognisable reconstruction
    by_original = {g.original: g for g in groups}
    for i in range(len(dataset)):
        item = dataset[i]
        group = by_original[item["anchor"]]
        assert item["positive"] in group.positives
        assert item["negative"] in (group.negatives or tuple(dm.others))


def test_original_code_sampling(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = _module(bundle, sampling="original_code")
    dataset = _path_triplets(dm, monkeypatch)
    groups = dm.split_groups("train")
    assert len(dataset) == sum(1 + len(g.positives) + len(g.negatives) for g in groups)
    for i in range(len(dataset)):
        item = dataset[i]
        group = next(g for g in groups if item["anchor"] in (g.original, *g.positives, *g.negatives))
        pos_folder = (group.original, *group.positives)
        if item["anchor"] in pos_folder:
            assert item["positive"] in pos_folder and item["negative"] in (group.negatives or tuple(dm.others))
        else:  # anchor from -N: positive from -N, negative from N (the original included, as in the code)
            assert item["positive"] in group.negatives and item["negative"] in pos_folder


def test_pairwise_accuracy_counts_ties_half_and_averages_per_original() -> None:
    d = torch.tensor([0.1, 0.5, 0.3, 1.0, 1.0, 2.0])
    rec = torch.tensor([True, True, False, True, False, False])
    grp = torch.tensor([1, 1, 1, 2, 2, 2])
    # original 1: pos {0.1, 0.5} vs neg {0.3}: 1 + 0 -> 0.5; original 2: pos {1.0} vs neg {1.0, 2.0}: 0.5 + 1 -> 0.75
    assert pairwise_accuracy(d, rec, grp).item() == pytest.approx(0.625)
    assert torch.isnan(pairwise_accuracy(d, torch.ones(6, dtype=torch.bool), grp))


def test_raw_and_normalized_distances_differ(bundle: Path) -> None:
    torch.manual_seed(0)
    model = SemSimNet(width=4).eval()
    x, y = torch.randn(5, 3, 16, 16), torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        norm, raw = model.distance(x, y), model.distance(x, y, distance="raw")
        assert model.distance(x, x).abs().max() < 1e-5
    assert norm.shape == raw.shape == (5,)
    assert (norm <= 2 + 1e-6).all() and not torch.allclose(norm, raw)  # normalised: chord on the unit sphere
    assert SemSimNet(width=4, distance="raw").hparams.distance == "raw"
    import lightning_modules.semsim as semsim_module

    assert "``distance: raw`` uses the unnormalised" in semsim_module.__doc__  # documented, in --help too
    assert "raw reproduces the original code's" in (ROOT / "configs" / "semsim" / "semsim.yaml").read_text()
    assert "the original code's test-time choice" in SemSimNet.__init__.__doc__
    with pytest.raises(ValueError, match="equal shapes"):
        model.distance(x, y[:, :, :8])
    dm = _module(bundle)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    assert torch.equal(out["distance"], out["distance_normalized"]) and out["group"].shape == out["index"].shape


def _config(tmp_path: Path, root: Path, name: str = "r") -> list[str]:
    config = yaml.safe_load((ROOT / "configs" / "semsim" / "tiny_semsim.yaml").read_text())
    config["data"]["init_args"]["root"] = str(root)
    path = tmp_path / "semsim.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(path), "--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", name]


def _test_metrics(tmp_path: Path, name: str) -> dict[str, float]:
    return json.loads((tmp_path / "runs" / "s" / name / "test" / "metrics.json").read_text())["metrics"]


def test_fit_raises_pairwise_accuracy_on_held_out_originals(bundle: Path, tmp_path: Path, one_torch_thread) -> None:
    main(["test", *_config(tmp_path, bundle, "untrained")])  # same seed: the weights the fit starts from
    before = _test_metrics(tmp_path, "untrained")
    args = _config(tmp_path, bundle)
    main(["fit", *args])
    main(["test", *args, "--ckpt_path", "last"])
    after = _test_metrics(tmp_path, "r")
    print(f"pairwise accuracy on held-out originals: untrained {before}, trained {after}")
    assert after["test/pairwise_acc"] >= 0.9 and after["test/pairwise_acc"] > before["test/pairwise_acc"] + 0.05
    assert after["test/loss"] < before["test/loss"]
    config = yaml.safe_load((tmp_path / "runs" / "s" / "r" / "config.yaml").read_text())
    assert config["model"]["init_args"]["distance"] == "normalized"


def test_bad_bundles_are_one_line_errors(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = one_line_error(monkeypatch, ["fit", *_config(tmp_path, tmp_path / "nowhere")])
    assert "data.root" in missing and "does not exist" in missing

    no_negatives = tmp_path / "no_neg"
    for folder in bundle.iterdir():
        if not folder.name.startswith("-") and folder.name != "others":
            shutil.copytree(folder, no_negatives / folder.name)
    message = one_line_error(monkeypatch, ["fit", *_config(tmp_path, no_negatives)])
    assert "no negatives" in message and "others/" in message

    (bundle / "3" / "3_3_ori.png").unlink()
    message = one_line_error(monkeypatch, ["fit", *_config(tmp_path, bundle)])
    assert "exactly one original" in message and "found none" in message

    shutil.rmtree(bundle / "3")
    message = one_line_error(monkeypatch, ["fit", *_config(tmp_path, bundle)])
    assert "-3" in message and "without their original" in message
