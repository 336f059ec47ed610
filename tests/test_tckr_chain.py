"""TCKR's generative chain end to end through cli.main, offline on CPU, using configs/tckr/*.yaml with tiny sizes.

template captions (Captioner) -> LoRA fit of a tiny TextToImageDiffusion (AdapterExport, SampleGrid) -> synthetic
dataset (PromptDataModule + SyntheticImageWriter, from the fit checkpoint) -> student ImageClassifier on the
synthetic folder with a real-data teacher's soft labels -> student test metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import CLASSES, tiny_config, tiny_dataset
from PIL import Image

from cli import main

ROOT = Path(__file__).resolve().parents[1]
TCKR = ROOT / "configs" / "tckr"
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false"]


def _run(command: str, tmp_path: Path, name: str, configs: list[Path], *extra: str) -> Path:
    args = [command]
    for config in configs:
        args += ["--config", str(config)]
    main([*args, *CPU, "--run.root", str(tmp_path / "runs"), "--run.study", "tckr", "--run.name", name, *extra])
    return tmp_path / "runs" / "tckr" / name


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.usefixtures("one_torch_thread")
def test_tckr_chain(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data", size=16)
    real_train = sum(CLASSES.values())
    names = sorted(CLASSES)

    # 1. template captions of the real training images
    caption = _run(
        "predict",
        tmp_path,
        "caption",
        [TCKR / "caption_template.yaml"],
        "--data.init_args.train_roots",
        str(data / "train"),
        "--data.init_args.val_root",  # every real training image captioned, none held out
        str(data / "val"),
        "--data.init_args.image_size",
        "16",
    )
    captions = _jsonl(caption / "captions.jsonl")
    assert len(captions) == real_train
    assert {r["class"] for r in captions} == set(names)
    assert all(r["caption"] == f"a photo of a {r['class']}" for r in captions)

    # 2. LoRA fit of the tiny diffusion model: adapter exported, one sample grid per epoch
    lora = _run(
        "fit",
        tmp_path,
        "lora",
        [TCKR / "tiny_lora.yaml"],
        "--data.init_args.captions",
        str(caption / "captions.jsonl"),
        "--trainer.max_epochs",
        "2",
    )
    adapter = lora / "adapter"
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((adapter / "export.json").read_text())["epoch"] >= 1
    assert not list(lora.glob(".adapter.*"))  # no temporary folders left
    grids = sorted((lora / "samples").glob("epoch*.png"))
    assert [g.name for g in grids] == ["epoch000.png", "epoch001.png"]
    with Image.open(grids[-1]) as grid:
        assert grid.size[0] >= 3 * 16 and grid.size[1] >= 16
    ckpt = lora / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    # 3. synthetic dataset from the fit checkpoint (base rebuilt from the saved options + LoRA weights)
    generate = _run(
        "predict",
        tmp_path,
        "generate",
        [TCKR / "generate.yaml"],
        "--ckpt_path",
        str(ckpt),
        "--data.init_args.captions",
        str(caption / "captions.jsonl"),
        "--data.init_args.real_train_root",
        str(data / "train"),
        "--data.init_args.batch_size",
        "8",
        "--trainer.precision",
        "32",
    )
    synthetic = generate / "synthetic"
    pngs = sorted(synthetic.rglob("*.png"))
    assert len(pngs) == 1 * real_train  # cardinality 1 x |real train|
    assert sorted(p.name for p in synthetic.iterdir() if p.is_dir()) == names
    rows = _jsonl(synthetic / "manifest.jsonl")
    assert [r["index"] for r in rows] == list(range(real_train))
    assert all((synthetic / r["file"]).is_file() and r["file"].startswith(r["class"] + "/") for r in rows)
    assert all(r["prompt"] == f"{r['class']}: a photo of a {r['class']}" for r in rows)
    config = json.loads((synthetic / "generation.json").read_text())
    assert config["complete"] and config["written"] == real_train
    assert config["guidance_scale"] == 2.0 and config["num_inference_steps"] == 3 and config["sampler"] == "ddim"
    with Image.open(pngs[0]) as image:
        assert image.size == (16, 16)

    # 4. teacher on the real images, student on the synthetic ones with the teacher's soft labels
    teacher_config = tiny_config(tmp_path / "teacher.yaml", data)
    teacher = _run("fit", tmp_path, "teacher", [teacher_config])
    teacher_ckpt = teacher / "checkpoints" / "last.ckpt"
    assert teacher_ckpt.is_file()
    student = _run(
        "fit",
        tmp_path,
        "student",
        [TCKR / "student.yaml"],
        "--model.init_args.backbone",
        "resnet8-1",
        "--model.init_args.teacher_checkpoint",
        str(teacher_ckpt),
        "--data.init_args.train_roots",
        str(synthetic),
        "--data.init_args.val_root",
        str(data / "val"),
        "--data.init_args.test_root",
        str(data / "test"),
        "--data.init_args.image_size",
        "32",
        "--data.init_args.batch_size",
        "8",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
    )
    student_ckpt = student / "checkpoints" / "last.ckpt"
    assert student_ckpt.is_file()
    tested = _run("test", tmp_path, "student", [student / "config.yaml"], "--ckpt_path", str(student_ckpt))
    metrics = json.loads((tested / "test" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test/acc"] <= 1.0 and {f"test/acc_class/{n}" for n in names} <= set(metrics)
