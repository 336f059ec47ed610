"""Reconstruction metrics: equal to scikit-image, ST-LPIPS / LPIPS offline, victim-based metrics, bad inputs."""

from __future__ import annotations

import math
import socket
import sys

import pytest
import torch
import torchvision
from torch import nn

from privacy import perceptual
from privacy.perceptual import LPIPS, STLPIPS, sha256_of
from privacy.similarity import (
    KNOWN_METRICS,
    classifier_accuracy,
    classifier_agreement,
    compute_metrics,
    feature_mse,
    mse,
    psnr,
    ssim,
    victim_features,
)


def _pairs(n: int = 4, h: int = 32, w: int = 32, noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, h, w, generator=g)
    return a, (a + noise * torch.randn(a.shape, generator=g)).clamp(0, 1)


def _smooth_images(n: int = 2, side: int = 32) -> torch.Tensor:
    """Photo-like smooth images (gradients, a disc, stripes), unlike uniform noise."""
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    out = []
    for k in range(n):
        disc = (((x - 0.3 - 0.2 * k) ** 2 + (y - 0.5) ** 2) < 0.05).float()
        stripes = 0.5 + 0.5 * torch.sin((6 + 3 * k) * math.pi * x)
        out.append(torch.stack([0.8 * disc + 0.2 * y, stripes * 0.7, 0.3 + 0.6 * x * y]))
    return torch.stack(out).clamp(0, 1)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------- pixel metrics = scikit-image


@pytest.mark.parametrize(("h", "w", "data_range"), [(32, 32, 1.0), (28, 40, 1.0), (32, 32, 2.0)])
def test_mse_psnr_ssim_equal_scikit_image(h: int, w: int, data_range: float) -> None:
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (dev dependency) is not installed")
    a, b = _pairs(4, h, w)
    got_mse, got_psnr, got_ssim = mse(a, b), psnr(a, b, data_range), ssim(a, b, data_range)
    assert got_mse.shape == got_psnr.shape == got_ssim.shape == (4,)
    for i in range(4):
        x, y = (t[i].permute(1, 2, 0).double().numpy() for t in (a, b))
        want_ssim = metrics.structural_similarity(
            x, y, channel_axis=-1, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert got_mse[i].item() == pytest.approx(metrics.mean_squared_error(x, y), abs=1e-7)
        assert got_psnr[i].item() == pytest.approx(
            metrics.peak_signal_noise_ratio(x, y, data_range=data_range), abs=1e-4
        )
        assert got_ssim[i].item() == pytest.approx(want_ssim, abs=1e-4)


def test_identical_images_psnr_inf_or_capped_ssim_one() -> None:
    a, b = _pairs(3)
    assert torch.isinf(psnr(a, a)).all() and (psnr(a, a) > 0).all()
    assert torch.equal(psnr(a, a, max_db=100.0), torch.full((3,), 100.0))
    assert torch.equal(psnr(a, b, max_db=100.0), psnr(a, b))  # the cap touches only values above it
    assert torch.allclose(ssim(a, a), torch.ones(3)) and torch.equal(mse(a, a), torch.zeros(3))
    assert (ssim(a, b) < 1).all() and (psnr(a, b) < 40).all()


# ---------------------------------------------------------------- ST-LPIPS and LPIPS


@pytest.fixture(scope="module")
def stlpips_alex() -> STLPIPS:
    return STLPIPS("alex")


def test_stlpips_offline_zero_for_identical_and_monotone_on_a_noise_ladder(no_network, stlpips_alex) -> None:
    fresh = STLPIPS("alex")  # built under no_network: the weights come from the wheel
    assert not any(p.requires_grad for p in fresh.parameters()) and not fresh.train().training
    images = _smooth_images(2)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    ladder = torch.stack([fresh(images, (images + s * noise).clamp(0, 1)) for s in (0.0, 0.05, 0.1, 0.2, 0.4)])
    assert torch.equal(ladder[0], torch.zeros(2))
    assert (ladder[1:] > ladder[:-1]).all(), ladder  # more noise → larger distance, for each image
    assert torch.allclose(stlpips_alex(images, images[[1, 0]]), fresh(images, images[[1, 0]]))
    gray = images[:, :1]
    assert torch.equal(fresh(gray, gray), torch.zeros(2))  # one channel repeated to three


def test_stlpips_import_leaves_no_stub_modules_behind(stlpips_alex) -> None:
    for name in ("IPython", "torchsummary"):
        module = sys.modules.get(name)
        assert module is None or "synthpriv" not in (module.__doc__ or "")
    with perceptual._stub_missing_modules({"synthpriv_absent_module": "f", "json": "dumps"}):
        assert "synthpriv_absent_module" in sys.modules
        real_json = sys.modules["json"]
    assert "synthpriv_absent_module" not in sys.modules and sys.modules["json"] is real_json
    assert hasattr(real_json, "loads")  # a real module is never replaced


def test_stlpips_too_small_images_say_resize(stlpips_alex) -> None:
    a, b = _pairs(2, 12, 12)
    with pytest.raises(ValueError, match=r"too small.*resize=64"):
        stlpips_alex(a, b)
    assert STLPIPS("alex", resize=32)(a, b).shape == (2,)


@pytest.fixture(scope="module")
def fake_alexnet_file(tmp_path_factory: pytest.TempPathFactory):
    """A random AlexNet under torchvision's file name (the head as zero views: a 10 MB file, not 233 MB)."""
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    state = {k: torch.zeros(1).expand(v.shape) if k.startswith("classifier.") else v for k, v in state.items()}
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    return path, sha256_of(path)


def test_lpips_loads_a_local_backbone_file_offline(no_network, fake_alexnet_file) -> None:
    path, digest = fake_alexnet_file
    hub_before = (torch.hub.get_dir(), getattr(torch.hub, "_hub_dir", None))
    metric = LPIPS(path, expected_sha256_prefix=digest[:8])  # the hash override exists for this stand-in only
    assert (torch.hub.get_dir(), getattr(torch.hub, "_hub_dir", None)) == hub_before
    conv1 = metric.metric.net.net.slice1[0].weight
    assert torch.equal(conv1, torch.load(path, weights_only=True)["features.0.weight"])
    a, b = _pairs(3)
    assert torch.equal(metric(a, a), torch.zeros(3))
    assert (metric(a, b) > 0).all() and metric(a[:1], b[:1]).shape == (1,)


def test_lpips_backbone_file_errors(fake_alexnet_file, tmp_path) -> None:
    path, digest = fake_alexnet_file
    with pytest.raises(ValueError, match=f"{path.name}.*expected a sha256 starting with 7be5be79.*found {digest}"):
        LPIPS(path)  # the stand-in is not torchvision's file
    missing = tmp_path / "alexnet-owt-7be5be79.pth"
    with pytest.raises(FileNotFoundError) as err:
        LPIPS(missing)
    text = str(err.value)
    assert str(missing) in text and "download.pytorch.org/models/alexnet-owt-7be5be79.pth" in text
    assert "backbone_file" in text and "No pip package ships" in text


# ---------------------------------------------------------------- victim-based metrics


class _ChannelVictim(nn.Module):
    """Logits = per-channel means (identity head): predicts the brightest channel; BatchNorm checks eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(4, 3)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.hidden(self.body(x).flatten(1))
        return self.head(self.pool(x).flatten(1) + 0.0 * extra)


def _coloured(channels: list[int]) -> torch.Tensor:
    images = torch.full((len(channels), 3, 16, 16), 0.1)
    for i, c in enumerate(channels):
        images[i, c] = 0.9
    return images


def test_agreement_and_semsim_acc_on_a_tiny_victim() -> None:
    victim = _ChannelVictim().train()
    originals, recs = _coloured([0, 0, 1, 2]), _coloured([0, 1, 1, 0])
    assert torch.equal(classifier_agreement(victim, originals, recs), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    labels = torch.tensor([0, 0, 1, 1])  # the last original is misclassified (predicted 2): left out
    acc = classifier_accuracy(victim, originals, recs, labels)
    assert torch.equal(acc[:3], torch.tensor([1.0, 0.0, 1.0])) and torch.isnan(acc[3])
    assert victim.training  # the mode is restored
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 2\]"):
        classifier_accuracy(victim, originals, recs, torch.tensor([0, 0, 1, 3]))


def test_feature_mse_penultimate_and_named_layer() -> None:
    torch.manual_seed(0)
    victim = _ChannelVictim()
    a, b = _pairs(4, 16, 16, noise=0.2)
    feats = victim_features(victim, a)
    assert torch.allclose(feats, a.mean(dim=(2, 3)))  # penultimate: the input of the last Linear that runs
    assert torch.allclose(feature_mse(victim, a, b), (a.mean(dim=(2, 3)) - b.mean(dim=(2, 3))).pow(2).mean(1))
    per_image = torch.cat([feature_mse(victim, a[i : i + 1], b[i : i + 1], layer="body") for i in range(4)])
    assert torch.allclose(feature_mse(victim, a, b, layer="body"), per_image, atol=1e-6)  # eval-mode BatchNorm
    assert torch.equal(feature_mse(victim, a, a, layer="body"), torch.zeros(4))
    with pytest.raises(ValueError, match="'nope' is not a submodule of _ChannelVictim; names: body"):
        feature_mse(victim, a, b, layer="nope")


# ---------------------------------------------------------------- compute_metrics


def test_compute_metrics_all_offline_metrics_in_batches(stlpips_alex) -> None:
    victim = _ChannelVictim()
    a, b = _pairs(5, 32, 32)
    names = ["mse", "psnr", "ssim", "feature_mse", "agreement", "acc", "stlpips"]
    labels = torch.zeros(5, dtype=torch.long)
    whole = compute_metrics(names, a, b, victim=victim, labels=labels, stlpips=stlpips_alex)
    batched = compute_metrics(names, a, b, victim=victim, labels=labels, stlpips=stlpips_alex, batch_size=2)
    assert list(whole) == names and all(v.shape == (5,) for v in whole.values())
    for name in names:
        assert torch.allclose(whole[name], batched[name], atol=1e-6, equal_nan=True), name
    assert torch.equal(whole["psnr"], psnr(a, b)) and torch.equal(whole["ssim"], ssim(a, b))


def test_compute_metrics_refusals() -> None:
    a, b = _pairs(2)
    with pytest.raises(
        ValueError, match=r"unknown metric\(s\) \['semsim'\]; known metrics: " + ", ".join(KNOWN_METRICS)
    ):
        compute_metrics(["mse", "semsim"], a, b)
    with pytest.raises(ValueError, match=r"\['agreement'\] are computed through the victim classifier"):
        compute_metrics(["agreement"], a, b)
    with pytest.raises(ValueError, match="'acc' needs the originals' 2 true labels"):
        compute_metrics(["acc"], a, b, victim=_ChannelVictim())
    with pytest.raises(ValueError, match="'lpips' needs an ImageNet backbone file that no package ships"):
        compute_metrics(["lpips"], a, b)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_are_clear_errors() -> None:
    a, b = _pairs(2)
    with pytest.raises(
        ValueError, match=r"same shape.*originals \(2, 3, 32, 32\) and reconstructions \(2, 3, 28, 28\)"
    ):
        mse(a, b[..., :28, :28])
    nan = b.clone()
    nan[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"reconstructions: 1 values are NaN or infinite.*image 1, channel 2, row 3"):
        psnr(a, nan)
    with pytest.raises(ValueError, match=r"originals: expected values in \[0, 1\]; found range \[-0.99"):
        ssim(a * 2 - 1, b)
    with pytest.raises(ValueError, match=r"expected a floating-point tensor.*uint8.*x.float\(\) / 255"):
        mse((a * 255).to(torch.uint8), b)
    with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\) tensor; found shape \(3, 32, 32\)"):
        mse(a[0], b[0])
    with pytest.raises(ValueError, match=r"at least 11 px per side"):
        ssim(a[..., :8, :8], b[..., :8, :8])
    with pytest.raises(ValueError, match="data_range must be positive"):
        psnr(a, b, data_range=0)
