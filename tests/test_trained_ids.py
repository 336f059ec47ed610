"""Every fit records the ids it trained on; resumes and member lists are checked against them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import tiny_config, tiny_dataset
from fixtures_features import make_feature_folder

from cli import main
from datamodules.features import FeatureDataModule
from datamodules.images import ImageFolderDataModule
from datamodules.membership import MembershipDataModule
from privacy.membership import ids_hash
from tools.trained_ids import check_members_trained, read_trained_ids, record_trained_ids


def _run(tmp_path: Path, name: str) -> list[str]:
    return ["--run.root", str(tmp_path / "runs"), "--run.study", "s", "--run.name", name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished 1-epoch teachers on the same folders: all training images, and train_fractions [0.5]."""
    tmp = tmp_path_factory.mktemp("trained")
    data = tiny_dataset(tmp / "data")
    config = str(tiny_config(tmp / "c.yaml", data))
    main(["fit", "--config", config, *_run(tmp, "full")])
    main(["fit", "--config", config, *_run(tmp, "half"), "--data.init_args.train_fractions", "[0.5]"])
    return {"data": data, "config": Path(config), "full": tmp / "runs/s/full", "half": tmp / "runs/s/half"}


def test_half_fraction_records_exactly_half_the_training_ids(runs: dict[str, Path]) -> None:
    n_train = len(list((runs["data"] / "train").rglob("*.png")))  # 24 in the fixture
    full, half = read_trained_ids(runs["full"]), read_trained_ids(runs["half"])
    assert len(full) == n_train
    assert len(half) == round(0.5 * n_train) == 12
    assert set(half) < set(full)
    record = json.loads((runs["half"] / "trained_ids.json").read_text())
    assert record == {
        "file": "trained_ids.txt",
        "count": 12,
        "ids_hash": ids_hash(half),
        "data_module": "ImageFolderDataModule",
    }
    summary = json.loads((runs["half"] / "fit_summary.json").read_text())["trained_ids"]
    assert summary["count"] == 12 and summary["ids_hash"] == ids_hash(half)
    # a checkpoint file inside the run names the same record
    assert read_trained_ids(runs["half"] / "checkpoints" / "last.ckpt") == half


def test_ids_are_the_membership_designs_strings(runs: dict[str, Path], tmp_path: Path) -> None:
    data = runs["data"]
    source = ImageFolderDataModule(
        train_roots=str(data / "train"), val_root=str(data / "val"), test_root=str(data / "test"), image_size=32
    )
    design = MembershipDataModule(source, num_models=2, pool_splits=["train", "test"], target_split="train")
    design.setup("fit")
    members = (design.save_membership(tmp_path) / "target_members.txt").read_text().splitlines()
    assert members == read_trained_ids(runs["full"])

    assert check_members_trained(members, runs["full"], "--target_checkpoint full") is True
    with pytest.raises(ValueError, match=r"trained on 12 examples .*; 12 of the 24 members in members\.txt are not"):
        check_members_trained(members, runs["half"], "--target_checkpoint half", members_from="members.txt")
    half = read_trained_ids(runs["half"])
    assert check_members_trained(half, runs["half"], "--target_checkpoint half") is True


def test_unrecorded_run_warns_and_edited_record_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="has no trained_ids.txt"):
        assert check_members_trained(["a"], tmp_path, "--target_checkpoint old") is False
    (tmp_path / "trained_ids.txt").write_text("a\nb\n")
    (tmp_path / "trained_ids.json").write_text((runs["half"] / "trained_ids.json").read_text())
    with pytest.raises(ValueError, match="edited or truncated"):
        read_trained_ids(tmp_path)


def test_data_module_without_ids_records_nothing(tmp_path: Path) -> None:
    entry = record_trained_ids(tmp_path, object())
    assert entry["recorded"] is False and "no train_example_ids" in entry["reason"]
    assert not (tmp_path / "trained_ids.txt").exists()


def test_resume_on_other_training_ids_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "s" / "half"
    run_dir.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(runs["half"], run_dir)
    args = ["fit", "--config", str(runs["config"]), *_run(tmp_path, "half"), "--ckpt_path", "last"]
    with pytest.raises(ValueError, match=r"trained_ids\.txt: this run trained on 12 examples .* gives 24"):
        main([*args, "--data.init_args.train_fractions", "[1.0]", "--run.allow_changes", "true"])


def test_feature_ids_are_the_real_records_behind_the_training_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_feature_folder(tmp_path / "feats", sizes=(62, 30, 30))
    identity = FeatureDataModule(root="feats")
    real = identity.membership_pool("train").ids
    assert identity.train_example_ids() == real
    ksame = FeatureDataModule(root="feats", anonymiser="ksame", k=4)
    assert ksame.train_example_ids() == real[:60]  # 62 mod 4 = 2 records dropped by k-Same
