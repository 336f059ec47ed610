"""The TCKR studies' configs are valid without running anything: configs/tckr/study.yaml (GPU, local SD2 and BLIP-2
folders) and configs/tckr/cpu_study.yaml.

Every training step's exact command line (``tools.study_plan.step_argv``, as ``synthpriv run`` builds it) is parsed
by the LightningCLI with ``--print_config``, in-process: jsonargparse resolves and type-checks the whole config but
instantiates nothing, so no model is built and no weights are read. Each tool step's config is parsed the same
way by the tool's own parser. Resolved values are then checked against TCKR's recipe and against the steps that
produce each input (the teacher's run folder, the LoRA adapter, the synthetic folders).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import main
from tools.study import TRAINING_COMMANDS, load_study
from tools.study_plan import step_argv

ROOT = Path(__file__).resolve().parents[1]
GPU_STUDY = "configs/tckr/study.yaml"
CPU_STUDY = "configs/tckr/cpu_study.yaml"
STUDIES = (GPU_STUDY, CPU_STUDY)
CARDINALITIES = (0.1, 0.2, 1.0, 5.0, 10.0, 20.0)


@contextlib.contextmanager
def _in_root():
    old = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


@cache
def _study(path: str) -> tuple[str, list[Any]]:
    with _in_root():
        return load_study(Path(path))


def _steps(path: str) -> dict[str, Any]:
    return {s.name: s for s in _study(path)[1]}


@cache
def _printed(argv: tuple[str, ...]) -> dict[str, Any]:
    """``synthpriv <argv> --print_config`` in this process, as a dict (parse only: nothing is instantiated)."""
    out = io.StringIO()
    with _in_root(), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    assert exit_info.value.code in (0, None), f"synthpriv {' '.join(argv)}: exit {exit_info.value.code}"
    return yaml.safe_load(out.getvalue())


def _resolved(path: str, name: str) -> dict[str, Any]:
    """The resolved config of step ``name`` of study ``path``, parsed from the exact command line the runner uses."""
    study, steps = _study(path)
    step = next(s for s in steps if s.name == name)
    return _printed(tuple(step_argv(study, step)))


def _subcommand(printed: dict[str, Any]) -> dict[str, Any]:
    """A training command's printed config (LightningCLI prints the subcommand's config at the top level)."""
    return printed


def _training_cases() -> list[tuple[str, str]]:
    """One (study, step) per distinct (command, configs, args) of the training steps; run.name aside only when
    two steps differ by nothing else (e.g. a fit and its test share their config list only with other args)."""
    cases, seen = [], set()
    for path in STUDIES:
        for step in _study(path)[1]:
            if step.command not in TRAINING_COMMANDS:
                continue
            key = (step.command, tuple(step.configs), json.dumps(step.args, sort_keys=True))
            if key not in seen:
                seen.add(key)
                cases.append((path, step.name))
    return cases


def _tool_cases() -> list[tuple[str, str]]:
    return [(p, s.name) for p in STUDIES for s in _study(p)[1] if s.command not in TRAINING_COMMANDS]


# (1) study files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", STUDIES)
def test_study_loads_and_every_config_and_need_exists(path: str) -> None:
    study, steps = _study(path)
    assert study == {"configs/tckr/study.yaml": "tckr", "configs/tckr/cpu_study.yaml": "tckr_cpu"}[path]
    earlier: set[str] = set()
    for step in steps:
        for config in step.configs:
            assert (ROOT / config).is_file(), f"{step.name}: config {config} does not exist"
        for need in step.needs:
            assert need in earlier, f"{step.name}: needs {need!r}, which is no earlier step"
        earlier.add(step.name)
        # every output and run folder lies in the study's folder (the data step writes the dataset)
        if step.command != "data":
            assert all(o.startswith(f"runs/{study}/") for o in step.outputs), (step.name, step.outputs)


def test_gpu_study_has_tckr_steps_and_names_each_model_folder_once() -> None:
    steps = _steps(GPU_STUDY)
    names = [f"generate-x{c:g}" for c in CARDINALITIES] + [f"student-x{c:g}" for c in CARDINALITIES]
    names += [f"student-x{c:g}-test" for c in CARDINALITIES] + [f"attack-student-x{c:g}" for c in CARDINALITIES]
    names += ["data", "caption", "teacher", "teacher-test", "shadows", "shadows-query", "lora", "attack-teacher"]
    assert {*names, "privacy-report"} == set(steps)
    sd2, blip2 = "configs/tckr/gpu/sd2.yaml", "configs/tckr/gpu/blip2.yaml"
    for name, step in steps.items():
        loads_sd2 = name == "lora" or name.startswith("generate-")
        assert (sd2 in step.configs) == loads_sd2, name
        assert (blip2 in step.configs) == (name == "caption"), name
        if step.command in TRAINING_COMMANDS:
            assert step.configs[0] == "configs/trainer/gpu.yaml", name
    # the two folders are written nowhere else in the GPU configs
    for config in sorted((ROOT / "configs/tckr/gpu").glob("*.yaml")):
        text = config.read_text()
        assert ("/models/stable-diffusion-2" in text) == (config.name == "sd2.yaml"), config
        assert ("/models/blip2" in text) == (config.name == "blip2.yaml"), config
    assert "--status true" in (ROOT / GPU_STUDY).read_text()


# (2) training steps parse -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "name"), _training_cases(), ids=lambda v: v.split("/")[-1])
def test_training_step_parses(path: str, name: str) -> None:
    config = _subcommand(_resolved(path, name))
    study = _study(path)[0]
    assert config["run"]["study"] == study and config["run"]["name"] == _steps(path)[name].args["run.name"]
    assert config["model"]["class_path"] and config["data"]["class_path"]


def test_gpu_teacher_and_shadows_follow_tckr_recipe() -> None:
    teacher = _subcommand(_resolved(GPU_STUDY, "teacher"))
    m, d = teacher["model"]["init_args"], teacher["data"]["init_args"]
    assert teacher["model"]["class_path"].endswith("ImageClassifier")
    assert m["backbone"] == "mobilenet_v3_large" and m["weights"] is None
    assert (m["optimizer"], m["lr"], m["weight_decay"], m["scheduler"]) == ("adamw", 1e-3, 5e-5, "cosine")
    assert (m["label_smoothing"], m["mixup_alpha"]) == (0.1, 0.2)
    assert (d["transform"], d["image_size"], d["batch_size"]) == ("tckr", 224, 96)
    assert d["train_roots"] == "data/animal-mnist/train" and d["val_root"] == "data/animal-mnist/val"
    assert d["train_fractions"] == [0.143]
    assert teacher["trainer"]["accelerator"] == "gpu" and teacher["trainer"]["precision"] == "bf16-mixed"
    shadows = _subcommand(_resolved(GPU_STUDY, "shadows"))
    s, sd = shadows["model"]["init_args"], shadows["data"]["init_args"]
    assert shadows["model"]["class_path"].endswith("ShadowEnsemble") and sd["num_models"] == 16
    for key in (
        "backbone",
        "optimizer",
        "lr",
        "weight_decay",
        "scheduler",
        "label_smoothing",
        "mixup_alpha",
        "bn_momentum",
        "momentum",
        "nesterov",
        "milestones",
        "gamma",
    ):
        assert s[key] == m[key], f"shadows model.{key} {s[key]!r} differs from the teacher's {m[key]!r}"
    assert sd["source"]["init_args"] == d, "the shadows' data source differs from the teacher's data"
    assert sd["batch_size"] == d["batch_size"] and teacher["trainer"]["max_epochs"] == shadows["trainer"]["max_epochs"]
    query = _subcommand(_resolved(GPU_STUDY, "shadows-query"))
    assert query["ckpt_path"] == "last" and query["data"] == shadows["data"]
    test = _subcommand(_resolved(GPU_STUDY, "teacher-test"))
    assert test["model"] == teacher["model"] and test["data"] == teacher["data"]


def test_gpu_caption_lora_and_generation_chain() -> None:
    teacher = _subcommand(_resolved(GPU_STUDY, "teacher"))["data"]["init_args"]
    caption = _subcommand(_resolved(GPU_STUDY, "caption"))
    c, cd = caption["model"]["init_args"], caption["data"]["init_args"]
    assert c["model_path"] == "/models/blip2-opt-2.7b" and (c["max_new_tokens"], c["num_beams"]) == (20, 1)
    # exactly the teacher's images: same folder, share and split seed, none held out
    for key in ("train_roots", "train_fractions", "split_seed"):
        assert cd[key] == teacher[key], key
    assert cd["val_fraction"] == 0 and cd["predict_split"] == "train"
    lora = _subcommand(_resolved(GPU_STUDY, "lora"))
    lm, ld = lora["model"]["init_args"], lora["data"]["init_args"]
    assert lm["pretrained_model_path"] == "/models/stable-diffusion-2" and lm["finetune"] == "lora"
    assert (lm["lora_rank"], lm["lora_alpha"], lm["lr"]) == (4, 4, 1e-4)
    assert lora["trainer"]["max_epochs"] == 3 and lora["trainer"]["precision"] == "16-mixed"
    assert ld["captions"] == "runs/tckr/caption/captions.jsonl" in _steps(GPU_STUDY)["caption"].outputs
    assert ld["include_ids"] == "runs/tckr/teacher/trained_ids.txt" in _steps(GPU_STUDY)["teacher"].outputs
    lora_dir = "runs/tckr/lora/adapter"
    assert f"{lora_dir}/export.json" in _steps(GPU_STUDY)["lora"].outputs
    for card in CARDINALITIES:
        name = f"generate-x{card:g}"
        generate = _subcommand(_resolved(GPU_STUDY, name))
        g, gd = generate["model"]["init_args"], generate["data"]["init_args"]
        assert generate["data"]["class_path"].endswith("PromptDataModule")
        assert gd["cardinality"] == card and generate["run"]["name"] == name
        assert gd["real_train_ids"] == "runs/tckr/teacher/trained_ids.txt" and gd["real_train_root"] is None
        assert gd["captions"] == ld["captions"] and gd["prompt_type"] == "classname_caption"
        assert g["adapter_path"] == lora_dir and g["pretrained_model_path"] == lm["pretrained_model_path"]
        assert (g["guidance_scale"], g["num_inference_steps"], g["sampler"]) == (2.0, 20, "dpm")
        assert (g["height"], g["width"], g["lora_rank"]) == (224, 224, 4)
        assert "lora" in _steps(GPU_STUDY)[name].needs


def test_gpu_students_distil_from_the_teacher_on_each_synthetic_set() -> None:
    teacher = _subcommand(_resolved(GPU_STUDY, "teacher"))
    steps = _steps(GPU_STUDY)
    for card in CARDINALITIES:
        synthetic = f"runs/tckr/generate-x{card:g}/synthetic"
        assert f"{synthetic}/manifest.jsonl" in steps[f"generate-x{card:g}"].outputs
        for name in (f"student-x{card:g}", f"student-x{card:g}-test"):
            student = _subcommand(_resolved(GPU_STUDY, name))
            s, sd = student["model"]["init_args"], student["data"]["init_args"]
            assert s["teacher_checkpoint"] == "runs/tckr/teacher" and s["mixup_alpha"] == 0
            assert s["backbone"] == teacher["model"]["init_args"]["backbone"] and s["weights"] is None
            assert (s["lr"], s["weight_decay"], s["label_smoothing"], s["distill_temperature"]) == (1e-3, 5e-5, 0.1, 1)
            assert sd["train_roots"] == synthetic and sd.get("train_fractions") is None
            assert (sd["transform"], sd["image_size"], sd["batch_size"]) == ("tckr", 224, 96)
            assert (sd["val_root"], sd["test_root"]) == (
                teacher["data"]["init_args"]["val_root"],
                teacher["data"]["init_args"]["test_root"],
            )
            assert student["run"]["name"] == f"student-x{card:g}"
        assert student["ckpt_path"] == "best"


def test_cpu_study_resolved_values() -> None:
    student = _subcommand(_resolved(CPU_STUDY, "student"))
    assert student["model"]["init_args"]["teacher_checkpoint"] == "runs/tckr_cpu/teacher"
    assert student["data"]["init_args"]["train_roots"] == "runs/tckr_cpu/generate/synthetic"
    labels = _subcommand(_resolved(CPU_STUDY, "student-labels"))
    assert labels["model"]["init_args"]["teacher_checkpoint"] is None
    generate = _subcommand(_resolved(CPU_STUDY, "generate"))
    assert generate["data"]["init_args"]["cardinality"] == 1.0
    assert generate["data"]["init_args"]["real_train_ids"] == "runs/tckr_cpu/teacher/trained_ids.txt"
    assert generate["model"]["init_args"]["adapter_path"] == "runs/tckr_cpu/lora/adapter"
    base = _subcommand(_resolved(CPU_STUDY, "generate-base"))
    assert base["model"]["init_args"]["finetune"] == "full"


# tool steps parse -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "name"), _tool_cases(), ids=lambda v: v.split("/")[-1])
def test_tool_step_parses(path: str, name: str) -> None:
    study, steps = _study(path)
    step = next(s for s in steps if s.name == name)
    printed = _resolved(path, name)
    if step.command == "data":
        return
    assert printed["out"].startswith(f"runs/{study}/"), printed["out"]
    if step.command == "attack":
        assert printed["shadows"] == f"runs/{study}/shadows/shadows.npz" and printed["target_checkpoint"]
        if printed["members_via"] is not None:  # an indirect target: its members' run is a real step's folder
            assert any(o.startswith(printed["members_via"] + "/") for s in steps for o in s.outputs)
    if step.command == "privacy-report":
        attack_dirs = {e["attack_dir"] for e in printed["entries"]}
        attack_outs = {o.rsplit("/", 1)[0] for s in steps if s.command == "attack" for o in s.outputs}
        assert attack_dirs == attack_outs, "the report must list every attack step's folder, and only those"


def test_gpu_attacks_target_every_student_via_the_teacher() -> None:
    steps = _steps(GPU_STUDY)
    teacher = _resolved(GPU_STUDY, "attack-teacher")
    assert teacher["target_checkpoint"] == "runs/tckr/teacher" and teacher["members_via"] is None
    for card in CARDINALITIES:
        attack = _resolved(GPU_STUDY, f"attack-student-x{card:g}")
        assert attack["target_checkpoint"] == f"runs/tckr/student-x{card:g}"
        assert attack["members_via"] == "runs/tckr/teacher" and attack["device"] == "cuda"
        assert {"shadows-query", f"student-x{card:g}", "teacher"} <= set(steps[f"attack-student-x{card:g}"].needs)
    report = _resolved(GPU_STUDY, "privacy-report")
    assert [e["attack"] for e in report["entries"]] == ["online"] * 7


# the captioned images are the teacher's ------------------------------------------------------------------------


def _train_ids(data: dict[str, Any]) -> set[str]:
    """Ids of an ImageFolderDataModule's train split (folders scanned, no image decoded)."""
    from datamodules.images import ImageFolderDataModule

    with _in_root():
        return set(ImageFolderDataModule(**data["init_args"]).example_ids("train"))


@pytest.mark.parametrize("path", [GPU_STUDY, CPU_STUDY])
def test_every_image_the_teacher_trains_on_is_captioned(path: str) -> None:
    """The LoRA trains on the teacher's images (include_ids): each needs a caption from the caption step."""
    if not (ROOT / "data/animal-mnist/manifest.json").is_file():
        pytest.skip("data/animal-mnist is not materialised (synthpriv data --dataset animal-mnist)")
    captioned = _train_ids(_subcommand(_resolved(path, "caption"))["data"])
    trained = _train_ids(_subcommand(_resolved(path, "teacher"))["data"])
    missing = trained - captioned
    assert not missing, f"{len(missing)} of the teacher's {len(trained)} images get no caption"
