"""Issue 12: bad inputs to the TCKR chain end in a clear error with nothing written, and a resumed fit is exact.

fp16 on a CPU (every model, through ``cli.main``), a diffusers folder missing a component, a LoRA adapter of
another base model or rank, and a LoRA fit resumed from ``last.ckpt`` matching an uninterrupted one bit for bit.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import tiny_config, tiny_dataset
from lightning import Trainer, seed_everything
from test_diffusion import TEXT, UNET, FixedBatch, make
from test_diffusion import tiny_config as tiny_components
from torch.utils.data import DataLoader

from cli import main


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (empty when root does not exist)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- 1. fp16 on a CPU


@pytest.mark.parametrize("command", ["fit", "predict"])
@pytest.mark.parametrize(("precision", "accelerator"), [("16-mixed", "cpu"), ("16", "auto"), ("16-true", "cpu")])
def test_fp16_on_a_cpu_is_refused_before_anything_is_written(
    command: str,
    precision: str,
    accelerator: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lightning would turn 16-mixed on a CPU into bf16-mixed with a warning; synthpriv stops with one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" resolves to the CPU
    config = tiny_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data"))
    runs = tmp_path / "runs"
    if command == "predict":  # an existing run: its files stay as they were
        (runs / "imageclassifier" / "checkpoints").mkdir(parents=True)
        (runs / "imageclassifier" / "config.yaml").write_text("kept: true\n")
    before = _files(runs)
    argv = [command, "--config", str(config), "--run.root", str(runs), "--run.name", "imageclassifier"]
    argv += ["--trainer.accelerator", accelerator, "--trainer.precision", precision]
    monkeypatch.setattr(sys, "argv", ["synthpriv", *argv])
    monkeypatch.delenv("SYNTHPRIV_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = str(exit_info.value.code)
    assert message.startswith("synthpriv: error: trainer.precision: ") and "\n" not in message, message
    assert f"found {precision}" in message and "bf16-mixed or 32-true on a CPU" in message, message
    assert "GPU" in message and "trainer.accelerator" in message, message
    assert "Traceback" not in capsys.readouterr().err
    assert _files(runs) == before
    assert runs.exists() == (command == "predict")


def test_precision_rule_accepts_what_runs() -> None:
    from jsonargparse import Namespace

    from tools.cli_errors import CommandLineError
    from tools.training_cli import _check_precision

    for precision in ("bf16-mixed", "32-true", "32", None, "64-true"):
        _check_precision(Namespace(precision=precision, accelerator="cpu"))
    for accelerator in ("cuda", "gpu", "mps"):  # "gpu" without a GPU: Lightning says so itself
        _check_precision(Namespace(precision="16-mixed", accelerator=accelerator))
    cpu_class = Namespace(class_path="lightning.pytorch.accelerators.CPUAccelerator")
    with pytest.raises(CommandLineError, match=r"found 16 with trainer\.accelerator"):
        _check_precision(Namespace(precision=16, accelerator=cpu_class))


# ----------------------------------------------------------------------------------- 2. a model folder lacking a part


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_modules.networks.diffusion import build_components, save_components

    return save_components(build_components(tiny_components()), tmp_path_factory.mktemp("base") / "sd")


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("unet/config.json", "unet/config.json"),
        ("text_encoder", "text_encoder/config.json"),
        ("tokenizer", "tokenizer/tokenizer_config.json"),
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    ],
)
def test_model_folder_missing_a_component_is_named(
    saved_model: Path, remove: str, named: str, tmp_path: Path, one_torch_thread
) -> None:
    import shutil

    from lightning_modules.diffusion import TextToImageDiffusion

    folder = shutil.copytree(saved_model, tmp_path / "sd")
    part = folder / remove
    shutil.rmtree(part) if part.is_dir() else part.unlink()
    before = _files(folder)
    with pytest.raises(ValueError, match=rf"pretrained_model_path: .* has no {named}") as err:
        TextToImageDiffusion(pretrained_model_path=str(folder))
    assert str(folder / remove.split("/")[0]) in str(err.value)  # where to put the files
    assert _files(folder) == before


def test_complete_model_folder_loads(saved_model: Path, one_torch_thread) -> None:
    from lightning_modules.diffusion import TextToImageDiffusion

    model = TextToImageDiffusion(pretrained_model_path=str(saved_model))
    assert model.trainable_keys and model.vae is not None


# ----------------------------------------------------------------------------------- 3. an adapter of another model


@pytest.fixture(scope="module")
def exported_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-4 LoRA of the tiny base of test_diffusion, exported by save_adapter."""
    torch.set_num_threads(1)
    return make(lora_init="random").save_adapter(tmp_path_factory.mktemp("lora") / "lora")


def _components(**unet: object) -> dict:
    config = tiny_components()
    config["unet"] = {**UNET, **unet}
    if "cross_attention_dim" in unet:
        config["text_encoder"] = {**TEXT, "hidden_size": unet["cross_attention_dim"]}
    return config


@pytest.mark.parametrize(
    "unet", [{"block_out_channels": [64, 64]}, {"cross_attention_dim": 64, "attention_head_dim": [4, 8]}]
)
def test_adapter_of_another_base_model_is_refused(exported_lora: Path, unet: dict, one_torch_thread) -> None:
    file = exported_lora / "pytorch_lora_weights.safetensors"
    before = file.read_bytes()
    with pytest.raises(ValueError, match=r"adapter_path .*: its unet LoRA does not match this model \(") as err:
        make(components=_components(**unet), adapter_path=str(exported_lora))
    message = str(err.value)
    assert re.search(r"has another shape: \(\d+, \d+\) in the file, \(\d+, \d+\) in this model", message), message
    assert "base model" in message and str(file) in message, message
    assert file.read_bytes() == before


def test_adapter_of_another_rank_without_metadata_is_refused(
    exported_lora: Path, tmp_path: Path, one_torch_thread
) -> None:
    """The rank is checked on the recorded metadata, and on the shapes when a file has none (e.g. made elsewhere)."""
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(exported_lora / "pytorch_lora_weights.safetensors"), bare)
    with pytest.raises(ValueError, match="trained with unet r 4, this model has 2"):
        make(lora_rank=2, adapter_path=str(exported_lora))
    with pytest.raises(ValueError, match=r"has another shape.*lora_rank"):
        make(lora_rank=2, adapter_path=str(bare))
    make(adapter_path=str(bare))  # the same rank loads


# ----------------------------------------------------------------------------------- 4. resume is exact


def _lora_fit(root: Path, max_epochs: int, ckpt_path: Path | None = None) -> dict[str, torch.Tensor]:
    """A tiny LoRA fit (pixel space, prompt dropout, shuffled batches of 2): the trainable weights at its end."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    seed_everything(0)  # as the CLI does on every start, resumed or not
    model = make(components=tiny_components(vae=False), lr=1e-2, prompt_dropout=0.5, snr_gamma=5.0)
    trainer = Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
    )
    trainer.fit(model, DataLoader(FixedBatch(), batch_size=2, shuffle=True), ckpt_path=ckpt_path)
    keys = model.trainable_keys
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}


def test_resumed_lora_fit_equals_an_uninterrupted_one(tmp_path: Path, one_torch_thread) -> None:
    straight = _lora_fit(tmp_path / "straight", max_epochs=2)
    _lora_fit(tmp_path / "split", max_epochs=1)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # the saved generators load as plain data
    assert set(ckpt["rng_states"]) == {"torch", "cuda", "numpy", "python"}
    resumed = _lora_fit(tmp_path / "split", max_epochs=2, ckpt_path=last)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "resumed fit differs"

    # Without the saved generators the second epoch draws the first epoch's numbers again: another result.
    del ckpt["rng_states"]
    torch.save(ckpt, tmp_path / "no_rng.ckpt")
    other = _lora_fit(tmp_path / "no_rng", max_epochs=2, ckpt_path=tmp_path / "no_rng.ckpt")
    assert any(not torch.equal(straight[k], other[k]) for k in straight)


def test_generators_are_left_alone_outside_a_fit(tmp_path: Path, one_torch_thread) -> None:
    """load_from_checkpoint (no trainer) and a validate from a checkpoint do not rewind the random generators: they
    end where the same calls without the checkpoint end."""
    from lightning_modules.diffusion import TextToImageDiffusion

    _lora_fit(tmp_path, max_epochs=1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["rng_states"]["torch"]

    def validate(ckpt_path: Path | None) -> torch.Tensor:
        torch.manual_seed(123)
        if ckpt_path is None:
            model = make(components=tiny_components(vae=False), lr=1e-2, prompt_dropout=0.5, snr_gamma=5.0)
        else:
            model = TextToImageDiffusion.load_from_checkpoint(ckpt_path, weights_only=True)
        quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
        trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, **quiet)
        trainer.validate(model, DataLoader(FixedBatch(), batch_size=4), ckpt_path=ckpt_path, weights_only=True)
        return torch.get_rng_state()

    with_checkpoint = validate(last)
    assert torch.equal(with_checkpoint, validate(None))
    assert not torch.equal(with_checkpoint, saved)


@pytest.mark.parametrize("weights", ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
def test_model_folder_missing_weights_is_named(
    saved_model: Path, weights: str, tmp_path: Path, one_torch_thread
) -> None:
    import shutil

    from lightning_modules.diffusion import TextToImageDiffusion

    folder = shutil.copytree(saved_model, tmp_path / "sd")
    (folder / weights).unlink()
    sub, name = weights.split("/")
    with pytest.raises(ValueError, match=rf"{sub} has a config.json but no weights; expected {re.escape(name)}"):
        TextToImageDiffusion(pretrained_model_path=str(folder))
