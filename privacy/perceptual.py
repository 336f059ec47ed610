"""Learned perceptual distances between originals and reconstructions: ST-LPIPS (offline) and LPIPS (local backbone).

Both take (N, C, H, W) float tensors in [0, 1] (checked by ``privacy.similarity.check_image_pair``; one channel is
repeated to three), map them to [-1, 1] as the networks were trained (SemSim fed [0, 1] unnormalised; not copied),
run in eval mode without gradients and return (N,) distances: **lower = more similar**, 0 for identical images.

- :class:`STLPIPS` — shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022), from the ``stlpips-pytorch`` package. Its
  wheel ships the whole trained networks (AlexNet / VGG16 trunks with blur-pool and the linear heads, trained from
  scratch on BAPPS human 2AFC judgements), so it runs offline. Values are not comparable to published LPIPS ones.
- :class:`LPIPS` — LPIPS v0.1 (Zhang et al., CVPR 2018) through torchmetrics'
  ``LearnedPerceptualImagePatchSimilarity``. torchmetrics ships the linear heads, but the ImageNet backbone is
  torchvision's weight file (``alexnet-owt-7be5be79.pth`` for ``alex``), which no package ships: the user supplies
  it, its sha256 is checked against the prefix in torchvision's file name, and it is loaded without network.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from privacy.similarity import check_image_pair

# The two modules stlpips-pytorch 0.0.2 imports without declaring them (debugging leftovers, never called).
_STLPIPS_UNDECLARED = {"IPython": "embed", "torchsummary": "summary"}
_TV_BACKBONES = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}
_HUB_LOCK = threading.Lock()


def _not_installed(module: str, attr: str):
    def stub(*_args, **_kwargs):
        raise RuntimeError(f"{module}.{attr} was called by stlpips-pytorch, but {module} is not installed")

    return stub


@contextlib.contextmanager
def _stub_missing_modules(wanted: dict[str, str]) -> Iterator[None]:
    """Put stand-in modules into ``sys.modules`` for the names that are not installed, only while the block runs."""
    inserted: dict[str, types.ModuleType] = {}
    for name, attr in wanted.items():
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue  # the real module is there: leave it alone
        stub = types.ModuleType(name, f"stand-in inserted by synthpriv while importing stlpips-pytorch; {name} absent")
        setattr(stub, attr, _not_installed(name, attr))
        sys.modules[name] = inserted[name] = stub
    try:
        yield
    finally:
        for name, stub in inserted.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


def import_stlpips() -> types.ModuleType:
    """``stlpips_pytorch.stlpips``, imported with its undeclared imports (IPython, torchsummary) stubbed if absent."""
    if importlib.util.find_spec("stlpips_pytorch") is None:
        raise ModuleNotFoundError(
            "ST-LPIPS needs the package stlpips-pytorch (a synthpriv dependency): `make venv`, or "
            "`pip install stlpips-pytorch==0.0.2`"
        )
    with _stub_missing_modules(_STLPIPS_UNDECLARED):
        return importlib.import_module("stlpips_pytorch.stlpips")


class _PerceptualDistance(nn.Module):
    """Shared input handling: check, 1 → 3 channels, optional square resize, move to the network's device."""

    def __init__(self, resize: int | None) -> None:
        super().__init__()
        if resize is not None and resize < 16:
            raise ValueError(f"resize must be at least 16 px (or None); got {resize}")
        self.resize = resize

    def train(self, mode: bool = True) -> _PerceptualDistance:
        """Stay in eval mode (dropout off) whatever is asked."""
        return super().train(False)

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The subclass's network distance of prepared (N, 3, H, W) batches."""
        raise NotImplementedError(f"{type(self).__name__} must define _distance (the network's distance)")

    def forward(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Distances (N,) for pairs of (N, C, H, W) images in [0, 1]; lower = more similar."""
        a, b = check_image_pair(originals, reconstructions)
        if a.shape[1] not in (1, 3):
            raise ValueError(f"{type(self).__name__}: expected 1 or 3 channels; found {a.shape[1]} ({tuple(a.shape)})")
        device = next(self.parameters()).device
        x, y = (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t for t in (a, b))
        x, y = x.to(device, torch.float32), y.to(device, torch.float32)
        if self.resize is not None:
            size = (self.resize, self.resize)
            x, y = (F.interpolate(t, size=size, mode="bilinear", antialias=True).clamp(0, 1) for t in (x, y))
        try:
            with torch.no_grad():
                out = self._distance(x, y)
        except RuntimeError as err:
            if "size" not in str(err).lower():
                raise
            raise ValueError(
                f"{type(self).__name__}: images of {tuple(x.shape[-2:])} px are too small for the network; "
                f"pass resize=64 (or larger). ({err})"
            ) from err
        return out.reshape(len(a)).to(a.device, a.dtype)


class STLPIPS(_PerceptualDistance):
    """Shift-tolerant LPIPS distance (Ghildyal & Liu 2022), weights from the stlpips-pytorch wheel; lower = closer.

    Args:
        net: ``"alex"`` (2.5 M parameters, fast) or ``"vgg"`` (14.7 M).
        resize: resize both images to ``resize`` × ``resize`` first (None: native size; 32 px works).
    """

    def __init__(self, net: Literal["alex", "vgg"] = "alex", resize: int | None = None) -> None:
        super().__init__(resize)
        if net not in ("alex", "vgg"):
            raise ValueError(f"ST-LPIPS net must be 'alex' or 'vgg' (the wheel ships those two); got {net!r}")
        stl = import_stlpips()
        weights = Path(stl.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
        if not weights.is_file():
            raise FileNotFoundError(f"ST-LPIPS weights {weights} are missing: reinstall stlpips-pytorch==0.0.2")
        self.net = stl.LPIPS(pretrained=False, net=net, variant="shift_tolerant", verbose=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        # The package loads with strict=False, which would hide a mismatch; everything but the fixed input
        # scaling constants must come from the file.
        result = self.net.load_state_dict(state, strict=False)
        # ``lins.K`` are aliases of ``linK`` (the same modules registered twice); only ``linK`` is in the file.
        aliased = {re.sub(r"^lins\.(\d+)\.", r"lin\1.", k) for k in result.missing_keys}
        missing = [k for k in aliased if not k.startswith("scaling_layer.") and k not in state]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"ST-LPIPS weights {weights} do not fit the network: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        self.net_name = net
        self.net.requires_grad_(False)
        self.eval()

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1, 2 * y - 1, normalize=False)


def backbone_file_info(net: str) -> tuple[str, str, str]:
    """(file name, download URL, sha256 prefix) of the torchvision ImageNet weights LPIPS-``net`` uses."""
    if net not in _TV_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {sorted(_TV_BACKBONES)}; got {net!r}")
    import torchvision.models

    weights = getattr(torchvision.models, _TV_BACKBONES[net][1]).DEFAULT
    name = weights.url.rsplit("/", 1)[-1]
    match = re.search(r"-([a-f0-9]+)\.", name)  # torch.hub's rule: the hex after the last dash is a sha256 prefix
    if match is None:
        raise RuntimeError(f"torchvision's file name {name} carries no hash prefix")
    return name, weights.url, match.group(1)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_backbone_file(
    backbone_file: str | os.PathLike | None, net: str = "alex", expected_sha256_prefix: str | None = None
) -> Path:
    """The backbone file, after checking it exists and that its sha256 starts with the expected prefix.

    ``expected_sha256_prefix`` defaults to torchvision's (``7be5be79`` for AlexNet); override it only for a file you
    trust by other means (the tests use it for a random stand-in backbone).
    """
    name, url, known = backbone_file_info(net)
    expected = (expected_sha256_prefix or known).lower()
    if backbone_file is None or not Path(backbone_file).is_file():
        raise FileNotFoundError(
            f"LPIPS-{net} backbone file {backbone_file!s} not found. LPIPS needs torchvision's ImageNet weights "
            f"{name} (sha256 {known}…): get it on a machine with network access from {url} (or copy it from a "
            f"torch hub cache, ~/.cache/torch/hub/checkpoints/{name}), put it e.g. at weights/{name}, and pass that "
            "path as backbone_file. No pip package ships these weights (lpips and torchmetrics ship only the "
            "linear heads); the 'stlpips' metric runs without them."
        )
    path = Path(backbone_file)
    found = sha256_of(path)
    if not found.startswith(expected):
        raise ValueError(
            f"LPIPS-{net} backbone file {path}: expected a sha256 starting with {expected} ({name}); found {found}. "
            "The file is another or a damaged download: get the original from " + url
        )
    return path


@contextlib.contextmanager
def _private_hub_dir(files: dict[str, Path]) -> Iterator[None]:
    """Point torch.hub at a fresh folder whose ``checkpoints/`` holds ``files`` (links), and restore it afterwards."""
    with _HUB_LOCK, tempfile.TemporaryDirectory(prefix="synthpriv-hub-") as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        checkpoints.mkdir()
        for name, source in files.items():
            try:
                os.symlink(source.resolve(), checkpoints / name)
            except OSError:
                shutil.copyfile(source, checkpoints / name)
        previous = getattr(torch.hub, "_hub_dir", None)  # None: the TORCH_HOME default, which must stay dynamic
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


class LPIPS(_PerceptualDistance):
    """LPIPS v0.1 distance (Zhang et al. 2018) via torchmetrics, with the ImageNet backbone from a local file.

    Args:
        backbone_file: torchvision's weight file for ``net`` (``alexnet-owt-7be5be79.pth`` for ``"alex"``); any
            name or place, its sha256 is checked (:func:`check_backbone_file`).
        net: ``"alex"`` (LPIPS' recommended forward metric), ``"vgg"`` or ``"squeeze"``.
        resize: resize both images to ``resize`` × ``resize`` first (None: native size; AlexNet needs ≥ 31 px).
        expected_sha256_prefix: override of torchvision's hash prefix, for a file checked by other means.
    """

    def __init__(
        self,
        backbone_file: str | os.PathLike,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        resize: int | None = None,
        expected_sha256_prefix: str | None = None,
    ) -> None:
        super().__init__(resize)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        path = check_backbone_file(backbone_file, net, expected_sha256_prefix)
        name = backbone_file_info(net)[0]
        # torchmetrics builds torchvision's model with its DEFAULT weights, which torch.hub takes from
        # <hub dir>/checkpoints/<name> when present (no download, and no hash check: done above).
        try:
            with _private_hub_dir({name: path}):
                self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", normalize=True)
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"LPIPS-{net} backbone file {path} does not load as torchvision's {name}: {err}") from err
        self._verify_backbone(path)
        self.net_name = net
        self.eval()

    def _verify_backbone(self, path: Path) -> None:
        """Every backbone tensor in the metric equals the file's ``features.*`` tensor (catches a silent fallback)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        used = 0
        for key, value in self.metric.net.net.state_dict().items():
            match = re.fullmatch(r"slice\d+\.(.+)", key)
            source = state.get(f"features.{match.group(1)}") if match else None
            if source is None or not torch.equal(source.to(value.dtype), value.cpu()):
                raise RuntimeError(f"LPIPS backbone tensor {key} was not loaded from {path}")
            used += 1
        if used == 0:
            raise RuntimeError(f"LPIPS backbone: no tensor of {path} was found in the torchmetrics network")

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.metric.reset()
        self.metric.update(x, y)  # normalize=True: torchmetrics maps [0, 1] to [-1, 1]
        out = self.metric.compute()
        self.metric.reset()
        return out
