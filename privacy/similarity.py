"""Per-image reconstruction metrics: pixel (MSE, PSNR, SSIM), victim-feature and classifier ones.

Every function takes ``originals`` and ``reconstructions`` as float tensors of shape (N, C, H, W) with values in
[0, 1], paired by position, and returns one value per pair: a float tensor of shape (N,) on the inputs' device.
Inputs are checked once, by :func:`check_image_pair` (same shape, floating dtype, finite, inside [0, 1]); a
reconstruction of another size than its original is refused, not resized.

Direction of each metric (``HIGHER_IS_MORE_SIMILAR`` holds it for tables and plots):

========================  ===================================================  ===============================
name                      definition                                           more similar when
========================  ===================================================  ===============================
``mse``                   mean of (x - y)² over C, H, W (inputs on [0, 1])     lower (0 = identical)
``psnr``                  10·log10(data_range² / mse), in dB                   higher (inf = identical)
``ssim``                  Wang et al. 2004, Gaussian window 11, σ 1.5          higher (1 = identical)
``feature_mse``           mean squared difference of victim features           lower
``agreement``             victim predicts the same class for both              higher (1 / 0)
``acc``                   victim predicts the true label on the reconstruction higher (1 / 0; NaN if the
                          (SemSim's "acc": only for originals it gets right)   original is misclassified)
``stlpips``               ST-LPIPS, Ghildyal & Liu 2022 (``privacy.perceptual``) lower (0 = identical)
``lpips``                 LPIPS, Zhang et al. 2018 (``privacy.perceptual``)    lower (0 = identical)
========================  ===================================================  ===============================

Differences from SemSim's scripts (``seeds.md`` §2.2 step 3a), deliberate: PSNR and SSIM are computed on the float
images with an explicit ``data_range`` (SemSim: skimage on uint8 with range 255, so its values include the 8-bit
rounding of the saved PNGs); LPIPS gets inputs mapped to [-1, 1] (SemSim passed [0, 1] unnormalised).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

if TYPE_CHECKING:
    from privacy.perceptual import LPIPS, STLPIPS

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5

HIGHER_IS_MORE_SIMILAR = {
    "mse": False,
    "psnr": True,
    "ssim": True,
    "feature_mse": False,
    "agreement": True,
    "acc": True,
    "stlpips": False,
    "lpips": False,
}
KNOWN_METRICS = tuple(HIGHER_IS_MORE_SIMILAR)


def check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    """A floating (N, C, H, W) tensor, finite, inside [0, 1]; returned as float32 (float64 kept).

    Raises:
        ValueError: naming ``what`` and what was found (dtype, shape, the first bad value and its position).
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor of shape (N, C, H, W); found {type(images).__name__}")
    if not images.is_floating_point():
        hint = " (8-bit images: convert with x.float() / 255)" if images.dtype == torch.uint8 else ""
        raise ValueError(f"{what}: expected a floating-point tensor with values in [0, 1]; found {images.dtype}{hint}")
    if images.ndim != 4 or images.numel() == 0:
        raise ValueError(f"{what}: expected a non-empty (N, C, H, W) tensor; found shape {tuple(images.shape)}")
    if images.dtype != torch.float64:
        images = images.float()
    bad = ~torch.isfinite(images)
    if bad.any():
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{what}: {int(bad.sum())} values are NaN or infinite; the first is {images[first].item()} at "
            f"image {first[0]}, channel {first[1]}, row {first[2]}, column {first[3]}"
        )
    outside = (images < 0) | (images > 1)
    if outside.any():
        first = tuple(int(i) for i in torch.nonzero(outside)[0])
        raise ValueError(
            f"{what}: expected values in [0, 1]; found range [{images.min().item():.4g}, {images.max().item():.4g}] "
            f"({int(outside.sum())} values outside; the first at image {first[0]}, channel {first[1]}, "
            f"row {first[2]}, column {first[3]}); map [-1, 1] outputs with (x + 1) / 2"
        )
    return images


def check_image_pair(originals: torch.Tensor, reconstructions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both checked by :func:`check_images`, of one shape, on one device, and of one dtype (the wider one)."""
    if isinstance(originals, torch.Tensor) and isinstance(reconstructions, torch.Tensor):
        if originals.shape != reconstructions.shape:
            raise ValueError(
                "originals and reconstructions must have the same shape (N, C, H, W), one reconstruction per "
                f"original at the original's size; found originals {tuple(originals.shape)} and reconstructions "
                f"{tuple(reconstructions.shape)}"
            )
        if originals.device != reconstructions.device:
            raise ValueError(
                f"originals are on {originals.device} and reconstructions on {reconstructions.device}; "
                "move both to one device"
            )
    a = check_images(originals, "originals")
    b = check_images(reconstructions, "reconstructions")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def mse(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image over C, H, W, on [0, 1] values. Shape (N,); lower = more similar."""
    a, b = check_image_pair(originals, reconstructions)
    return (a - b).pow(2).mean(dim=(1, 2, 3))


def psnr(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    data_range: float = 1.0,
    max_db: float | None = None,
) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10·log10(data_range² / MSE), in dB. Shape (N,); higher = more similar.

    Identical images have MSE 0 and PSNR ``inf``, returned as such (as scikit-image does), because a cap would
    make a perfect reconstruction look like an imperfect one; pass ``max_db`` (e.g. 100) to clip for means.
    ``data_range`` is the span of the pixel values (1.0 for [0, 1] images); it is never guessed from the data.
    """
    a, b = check_image_pair(originals, reconstructions)
    if data_range <= 0:
        raise ValueError(f"psnr: data_range must be positive; got {data_range}")
    with torch.no_grad():
        out = peak_signal_noise_ratio(b, a, data_range=data_range, reduction="none", dim=(1, 2, 3))
    out = out.reshape(len(a))
    return out.clamp(max=max_db) if max_db is not None else out


def ssim(originals: torch.Tensor, reconstructions: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, mean over channels and the valid window positions.

    Shape (N,); higher = more similar (1 = identical). Gaussian window of 11 px with σ = 1.5, K1 = 0.01,
    K2 = 0.03, population (not sample) covariances: the paper's definition, torchmetrics' default, and equal to
    scikit-image's ``structural_similarity(..., channel_axis=-1, data_range=data_range, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`` (tested). The map comes from torchmetrics; its border of 5 px, where
    the window leaves the image, is left out of the mean as in Wang et al.'s reference code and scikit-image
    (torchmetrics' own mean keeps it, differing by ~1e-3 at 32 px). Images need at least 11 px per side.
    """
    a, b = check_image_pair(originals, reconstructions)
    if data_range <= 0:
        raise ValueError(f"ssim: data_range must be positive; got {data_range}")
    if min(a.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"ssim: images need at least {SSIM_KERNEL_SIZE} px per side (the Gaussian window); found "
            f"{tuple(a.shape[-2:])}"
        )
    with torch.no_grad():
        _, ssim_map = structural_similarity_index_measure(
            b,
            a,
            gaussian_kernel=True,
            sigma=SSIM_SIGMA,
            kernel_size=SSIM_KERNEL_SIZE,
            reduction="none",
            data_range=data_range,
            return_full_image=True,
        )
    # torchmetrics' own mean (1.9) includes the reflect-padded border, where the window reaches outside the image;
    # Wang et al.'s reference ('valid' filtering) and scikit-image leave it out, and so do we.
    pad = (SSIM_KERNEL_SIZE - 1) // 2
    return ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))


def _module_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else fallback


def _eval_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` in eval mode (BatchNorm uses running statistics, so images do not influence each other)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = images.to(_module_device(model, images.device))
            param = next(iter(model.parameters()), None)
            if param is not None and param.is_floating_point():
                x = x.to(param.dtype)
            return model(x)
    finally:
        model.train(was_training)


def victim_features(model: nn.Module, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Features of ``images`` inside a classifier, flattened to (N, D).

    Args:
        model: any ``nn.Module`` that maps (N, C, H, W) images to logits (a plain network or a LightningModule
            wrapping one); run in eval mode under ``no_grad`` and left in the mode it was in.
        images: (N, C, H, W) in the range the model expects.
        layer: name of a submodule (as in ``model.named_modules()``, e.g. ``"layer3"`` or ``"net.layer3"``) whose
            output is taken; ``None``: the penultimate layer, i.e. the input of the last ``nn.Linear`` that runs
            in the forward pass (the pooled 64w-d vector of a CIFAR ResNet, the flattened map of ConvNet).
    """
    captured: list[torch.Tensor] = []
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules or layer == "":
            names = [n for n in modules if n]
            shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
            raise ValueError(f"feature layer {layer!r} is not a submodule of {type(model).__name__}; names: {shown}")
        hooks = [modules[layer].register_forward_hook(lambda _m, _i, out: captured.append(out))]
    else:
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        hooks = [m.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0])) for m in linears]
    try:
        _eval_forward(model, images)
    finally:
        for hook in hooks:
            hook.remove()
    if not captured:
        where = f"layer {layer!r}" if layer is not None else "no nn.Linear head"
        raise ValueError(f"{type(model).__name__}: {where} ran in the forward pass; name the feature layer explicitly")
    feats = captured[-1]
    if not isinstance(feats, torch.Tensor) or feats.shape[0] != len(images):
        raise ValueError(f"feature layer {layer!r} did not return one tensor row per image")
    return feats.flatten(1).to(images.device)


def feature_mse(
    model: nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor, layer: str | None = None
) -> torch.Tensor:
    """Mean squared difference of the victim's features (:func:`victim_features`) per image.

    Shape (N,); lower = more similar; units are those of the features (not comparable across models or layers).
    """
    a, b = check_image_pair(originals, reconstructions)
    fa, fb = victim_features(model, a, layer), victim_features(model, b, layer)
    return (fa.float() - fb.float()).pow(2).mean(dim=1)


def classifier_agreement(model: nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """1.0 where the victim predicts the same class (argmax of its logits) for the reconstruction as for the original,
    else 0.0. Shape (N,); higher = more similar; the mean is the agreement rate."""
    a, b = check_image_pair(originals, reconstructions)
    same = _eval_forward(model, a).argmax(1) == _eval_forward(model, b).argmax(1)
    return same.to(a.dtype).to(a.device)


def classifier_accuracy(
    model: nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """SemSim's classifier "acc": 1.0 where the victim names the true label on the reconstruction, 0.0 where not,
    and NaN where it misclassifies the original itself (those pairs are left out, as in SemSim's script).

    Shape (N,); higher = more similar; ``nanmean`` of the result is SemSim's figure.
    """
    a, b = check_image_pair(originals, reconstructions)
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (len(a),):
        raise ValueError(f"labels: expected {len(a)} integer class labels; found {labels.dtype} {tuple(labels.shape)}")
    logits_a = _eval_forward(model, a)
    labels = labels.to(logits_a.device)
    if labels.min() < 0 or labels.max() >= logits_a.shape[1]:
        raise ValueError(f"labels: values must lie in [0, {logits_a.shape[1] - 1}] for a {logits_a.shape[1]}-way model")
    correct_ori = logits_a.argmax(1) == labels
    correct_rec = _eval_forward(model, b).argmax(1) == labels
    out = correct_rec.to(a.dtype)
    out[~correct_ori] = float("nan")
    return out.to(a.device)


def _batches(n: int, size: int) -> Iterable[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def compute_metrics(
    names: Sequence[str],
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    victim: nn.Module | None = None,
    labels: torch.Tensor | None = None,
    data_range: float = 1.0,
    psnr_max_db: float | None = None,
    feature_layer: str | None = None,
    stlpips: STLPIPS | None = None,
    lpips: LPIPS | None = None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Compute the requested metrics, ``{name: (N,) tensor}`` in the order asked, batch by batch.

    Args:
        names: from ``KNOWN_METRICS`` (see the module docstring for each definition and direction).
        originals: (N, C, H, W) in [0, 1].
        reconstructions: (N, C, H, W) in [0, 1], paired with ``originals`` by position.
        victim: the classifier, needed by ``feature_mse``, ``agreement`` and ``acc``.
        labels: (N,) true classes, needed by ``acc``.
        data_range: pixel span for PSNR and SSIM.
        psnr_max_db: optional cap on PSNR (identical pairs give ``inf`` otherwise).
        feature_layer: submodule of ``victim`` for ``feature_mse`` (None: its penultimate layer).
        stlpips: a loaded :class:`privacy.perceptual.STLPIPS` (None: the AlexNet variant is loaded here).
        lpips: a loaded :class:`privacy.perceptual.LPIPS`; required for ``lpips`` (it needs a local backbone file).
        batch_size: pairs per forward pass of the networks.
    """
    names = list(names)
    unknown = [n for n in names if n not in HIGHER_IS_MORE_SIMILAR]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known metrics: {', '.join(KNOWN_METRICS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"metric names repeated in {names}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    a, b = check_image_pair(originals, reconstructions)
    needs_victim = [n for n in names if n in ("feature_mse", "agreement", "acc")]
    if needs_victim and victim is None:
        raise ValueError(f"metrics {needs_victim} are computed through the victim classifier; pass victim=")
    if "acc" in names and (labels is None or len(labels) != len(a)):
        found = "none" if labels is None else f"{len(labels)}"
        raise ValueError(f"metric 'acc' needs the originals' {len(a)} true labels (labels=); found {found}")
    if "lpips" in names and lpips is None:
        raise ValueError(
            "metric 'lpips' needs an ImageNet backbone file that no package ships; build "
            "privacy.perceptual.LPIPS(backbone_file=...) and pass it as lpips= (or use 'stlpips', which runs offline)"
        )
    if "stlpips" in names and stlpips is None:
        from privacy.perceptual import STLPIPS

        stlpips = STLPIPS("alex")
    fns: dict[str, Callable[[slice], torch.Tensor]] = {
        "mse": lambda s: mse(a[s], b[s]),
        "psnr": lambda s: psnr(a[s], b[s], data_range=data_range, max_db=psnr_max_db),
        "ssim": lambda s: ssim(a[s], b[s], data_range=data_range),
        "feature_mse": lambda s: feature_mse(victim, a[s], b[s], layer=feature_layer),
        "agreement": lambda s: classifier_agreement(victim, a[s], b[s]),
        "acc": lambda s: classifier_accuracy(victim, a[s], b[s], torch.as_tensor(labels)[s]),
        "stlpips": lambda s: stlpips(a[s], b[s]),
        "lpips": lambda s: lpips(a[s], b[s]),
    }
    return {name: torch.cat([fns[name](s).to(a.device) for s in _batches(len(a), batch_size)]) for name in names}
