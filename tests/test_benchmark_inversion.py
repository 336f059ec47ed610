"""benchmarks/inversion.py runs end to end at a tiny size (CPU, a few seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_inversion", ROOT / "benchmarks" / "inversion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_run_prints_both_modes_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark()
    argv = ["--arch", "convnet", "--width", "2", "--image-size", "18", "--targets", "3", "--iterations", "2"]
    results = bench.main(argv)
    for key in ("parallel_s", "sequential_s", "parallel_ips", "sequential_ips", "ratio"):
        assert results[key] > 0, key
    assert results["max_diff"] < 1e-2  # same reconstructions either way (float32 rounding aside)
    out = capsys.readouterr().out
    assert "sequential" in out and "parallel" in out and "ratio" in out


def test_estimate_extrapolates_the_full_protocol(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    bench = load_benchmark()
    args = bench.parse(["--estimate", "--targets", "2", "--iterations", "1"])
    assert (args.arch, args.width, args.image_size) == ("resnet20", 4, 32)
    # time a ResNet20-1 so the test stays fast; the extrapolation is the same arithmetic
    monkeypatch.setattr(bench, "parse", lambda argv: args.__class__(**{**vars(args), "width": 1, "warmup": 0}))
    results = bench.main([])
    # 600 images in 300 batches of 2, 8,000 iterations each, from the measured seconds per iteration
    assert results["parallel_hours"] == pytest.approx(300 * results["parallel_s"] * 8000 / 3600)
    assert results["sequential_hours"] == pytest.approx(600 * results["sequential_s"] / 2 * 8000 / 3600)
    assert "full protocol (600 images x 8000 iterations" in capsys.readouterr().out
