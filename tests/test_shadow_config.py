"""Issue 11 item 6: shadows derived from a user's own target run, and shadows runs checked against the target.

A tiny 2-class teacher ("face", "other") is fitted once; its shadows config is derived with
``shadows_config`` and 4 shadows are fitted from it for 1 epoch; two more shadows runs differ on purpose (another
lr; another dataset "zero"/"one", the issue's case that used to exit 0 with AUC 0.18).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import tiny_config, tiny_dataset

from cli import main
from tools.shadow_check import check_shadows_match_target
from tools.shadow_config import RECIPE_KEYS, derive_shadows_config, shadows_config

FACES = {"face": 8, "other": 8}
DIGITS = {"zero": 8, "one": 8}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@dataclass
class Fitted:
    root: Path
    faces: Path
    teacher: Path  # run folder
    derived: Path  # the written shadows config
    shadows: Path  # shadows fitted from it
    lr_shadows: Path  # same, with another lr
    digits_shadows: Path  # another dataset with other class names


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    root = tmp_path_factory.mktemp("shadow_config")
    faces = tiny_dataset(root / "faces", FACES)
    runs = root / "runs"
    config = tiny_config(root / "teacher.yaml", faces, max_epochs=1)
    main(["fit", "--config", str(config), "--run.root", str(runs), "--run.study", "s", "--run.name", "teacher"])
    teacher = runs / "s" / "teacher"
    derived = shadows_config(str(teacher), str(root / "shadows.yaml"), num_models=4, group_size=2)
    main(["fit", "--config", str(derived), *QUIET])
    main(["fit", "--config", str(derived), *QUIET, "--run.name", "lr-shadows", "--model.init_args.lr", "0.01"])

    digits = tiny_dataset(root / "digits", DIGITS)
    other = _load(derived)
    source = other["data"]["init_args"]["source"]["init_args"]
    source.update(train_roots=str(digits / "train"), val_root=str(digits / "val"), test_root=str(digits / "test"))
    other["run"]["name"] = "digits-shadows"
    other_file = root / "digits-shadows.yaml"
    other_file.write_text(yaml.safe_dump(other))
    main(["fit", "--config", str(other_file), *QUIET])
    s = runs / "s"
    return Fitted(root, faces, teacher, derived, s / "teacher-shadows", s / "lr-shadows", s / "digits-shadows")


def _fake_run(root: Path, name: str, config: dict[str, Any]) -> Path:
    """A run folder holding only a config.yaml (enough for deriving)."""
    run = root / "runs" / "s" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


# --------------------------------------------------------------------------- deriving


def test_derived_config_copies_the_teachers_recipe_data_epochs_and_seed(fitted: Fitted) -> None:
    teacher, derived = _load(fitted.teacher / "config.yaml"), _load(fitted.derived)
    model, data = derived["model"], derived["data"]
    assert model["class_path"] == "ShadowEnsemble" and data["class_path"] == "MembershipDataModule"
    # recipe: every ShadowEnsemble recipe option equals the teacher's (lr 0.001, adamw, cosine, resnet8-1, ...)
    assert {k: model["init_args"][k] for k in RECIPE_KEYS} == {k: teacher["model"]["init_args"][k] for k in RECIPE_KEYS}
    assert model["init_args"]["backbone"] == "resnet8-1" and model["init_args"]["lr"] == 0.001
    assert model["init_args"]["group_size"] == 2
    # data: the teacher's data section verbatim, the teacher's val split as the holdout
    assert data["init_args"]["source"] == teacher["data"]
    assert data["init_args"]["pool_splits"] == ["train", "val"] and data["init_args"]["target_split"] == "train"
    assert data["init_args"]["num_models"] == 4 and data["init_args"]["batch_size"] == 8
    assert derived["trainer"]["max_epochs"] == 1
    assert derived["trainer"]["callbacks"] == [{"class_path": "ShadowLogitsWriter"}]
    assert derived["seed_everything"] == 7
    assert derived["run"] == {"root": str(fitted.root / "runs"), "study": "s", "name": "teacher-shadows"}
    header = fitted.derived.read_text().split("\nseed_everything")[0]
    assert header.startswith(f"# Shadows for the target run {fitted.teacher}")
    runs = fitted.root / "runs" / "s"
    attack = f"synthpriv attack {runs / 'teacher-shadows' / 'shadows.npz'} {runs / 'attack-teacher'}"
    for command in (f"synthpriv fit --config {fitted.derived}", "synthpriv predict --config", attack):
        assert command in header
    assert str(fitted.teacher / "checkpoints" / "last.ckpt") in header


def test_derived_config_parses_as_a_fit_config(fitted: Fitted, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(fitted.derived), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith("ShadowEnsemble")
    assert printed["data"]["init_args"]["source"]["init_args"]["train_roots"] == str(fitted.faces / "train")


def test_derived_function_equals_the_written_file_and_a_rerun_keeps_it(fitted: Fitted) -> None:
    assert derive_shadows_config(fitted.teacher, num_models=4, group_size=2) == _load(fitted.derived)
    stamp = os.stat(fitted.derived).st_mtime_ns
    assert shadows_config(str(fitted.teacher), str(fitted.derived), num_models=4, group_size=2) == fitted.derived
    assert os.stat(fitted.derived).st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="exists with other content"):
        shadows_config(str(fitted.teacher), str(fitted.derived), num_models=8, group_size=2)


def test_a_target_without_validation_split_pools_its_test_split(fitted: Fitted, tmp_path: Path) -> None:
    config = _load(fitted.teacher / "config.yaml")
    config["data"]["init_args"].update(val_root=None, val_fraction=0.0)
    run = _fake_run(tmp_path, "no-val", config)
    assert derive_shadows_config(run)["data"]["init_args"]["pool_splits"] == ["train", "test"]
    with pytest.raises(ValueError, match="no validation split"):
        derive_shadows_config(run, pool_splits=["train", "val"])
    config["data"]["init_args"]["test_root"] = None
    with pytest.raises(ValueError, match="no non-members"):
        derive_shadows_config(_fake_run(tmp_path, "no-holdout", config))


@pytest.mark.parametrize(
    ("class_path", "option", "value", "match"),
    [
        ("ImageClassifier", "weights", "imagenet", "weights is 'imagenet'.*random initialisation"),
        ("ImageClassifier", "teacher_checkpoint", "runs/x/teacher/checkpoints/last.ckpt", "teacher_checkpoint"),
        ("lightning_modules.LinearProbe", None, None, "LinearProbe is not supported"),
    ],
)
def test_targets_shadows_cannot_copy_are_refused(
    fitted: Fitted, tmp_path: Path, class_path: str, option: str | None, value: Any, match: str
) -> None:
    config = _load(fitted.teacher / "config.yaml")
    config["model"]["class_path"] = class_path
    if option:
        config["model"]["init_args"][option] = value
    run = _fake_run(tmp_path, "refused", config)
    with pytest.raises(ValueError, match=match) as err:
        shadows_config(str(run), str(tmp_path / "shadows.yaml"))
    assert "\n" not in str(err.value) and str(run) in str(err.value)
    assert not (tmp_path / "shadows.yaml").exists()


def test_options_shadows_cannot_copy_are_warned(fitted: Fitted, tmp_path: Path) -> None:
    config = _load(fitted.teacher / "config.yaml")
    config["trainer"].update(accumulate_grad_batches=2, gradient_clip_val=1.0)
    run = _fake_run(tmp_path, "accumulated", config)
    with pytest.warns(UserWarning, match="accumulate_grad_batches") as record:
        shadows_config(str(run), str(tmp_path / "shadows.yaml"))
    assert any("gradient_clip_val" in str(w.message) for w in record)
    assert "# Warning: " in (tmp_path / "shadows.yaml").read_text()


# --------------------------------------------------------------------------- checking


def test_shadows_fitted_from_the_derived_config_match_the_target(fitted: Fitted) -> None:
    assert check_shadows_match_target(fitted.shadows, fitted.teacher) == []
    last = fitted.teacher / "checkpoints" / "last.ckpt"
    assert check_shadows_match_target(fitted.shadows, last) == []


def test_another_lr_is_a_warning_naming_the_key(fitted: Fitted) -> None:
    warned = check_shadows_match_target(fitted.lr_shadows, fitted.teacher)
    assert len(warned) == 1
    assert warned[0].startswith("model.init_args.lr: 0.001 -> 0.01")


def test_shadows_of_another_dataset_are_refused_naming_the_class_names(fitted: Fitted) -> None:
    """The issue's case: 2-class digits shadows against a 2-class faces teacher used to exit 0 with AUC 0.18."""
    with pytest.raises(ValueError) as err:
        check_shadows_match_target(fitted.digits_shadows, fitted.teacher)
    message = str(err.value)
    assert "\n" not in message and str(fitted.digits_shadows) in message and str(fitted.teacher) in message
    assert "class names ['face', 'other'] -> ['one', 'zero']" in message
    assert f'data.init_args.train_roots: "{fitted.faces / "train"}" -> "{fitted.root / "digits" / "train"}"' in message


def test_a_control_may_train_on_other_examples_but_not_other_pixels(fitted: Fitted, tmp_path: Path) -> None:
    config = _load(fitted.teacher / "config.yaml")
    config["data"]["init_args"].update(
        train_roots=str(fitted.faces / "test"), val_root=None, val_fraction=0.0, test_root=str(fitted.faces / "val")
    )
    control = _fake_run(tmp_path, "control", config)  # no checkpoint: class names come from its data module
    assert check_shadows_match_target(fitted.shadows, control, control=True) == []
    with pytest.raises(ValueError, match=re.escape("data.init_args.train_roots:")):
        check_shadows_match_target(fitted.shadows, control)
    resized = copy.deepcopy(config)
    resized["data"]["init_args"]["image_size"] = 16
    with pytest.raises(ValueError, match=re.escape("data.init_args.image_size: 16 -> 32")):
        check_shadows_match_target(fitted.shadows, _fake_run(tmp_path, "resized", resized), control=True)


def test_query_views_type_matches_the_data_module() -> None:
    """tools.shadow_config repeats datamodules.pool.QueryAugment to start without torch; they must agree."""
    from typing import get_args

    from datamodules.pool import QueryAugment as pool_queries
    from tools.shadow_config import QueryAugment as config_queries

    assert get_args(config_queries) == get_args(pool_queries)
