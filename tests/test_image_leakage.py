"""SpinML leakage metrics (privacy.image_leakage): MI against a direct numpy computation, SIM and nearest-real
against brute force, bad inputs, the embedding models (MobileNetV2 offline, a tiny CLIP) and the pairs PNG."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from privacy.embeddings import ImageEmbedder
from privacy.image_leakage import (
    binned_entropy,
    canny_guide,
    mutual_information,
    nearest_real,
    normalised_mutual_information,
    sim_score,
    spinml_canvas,
    spinml_mi_rows,
    wilson_interval,
)
from tools.leakage_plots import write_closest_pairs_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def direct_mi(x: np.ndarray, y: np.ndarray) -> float:
    """The original's computation written out: numpy histogram2d (256 bins, each axis on its own range), then a
    double loop over the cells of p_ij ln(p_ij / (p_i q_j))."""
    hist, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=256)
    joint = hist / hist.sum()
    p, q = joint.sum(axis=1), joint.sum(axis=0)
    total = 0.0
    for i in range(256):
        for j in np.flatnonzero(joint[i]):
            total += joint[i, j] * math.log(joint[i, j] / (p[i] * q[j]))
    return total


def fixed_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Six (12, 10, 3) uint8 pairs: related, constant guide, identical, narrow ranges, binary edges, independent."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (6, 12, 10, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (6, 12, 10, 3), dtype=np.uint8)
    b[0] = (a[0] // 2 + 60).astype(np.uint8)  # a deterministic function of a
    a[1] = 99  # constant guide: histogram2d's [v - 0.5, v + 0.5] range
    b[2] = a[2]
    a[3], b[3] = a[3] % 7 + 100, b[3] % 3  # narrow ranges: values fall on and between bin edges
    a[4] = np.where(a[4] > 200, 255, 0)  # a 0/255 Canny-like map
    return a, b


def test_mi_equals_a_direct_numpy_computation() -> None:
    a, b = fixed_pairs()
    expected = np.array([direct_mi(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(mutual_information(a, b), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(binned_entropy(a), [direct_mi(x, x) for x in a], rtol=1e-12, atol=1e-15)
    raw = np.roll(b, 1, axis=0)
    raw[1] = b[0]  # no constant raw image
    np.testing.assert_allclose(
        normalised_mutual_information(a, b, raw),
        expected / np.array([direct_mi(r, r) for r in raw]),
        rtol=1e-12,
        atol=1e-15,
    )


def test_mi_of_identical_images_is_one_and_of_a_constant_guide_zero() -> None:
    a, _ = fixed_pairs()
    varied = np.delete(a, 1, axis=0)
    np.testing.assert_allclose(normalised_mutual_information(varied, varied, varied), 1.0, rtol=1e-12)
    constant = np.full_like(a, 42)
    assert (mutual_information(constant, a) == 0.0).all()  # L0: nothing image-like released -> exactly 0


def test_mi_of_independent_images_is_the_plug_in_bias() -> None:
    # Independent uniform 8-bit 512 x 512 x 3 canvases (the original's size): the true MI is 0, the plug-in
    # estimate is biased up by (K - 1)^2 / (2 n) nats = 255^2 / (2 * 786432) = 0.0413 (Miller 1955). Tolerance:
    # 10 % of the bias: the next-order terms (~K^2 / n^2) and the sampling spread (sd ~ K / (n sqrt 2) ~ 2e-4
    # nats, 0.5 %) are far smaller. Normalised by H ~ ln 256, it is ~0.0075: below 0.01, not 0.
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (2, 2, 512, 512, 3), dtype=np.uint8)
    bias = 255**2 / (2 * 512 * 512 * 3)
    np.testing.assert_allclose(mutual_information(x, y), bias, rtol=0.1)
    nmi = normalised_mutual_information(x, y, x)
    assert (nmi > 0.005).all() and (nmi < 0.01).all()


def test_spinml_rows_name_what_they_compare() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    mask = rng.random((3, 16, 16, 1)) < 0.4
    fg, bg = np.where(mask, raw, 0).astype(np.uint8), np.where(mask, 0, raw).astype(np.uint8)
    edges = np.where(rng.random(fg.shape) < 0.1, 255, 0).astype(np.uint8)
    rows = spinml_mi_rows(raw, fg, bg, edges)
    h_raw = np.array([direct_mi(r, r) for r in raw])
    np.testing.assert_allclose(rows["L2/guide_vs_foreground"], [direct_mi(f, f) for f in fg] / h_raw, rtol=1e-12)
    np.testing.assert_allclose(rows["L2/guide_vs_background"], [direct_mi(f, g) for f, g in zip(fg, bg)] / h_raw)
    np.testing.assert_allclose(rows["L1/guide_vs_background"], [direct_mi(e, g) for e, g in zip(edges, bg)] / h_raw)
    assert set(spinml_mi_rows(raw, fg, bg)) == {"L2/guide_vs_foreground", "L2/guide_vs_background"}


def test_canvas_letterboxes_like_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    image = Image.fromarray(np.full((50, 100, 3), 200, np.uint8))  # 100 wide, 50 high
    canvas = spinml_canvas(image)
    assert canvas.shape == (512, 512, 3) and canvas.dtype == np.uint8
    assert (canvas[:128] == 0).all() and (canvas[384:] == 0).all() and (canvas[128:384] == 200).all()
    edges = canny_guide(canvas)  # the band's two long borders, nothing inside or outside it
    assert set(np.unique(edges)) == {0, 255} and (edges[..., 0] == edges[..., 2]).all()
    rows = np.flatnonzero(edges[:, 256, 0])
    assert len(rows) > 0 and all(abs(r - 128) <= 1 or abs(r - 383) <= 1 for r in rows)
    assert not edges[140:370, 20:490].any()
    monkeypatch.setitem(sys.modules, "cv2", None)  # as without OpenCV: a clear error, not a silent other Canny
    with pytest.raises(ImportError, match="opencv"):
        canny_guide(canvas)


def test_sim_equals_a_naive_double_loop() -> None:
    rng = np.random.default_rng(2)
    syn, real = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    naive = np.mean([[s @ r / np.linalg.norm(s) / np.linalg.norm(r) for r in real] for s in syn])
    out = sim_score(syn, real, resamples=200, seed=3)
    assert out["sim"] == pytest.approx(naive, rel=1e-12)
    assert out["per_synthetic"].mean() == pytest.approx(naive, rel=1e-12)
    low, high = out["sim_ci95"]
    assert low <= out["sim"] <= high and high - low > 0
    assert sim_score(syn, real, resamples=200, seed=3)["sim_ci95"] == out["sim_ci95"]  # seeded


def test_nearest_real_equals_brute_force_and_flags_a_near_copy() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(30, 16)).astype(np.float32)
    syn = rng.normal(size=(12, 16)).astype(np.float32)
    syn[5] = real[17] + 0.01 * rng.normal(size=16)  # a near-copy of real image 17
    out = nearest_real(syn, real, threshold=0.95)
    cos = (syn / np.linalg.norm(syn, axis=1, keepdims=True)) @ (real / np.linalg.norm(real, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(out["index"], cos.argmax(axis=1))
    np.testing.assert_allclose(out["cosine"], cos.max(axis=1), rtol=1e-5)
    assert out["near_copy"].tolist() == [i == 5 for i in range(12)] and out["index"][5] == 17
    assert out["share"] == pytest.approx(1 / 12)
    assert out["share_ci95"] == pytest.approx(wilson_interval(1, 12))
    # Wilson 95 % interval, textbook values: 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634].
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4) and wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0  # the exact ends, not 1 - 1e-17
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mutual_information(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8)), r"shape"),
        (lambda: mutual_information(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 3))), r"8-bit.*float64"),
        (lambda: mutual_information(np.full((1, 4), 300), np.zeros((1, 4), int)), r"\[0, 255\].*300"),
        (lambda: mutual_information(np.zeros(4, np.uint8), np.zeros(4, np.uint8)), r"found shape \(4,\)"),
        (lambda: mutual_information(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8)), r"non-empty"),
        (lambda: normalised_mutual_information(*[np.ones((1, 4), np.uint8)] * 3), r"raw image 0 is constant"),
        (lambda: sim_score(np.ones((2, 3)), np.ones((2, 4))), r"real embeddings.*\(\*, 3\).*\(2, 4\)"),
        (lambda: sim_score(np.array([[1.0, np.nan]]), np.ones((2, 2))), r"synthetic embeddings: 1 of 2.*NaN"),
        (lambda: sim_score(np.ones(3), np.ones((2, 3))), r"synthetic embeddings: expected a 2-d"),
        (lambda: sim_score(np.ones((0, 3)), np.ones((2, 3))), r"empty"),
        (lambda: nearest_real(np.ones((2, 3)), np.zeros((2, 3))), r"real embeddings: .*image 0 is all zeros"),
        (lambda: nearest_real(np.ones((2, 3)), np.ones((2, 3)), threshold=2.0), r"threshold"),
        (lambda: sim_score(np.ones((2, 3)), np.ones((2, 3)), resamples=10), r"resamples"),
    ],
)
def test_bad_inputs_are_refused_with_clear_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_default_embedder_is_the_offline_mobilenet_v2() -> None:
    embedder = ImageEmbedder(resolution=32, batch_size=2)
    assert embedder.dim == 1280 and embedder.spec == "mobilenet_v2"
    out = embedder.embed(torch.rand(3, 3, 40, 40))
    assert out.shape == (3, 1280) and out.dtype == np.float32 and np.isfinite(out).all()
    with pytest.raises(ValueError, match="inside \\[0, 1\\]"):
        embedder.embed(torch.full((1, 3, 8, 8), 2.0))


def test_clip_vision_tower_from_a_local_folder(tmp_path: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=8,
    )
    model = CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path / "clip")
    embedder = ImageEmbedder(f"clip:{tmp_path / 'clip'}", batch_size=2)
    images = torch.rand(3, 3, 32, 32)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model(pixel_values=(images - mean) / std).image_embeds.numpy()
    assert embedder.dim == 8
    np.testing.assert_allclose(embedder.embed(images), expected, rtol=1e-5, atol=1e-6)
    (tmp_path / "folder").mkdir()
    for i in range(3):
        pixels = (images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "folder" / f"{i}.png")
    names, embedded = embedder.embed_folder(tmp_path / "folder")
    assert names == ["0.png", "1.png", "2.png"] and embedded.shape == (3, 8)
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageEmbedder(f"clip:{missing}")


def test_blip2_vision_tower_gives_its_pooled_cls(tmp_path: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import Blip2VisionConfig, Blip2VisionModel

    torch.manual_seed(0)
    config = Blip2VisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    model = Blip2VisionModel(config).eval()
    model.save_pretrained(tmp_path / "blip2")
    embedder = ImageEmbedder(f"blip2:{tmp_path / 'blip2'}")
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model(pixel_values=(images - mean) / std).pooler_output.numpy()
    np.testing.assert_allclose(embedder.embed(images), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected a CLIP model"):
        ImageEmbedder(f"clip:{tmp_path / 'blip2'}")


def test_closest_pairs_png_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    real_px = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    syn_px = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    real_e, syn_e = rng.normal(size=(6, 8)), rng.normal(size=(5, 8))
    syn_e[2] = real_e[4]
    result = nearest_real(syn_e, real_e)
    shown = write_closest_pairs_png(result, syn_px, real_px, tmp_path / "pairs.png", k=3)
    assert shown[0][:2] == (2, 4) and len(shown) == 3
    with Image.open(tmp_path / "pairs.png") as png:
        assert png.format == "PNG" and png.size[0] > 100


def test_benchmark_runs_small() -> None:
    spec = importlib.util.spec_from_file_location("bench_spinml", ROOT / "benchmarks" / "spinml_metrics.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--small", "--pairs", "40", "--literal", "1"])
    assert out["mi_max_rel_diff"] < 1e-9 and out["sim_max_rel_diff"] < 1e-9
    assert out["mi_ratio"] > 0 and out["sim_ratio"] > 0
