"""ShadowEnsemble through cli.main: vmap groups, exact resume, shadows.npz, and `attack --target_checkpoint`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import CrashAtEpoch, run_cli_process, state_of, tiny_dataset

from cli import main
from datamodules import ImageFolderDataModule
from datamodules.pool import query_views
from lightning_modules import ImageClassifier, ShadowEnsemble
from lightning_modules.networks import build_backbone
from privacy.membership import balanced_mask, ids_hash
from tools.attack import load_shadows
from tools.target_logits import check_target_trained_on, load_run_datamodule, resolve_target_checkpoint

K, N, Q, C = 4, 48, 2, 3  # 4 shadows; train + test of tiny_dataset; mirror queries; 3 classes
TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,
}


def _source(root: Path) -> dict[str, Any]:
    return {
        "class_path": "ImageFolderDataModule",
        "init_args": {
            "train_roots": str(root / "train"),
            "val_root": str(root / "val"),
            "test_root": str(root / "test"),
            "image_size": 16,
            "transform": "cifar",
        },
    }


def _shadow_config(path: Path, root: Path, max_epochs: int = 2, group_size: int = 2, mixup: float = 0.5) -> Path:
    config = {
        "seed_everything": 3,
        "trainer": {**TRAINER, "max_epochs": max_epochs, "callbacks": [{"class_path": "ShadowLogitsWriter"}]},
        "model": {
            "class_path": "ShadowEnsemble",
            "init_args": {"backbone": "resnet8-1", "group_size": group_size, "mixup_alpha": mixup},
        },
        "data": {
            "class_path": "MembershipDataModule",
            "init_args": {"num_models": K, "batch_size": 4, "source": _source(root)},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _teacher_config(path: Path, root: Path) -> Path:
    config = {
        "seed_everything": 3,
        "trainer": {**TRAINER, "max_epochs": 1},
        "model": {"class_path": "ImageClassifier", "init_args": {"backbone": "resnet8-1"}},
        "data": _source(root),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _run(root: Path, name: str, study: str = "t") -> list[str]:
    return ["--run.root", str(root / "runs"), "--run.study", study, "--run.name", name]


@dataclass
class Study:
    root: Path
    data: Path
    config: Path
    run_dir: Path
    teacher: Path  # the teacher's last.ckpt

    @property
    def shadows(self) -> Path:
        return self.run_dir / "shadows.npz"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """Shadows (K=4, 2 epochs, groups of 2, MixUp) fitted and queried, and a teacher on the same source."""
    root = tmp_path_factory.mktemp("shadows")
    data = tiny_dataset(root / "data")
    config = _shadow_config(root / "shadows.yaml", data)
    main(["fit", "--config", str(config), *_run(root, "sh")])
    main(["predict", "--config", str(config), *_run(root, "sh"), "--ckpt_path", "last"])
    main(["fit", "--config", str(_teacher_config(root / "teacher.yaml", data)), *_run(root, "teacher")])
    runs = root / "runs" / "t"
    return Study(root, data, config, runs / "sh", runs / "teacher" / "checkpoints" / "last.ckpt")


# --------------------------------------------------------------------------- fit + predict


def test_shadows_file_holds_every_models_logits_and_the_design(study: Study) -> None:
    with np.load(study.shadows, allow_pickle=False) as saved:
        data = {k: saved[k] for k in saved.files}
    assert data["logits"].shape == (K, N, Q, C) and data["logits"].dtype == np.float32
    assert np.isfinite(data["logits"]).all()
    assert data["mask"].shape == (K, N) and data["mask"].dtype == bool
    assert (data["mask"].sum(axis=0) == K // 2).all()
    ids = [str(i) for i in data["ids"]]
    assert len(set(ids)) == N and str(data["ids_hash"]) == ids_hash(ids)
    source = ImageFolderDataModule(**_source(study.data)["init_args"])
    assert ids == source.example_ids("train") + source.example_ids("test")
    labels = {s.example_id: s.label for split in ("train", "test") for s in source.samples(split)}
    assert data["labels"].tolist() == [labels[i] for i in ids]
    assert not np.allclose(data["logits"][0], data["logits"][1])  # K different models

    membership = study.run_dir / "membership"
    with np.load(membership / "mask.npz") as mask_file:
        assert np.array_equal(mask_file["mask"], data["mask"])
    assert (membership / "target_members.txt").read_text().split() == source.example_ids("train")
    assert (membership / "target_non_members.txt").read_text().split() == source.example_ids("test")

    summary = json.loads((study.run_dir / "shadows_summary.json").read_text())
    assert (summary["models"], summary["examples"], summary["queries"]) == (K, N, Q)
    assert len(summary["accuracy_in"]) == K and len(summary["accuracy_out"]) == K
    correct = data["logits"].mean(axis=2).argmax(-1) == data["labels"][None]
    for k in range(K):
        assert summary["accuracy_in"][k] == pytest.approx(correct[k][data["mask"][k]].mean())
        assert summary["accuracy_out"][k] == pytest.approx(correct[k][~data["mask"][k]].mean())


def test_each_stacked_model_is_a_plain_network(study: Study) -> None:
    """Model k of the checkpoint, loaded into an ordinary network, gives the saved logits of model k."""
    state = state_of(study.run_dir / "checkpoints" / "last.ckpt")
    dm = load_run_datamodule(study.run_dir)
    dm.setup("predict")
    views = query_views(dm.query, torch.arange(N), "mirror")
    with np.load(study.shadows) as saved:
        logits = torch.from_numpy(saved["logits"])
    for k in range(K):
        net = build_backbone("resnet8-1", C, image_size=16, bn_momentum=0.1)
        own = {
            key.split(".", 1)[1].replace("__", "."): value[k]
            for key, value in state.items()
            if key.startswith(("weights.", "stats."))
        }
        net.load_state_dict(own, strict=True)
        net.eval()
        with torch.no_grad():
            for q in range(Q):
                torch.testing.assert_close(net(views[:, q]), logits[k, :, q], atol=1e-4, rtol=1e-4)
    assert not torch.equal(state["stats.bn1__running_mean"][0], state["stats.bn1__running_mean"][1])
    assert (state["stats.bn1__num_batches_tracked"] == 2 * 6).all()  # 2 epochs x ceil(24 / 4) steps


@pytest.mark.parametrize("mixup", [0.0, 0.5], ids=["no_mixup", "mixup"])
def test_grouped_training_equals_sequential(tmp_path: Path, mixup: float) -> None:
    """group_size only changes how many models share a vmap call, not what they learn."""
    data = tiny_dataset(tmp_path / "data")
    states = {}
    for group in (1, 4):
        config = _shadow_config(tmp_path / f"g{group}.yaml", data, max_epochs=1, group_size=group, mixup=mixup)
        main(["fit", "--config", str(config), *_run(tmp_path, f"g{group}")])
        states[group] = state_of(tmp_path / "runs" / "t" / f"g{group}" / "checkpoints" / "last.ckpt")
    one, four = states[1], states[4]
    assert one.keys() == four.keys()
    assert any(k.startswith("stats.") and "running_var" in k for k in one)
    for key in one:
        if key.startswith(("weights.", "stats.")):
            assert one[key].shape[0] == K, key
            # Adam turns float noise in near-zero gradients into updates of up to lr (1e-3): tolerance 1e-3.
            torch.testing.assert_close(four[key], one[key], atol=1e-3, rtol=1e-3, msg=lambda m, key=key: f"{key}: {m}")
    for key, value in one.items():
        if key.startswith("weights.") and value.ndim > 2:  # every conv / linear weight: independent models
            for a in range(K):
                for b in range(a + 1, K):
                    assert not torch.allclose(value[a], value[b], atol=1e-3), f"{key}: models {a} and {b} equal"


def test_models_start_independent() -> None:
    model = ShadowEnsemble(backbone="resnet8-1", num_classes=3, image_size=16)
    torch.manual_seed(0)
    model.configure_models(4)
    assert model.num_models == 4
    for name, value in model.weights.items():
        if value.ndim > 2:
            assert all(not torch.equal(value[0], value[k]) for k in range(1, 4)), name


# --------------------------------------------------------------------------- resume


def test_resume_after_crash_is_exact(study: Study, tmp_path: Path) -> None:
    crash = ["--trainer.callbacks+=cli_helpers.CrashAtEpoch", "--trainer.callbacks.epoch", "1"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "--config", str(study.config), *_run(tmp_path, "sh"), *crash])
    assert CrashAtEpoch  # the class the config names
    run_dir = tmp_path / "runs" / "t" / "sh"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    main(["fit", "--config", str(study.config), *_run(tmp_path, "sh"), "--ckpt_path", "last"])
    straight = state_of(study.run_dir / "checkpoints" / "last.ckpt")
    resumed = state_of(run_dir / "checkpoints" / "last.ckpt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_resume_with_another_mask_is_refused(study: Study, tmp_path: Path) -> None:
    shutil.copytree(study.run_dir, tmp_path / "runs" / "t" / "sh")
    args = ["fit", "--config", str(study.config), *_run(tmp_path, "sh"), "--run.if_exists", "resume"]
    with pytest.raises(ValueError, match=r"data.init_args.mask_seed: 0 -> 5"):
        main([*args, "--data.init_args.mask_seed", "5"])  # the resume check names the changed option first
    with pytest.raises(ValueError, match="another membership design"):  # and the design itself is checked too
        main([*args, "--data.init_args.mask_seed", "5", "--run.allow_changes", "true"])


def test_predict_with_another_k_is_refused(study: Study, tmp_path: Path) -> None:
    shutil.copytree(study.run_dir, tmp_path / "runs" / "t" / "sh")
    args = ["predict", "--config", str(study.config), *_run(tmp_path, "sh"), "--ckpt_path", "last"]
    with pytest.raises(ValueError, match=r"4 shadow models but data\.num_models is 2"):
        main([*args, "--data.init_args.num_models", "2"])


# --------------------------------------------------------------------------- attack from a target checkpoint


def test_attack_from_target_checkpoint(study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mia"
    args = ["attack", str(study.shadows), str(out), "--target_checkpoint", str(study.teacher)]
    main(args)
    for name in ("metrics.json", "scores.npz", "roc.npz", "roc.png", "target_logits.npz"):
        assert (out / name).is_file(), name
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["metrics"]) == {"online", "offline", "global"}
    for attack, metrics in record["metrics"].items():
        assert 0.0 <= metrics["auc"] <= 1.0, attack
    assert record["shadows"] == K and record["target_checkpoint"] == str(study.teacher)
    with np.load(study.shadows) as shadows, np.load(out / "target_logits.npz") as target:
        ids = [str(i) for i in shadows["ids"]]
        assert target["logits"].shape == (N, Q, C)
        assert [str(i) for i in target["ids"]] == ids
        target_logits = torch.from_numpy(target["logits"])
    with np.load(out / "scores.npz") as scores:
        assert scores["is_member"].sum() == N // 2 and len(scores["is_member"]) == N
        assert [str(i).startswith("train0/") for i in scores["ids"]] == scores["is_member"].tolist()

    # The target saw the same pixels as through its own data module: test split, eval transform, and mirrored.
    teacher = ImageClassifier.load_from_checkpoint(study.teacher, map_location="cpu", weights_only=True).eval()
    source = ImageFolderDataModule(**_source(study.data)["init_args"])
    source.setup("predict")
    images = torch.cat([b["image"] for b in source.predict_dataloader()])
    at = [ids.index(i) for i in source.example_ids("test")]
    with torch.no_grad():
        torch.testing.assert_close(target_logits[at, 0], teacher(images), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(target_logits[at, 1], teacher(images.flip(-1)), atol=1e-4, rtol=1e-4)

    stamp = (out / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    main(args)
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "metrics.json").stat().st_mtime_ns == stamp


def test_target_checkpoint_may_be_a_run_folder(study: Study, tmp_path: Path) -> None:
    resolved = Path(resolve_target_checkpoint(str(study.teacher.parent.parent)))
    assert resolved.parent == study.teacher.parent and resolved.is_file()
    assert resolve_target_checkpoint(str(study.teacher)) == str(study.teacher)
    with pytest.raises(FileNotFoundError, match="--target_checkpoint"):
        resolve_target_checkpoint(str(tmp_path / "nope.ckpt"))


def test_attack_refuses_members_the_target_never_trained_on(study: Study, tmp_path: Path) -> None:
    # The shadows' design lists all 24 training images as the teacher's members; a teacher fitted on half of them
    # (train_fractions [0.5]) records 12 ids, so 12 "members" are in fact non-members: refused, not scored.
    config = yaml.safe_load(_teacher_config(tmp_path / "half.yaml", study.data).read_text())
    config["data"]["init_args"]["train_fractions"] = [0.5]
    (tmp_path / "half.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "half.yaml"), *_run(tmp_path, "half")])
    half = tmp_path / "runs" / "t" / "half"
    assert len((half / "trained_ids.txt").read_text().split()) == 12
    # The attack compares the two runs' data settings first, which names the cause ...
    with pytest.raises(ValueError, match=r"data.init_args.train_fractions: \[0.5\] -> null"):
        main(["attack", str(study.shadows), str(tmp_path / "a"), "--target_checkpoint", str(half)])
    assert not (tmp_path / "a" / "metrics.json").exists()
    # ... and the ids the fit recorded back it up whatever the configs say (e.g. files changed on disk).
    members_file = study.run_dir / "membership" / "target_members.txt"
    members = members_file.read_text().split()
    with pytest.raises(ValueError, match=r"trained on 12 examples .* 12 of the 24 members in .*target_members.txt"):
        check_target_trained_on(str(half / "checkpoints" / "last.ckpt"), members, str(members_file))
    # A control must have trained on none of the members: the full teacher trained on all 24.
    with pytest.raises(ValueError, match=r"attacked as a control .* trained on 24 of the 24 members"):
        main(
            [
                "attack",
                str(study.shadows),
                str(tmp_path / "b"),
                "--target_checkpoint",
                str(study.teacher),
                "--control",
                "true",
            ]
        )
    # A control fitted on other images is accepted. Ids are '<train root index>/<class>/<file name>', so the
    # control's files get names of their own (the bundled datasets name files by their global index).
    for image in (study.data / "val").rglob("*.png"):
        target = tmp_path / "other" / image.parent.name / f"other-{image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    config["data"]["init_args"].update(
        train_roots=str(tmp_path / "other"), train_fractions=None, val_root=None, val_fraction=0.25
    )
    (tmp_path / "control.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "control.yaml"), *_run(tmp_path, "control")])
    main(
        [
            "attack",
            str(study.shadows),
            str(tmp_path / "c"),
            "--target_checkpoint",
            str(tmp_path / "runs/t/control"),
            "--control",
            "true",
            "--attacks",
            "[global]",
            "--resamples",
            "100",
        ]
    )
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["settings"]["control"] is True


def test_attack_refuses_a_target_with_other_classes(study: Study, tmp_path: Path) -> None:
    two = tiny_dataset(tmp_path / "two", {"ant": 4, "bee": 4})
    main(["fit", "--config", str(_teacher_config(tmp_path / "t2.yaml", two)), *_run(tmp_path, "two")])
    ckpt = tmp_path / "runs" / "t" / "two" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"class names \['ant', 'bee'\] -> \['ant', 'bee', 'cow'\]"):
        main(["attack", str(study.shadows), str(tmp_path / "mia"), "--target_checkpoint", str(ckpt)])
    assert not (tmp_path / "mia" / "metrics.json").exists()


def test_reordered_shadows_file_is_refused(study: Study, tmp_path: Path) -> None:
    with np.load(study.shadows) as saved:
        data = {k: saved[k] for k in saved.files}
    order = np.arange(N)[::-1]
    bad = tmp_path / "shadows.npz"
    np.savez(bad, **{**data, "ids": data["ids"][order], "labels": data["labels"][order]})
    with pytest.raises(ValueError, match="do not match its ids_hash"):
        load_shadows(str(bad))
    with pytest.raises(ValueError, match="do not match its ids_hash"):
        main(["attack", str(bad), str(tmp_path / "mia")])
    assert load_shadows(str(study.shadows))["logits"].shape == (K, N, Q, C)


def test_online_attack_needs_an_even_number_of_shadows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = balanced_mask(4, 30, 0)[:3]  # 3 models: no longer balanced
    ids = np.asarray([f"x{i}" for i in range(30)])
    shadows = tmp_path / "odd.npz"
    np.savez(shadows, logits=rng.normal(size=(3, 30, 2, 3)), labels=rng.integers(0, 3, 30), ids=ids, mask=mask)
    with pytest.raises(ValueError, match="K=3"):
        main(["attack", str(shadows), str(tmp_path / "mia")])
    assert not (tmp_path / "mia" / "metrics.json").exists()


# --------------------------------------------------------------------------- bad settings


def test_bad_ensemble_settings(study: Study, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="group_size must be at least 1; got 0"):
        ShadowEnsemble(group_size=0)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        ShadowEnsemble(num_classes=1)
    with pytest.raises(ValueError, match="num_models must be at least 2"):
        ShadowEnsemble(num_classes=3).configure_models(1)
    fit = ["fit", "--config", str(study.config)]
    with pytest.raises(ValueError, match=r"data.num_models must be even and at least 2 .*got 3"):
        main([*fit, *_run(tmp_path, "odd"), "--data.init_args.num_models", "3"])
    with pytest.raises(ValueError, match="group_size must be at least 1; got 0"):
        main([*fit, *_run(tmp_path, "zero"), "--model.init_args.group_size", "0"])
    teacher = ["fit", "--config", str(_teacher_config(tmp_path / "t.yaml", study.data))]
    with pytest.raises(ValueError, match="ShadowEnsemble needs a MembershipDataModule"):
        main([*teacher, *_run(tmp_path, "plain"), "--model", "ShadowEnsemble"])


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path: Path) -> None:
    """Fit and query the ensemble with 2 DDP processes: every query example once, the design intact."""
    root = tiny_dataset(tmp_path / "data")
    config = str(_shadow_config(tmp_path / "shadows.yaml", root))
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    for command in (["fit"], ["predict", "--ckpt_path", "last"]):
        argv = [command[0], "--config", config, *_run(tmp_path, "ddp"), *ddp, *command[1:]]
        run_cli_process(argv, env={"WANDB_DIR": str(tmp_path)})
    run_dir = tmp_path / "runs" / "t" / "ddp"
    data = load_shadows(str(run_dir / "shadows.npz"))
    assert data["logits"].shape == (K, N, Q, C)
    assert (data["mask"].sum(axis=0) == K // 2).all() and len(set(data["ids"])) == N
    assert not list(run_dir.glob(".*rank*"))  # shards merged and removed
