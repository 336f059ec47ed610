"""benchmarks/diffusion.py runs end to end on the tiny configuration (CPU, a few seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_diffusion", ROOT / "benchmarks" / "diffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark()
    results = bench.main(
        ["--size", "tiny", "--steps", "1", "--warmup", "1", "--batch", "2", "--gen-images", "2", "--gen-steps", "2"]
    )
    for key in ("plain_s", "ours_s", "cached_s", "train_ratio", "cached_ratio", "naive_ips", "ours_ips", "gen_ratio"):
        assert results[key] > 0, key
    # same components, seeds and scheduler: our batched images match the per-prompt pipeline's
    assert results["gen_max_diff"] < 1e-2
    out = capsys.readouterr().out
    assert "TextToImageDiffusion" in out and "pipeline call per prompt" in out


def test_sd2_config_is_the_published_architecture() -> None:
    bench = load_benchmark()
    config = bench.components_config("sd2")
    unet = config["unet"]
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["attention_head_dim"] == [5, 10, 20, 20]
    assert unet["cross_attention_dim"] == config["text_encoder"]["hidden_size"] == 1024
    assert unet["layers_per_block"] == 2 and unet["use_linear_projection"] and unet["sample_size"] == 64
    assert config["text_encoder"]["num_hidden_layers"] == 23
    assert len(config["vae"]["block_out_channels"]) == 4  # 8x downsampling, 4 latent channels
