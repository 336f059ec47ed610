"""TCKR's generative chain end to end through cli.main, offline on CPU, using configs/tckr/*.yaml with tiny sizes.

template captions (Captioner) -> LoRA fit of a tiny TextToImageDiffusion (AdapterExport, SampleGrid) -> synthetic
dataset (PromptDataModule + SyntheticImageWriter, from the fit checkpoint) -> student ImageClassifier on the
synthetic folder with a real-data teacher's soft labels -> student test metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import CLASSES, tiny_config, tiny_dataset
from PIL import Image

from cli import main
from tools.files import file_sha256

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

    # 3. synthetic dataset: the tiny base of the fit config + the exported adapter, at tiny sizes
    generate = _run(
        "predict",
        tmp_path,
        "generate",
        [TCKR / "tiny_lora.yaml", TCKR / "generate.yaml"],
        "--model.init_args.adapter_path",
        str(adapter),
        "--model.init_args.sampler",
        "ddim",
        "--model.init_args.num_inference_steps",
        "3",
        "--model.init_args.height",
        "16",
        "--model.init_args.width",
        "16",
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
    adapter_sha = file_sha256(adapter / "pytorch_lora_weights.safetensors")
    assert config["adapter_sha256"] == adapter_sha and all(r["adapter_sha256"] == adapter_sha for r in rows)
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


@pytest.mark.usefixtures("one_torch_thread")
def test_adapter_path_loads_the_exported_lora(tmp_path: Path) -> None:
    """adapter_path reproduces the trained LoRA (UNet and text encoder) and refuses adapters of another shape."""
    import torch
    from test_diffusion import make

    model = make(lora_init="random", lora_alpha=8, text_encoder_lora=True).eval()
    model.save_adapter(tmp_path / "lora")
    loaded = make(lora_alpha=8, text_encoder_lora=True, adapter_path=str(tmp_path / "lora")).eval()
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        emb = model.encode_prompts(["a cat", "a dog"])
        assert torch.allclose(loaded.encode_prompts(["a cat", "a dog"]), emb, atol=1e-6)
        assert torch.allclose(loaded(noisy, t, emb), model(noisy, t, emb), atol=1e-6)
        assert not torch.allclose(make()(noisy, t, emb), model(noisy, t, emb), atol=1e-4)
    file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert loaded.generation_config()["adapter_sha256"] == file_sha256(file)

    with pytest.raises(ValueError, match="unet r 4"):
        make(lora_rank=2, lora_alpha=8, text_encoder_lora=True, adapter_path=str(file))
    with pytest.raises(ValueError, match="lora_alpha"):
        make(text_encoder_lora=True, adapter_path=str(file))
    with pytest.raises(ValueError, match="text_encoder_lora"):
        make(lora_alpha=8, adapter_path=str(file))
    with pytest.raises(FileNotFoundError, match=r"pytorch_lora_weights\.safetensors"):
        make(adapter_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="finetune: lora"):
        make(finetune="full", adapter_path=str(file))


@pytest.mark.usefixtures("one_torch_thread")
def test_generation_config_identifies_the_base_model_by_content(tmp_path: Path) -> None:
    """base_model_sha256: the same for a copy of the folder elsewhere, different once a weight file changes."""
    import shutil

    from test_diffusion import make

    from lightning_modules.diffusion import TextToImageDiffusion

    make(finetune="full").save_adapter(tmp_path / "base")
    first = TextToImageDiffusion(pretrained_model_path=str(tmp_path / "base")).generation_config()
    shutil.copytree(tmp_path / "base", tmp_path / "moved")
    moved = TextToImageDiffusion(pretrained_model_path=str(tmp_path / "moved")).generation_config()
    assert first["base_model_sha256"] == moved["base_model_sha256"] and first["base_model"] != moved["base_model"]
    weights = next((tmp_path / "moved" / "unet").glob("diffusion_pytorch_model*"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    changed = TextToImageDiffusion(pretrained_model_path=str(tmp_path / "moved")).generation_config()
    assert changed["base_model_sha256"] != first["base_model_sha256"]


def test_callback_arguments_are_checked() -> None:
    from callbacks import AdapterExport, SampleGrid

    with pytest.raises(ValueError, match="one seed per prompt"):
        SampleGrid(prompts=["a", "b"], seeds=[1])
    with pytest.raises(ValueError, match="at least one prompt"):
        SampleGrid(prompts=[])
    assert SampleGrid(prompts=["a", "b"]).seeds == [0, 1]
    with pytest.raises(ValueError, match="plain folder name"):
        AdapterExport(dirname="../x")
    with pytest.raises(ValueError, match="every_n_epochs"):
        AdapterExport(every_n_epochs=0)


def test_full_size_configs_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """The SD2 recipe configs (not runnable offline without weights) parse with TCKR's numbers."""
    gpu = str(ROOT / "configs/trainer/gpu.yaml")
    cases = [
        ("fit", [TCKR / "lora.yaml"]),
        ("predict", [TCKR / "lora.yaml", TCKR / "generate.yaml"]),
        ("fit", [TCKR / "student.yaml", ROOT / "configs/recipes/tckr_classifier.yaml"]),
    ]
    printed = []
    for command, configs in cases:
        args = [command, "--config", gpu]
        for config in configs:
            args += ["--config", str(config)]
        if command == "fit" and configs[0].name == "student.yaml":
            args += ["--model.init_args.mixup_alpha", "0"]
        with pytest.raises(SystemExit):
            main([*args, "--print_config"])
        printed.append(yaml.safe_load(capsys.readouterr().out))
    lora, generate, student = printed
    m = lora["model"]["init_args"]
    assert (m["lora_rank"], m["lora_alpha"], m["lr"], m["snr_gamma"]) == (4, 4, 1e-4, None)
    assert lora["data"]["init_args"]["resolution"] == 224 and lora["data"]["init_args"]["batch_size"] == 1
    assert lora["trainer"]["accumulate_grad_batches"] == 4 and lora["trainer"]["max_epochs"] == 3
    g = generate["model"]["init_args"]
    assert (g["guidance_scale"], g["num_inference_steps"], g["sampler"], g["height"]) == (2.0, 20, "dpm", 224)
    assert g["lora_rank"] == 4 and g["adapter_path"] == "runs/tckr/lora/adapter"
    assert generate["data"]["class_path"].endswith("PromptDataModule")
    assert "resolution" not in generate["data"]["init_args"]
    s = student["model"]["init_args"]
    assert s["mixup_alpha"] == 0 and s["label_smoothing"] == 0.1 and s["teacher_checkpoint"]
    assert student["data"]["init_args"]["transform"] == "tckr"


@pytest.mark.usefixtures("one_torch_thread")
def test_export_every_epoch_and_grid_to_wandb(tmp_path: Path) -> None:
    """AdapterExport every epoch plus at fit end, one grid every 2 epochs, logged to an offline W&B run."""
    from lightning import Trainer
    from lightning.pytorch.loggers import WandbLogger
    from test_diffusion import loader, make

    from callbacks import AdapterExport, SampleGrid

    model = make()
    calls: list[str] = []
    save = model.save_adapter
    model.save_adapter = lambda directory: (calls.append(Path(directory).name), save(directory))[1]
    logger = WandbLogger(project="t", save_dir=str(tmp_path), offline=True)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path / "run",
        callbacks=[
            AdapterExport(every_n_epochs=1, dirname="lora"),
            SampleGrid(["a cat", "a dog"], seeds=[3, 4], every_n_epochs=2, num_inference_steps=2),
        ],
    )
    trainer.fit(model, loader())
    assert calls == [".lora.tmp"] * 3  # epochs 0 and 1, then fit end; always through the temporary folder
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not list((tmp_path / "run").glob(".lora*"))
    assert [p.name for p in (tmp_path / "run" / "samples").glob("*.png")] == ["epoch001.png"]
    meta = json.loads((tmp_path / "run" / "samples" / "epoch001.json").read_text())
    assert meta == {"prompts": ["a cat", "a dog"], "seeds": [3, 4], "epoch": 1}
    logger.experiment.finish()
    # wandb-core may still be writing the media file after finish() returns (seen in CI): wait for it, briefly.
    deadline = time.monotonic() + 20
    while not list(tmp_path.rglob("media/images/samples_*.png")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list(tmp_path.rglob("media/images/samples_*.png"))
