"""The scorers `synthpriv metric-agreement` loads besides the image metrics: each entry's victim (found from its
inversion folder's manifest.json) and a SemSim checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.files import file_sha256


def victim_sha(folder: Path) -> str | None:
    manifest = folder / "manifest.json"
    return json.loads(manifest.read_text()).get("victim_checkpoint_sha256") if manifest.is_file() else None


def victim_of(folder: Path, label: str) -> Any:
    """The victim an inversion folder attacked, taking [0, 1] images (its normalisation first), from the folder's
    manifest.json; the checkpoint must still hash as it did at the attack."""
    import torch

    from lightning_modules.inversion import NormalisedVictim, load_victim

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"entry {label!r}: {manifest} is missing; metrics through the victim (feature_mse, agreement) "
            "need the inversion's manifest to find the victim"
        )
    record = json.loads(manifest.read_text())
    path = Path(record.get("victim_checkpoint_path", ""))
    if not path.is_file():
        raise FileNotFoundError(f"entry {label!r}: the victim checkpoint {path} named in {manifest} does not exist")
    if file_sha256(path) != record.get("victim_checkpoint_sha256"):
        raise ValueError(f"entry {label!r}: {path} changed since the attack recorded in {manifest} (sha256 differs)")
    net, _, _ = load_victim(str(path))
    data = record.get("data") or {}
    mean, std = (torch.tensor(data[k], dtype=torch.float32).view(1, -1, 1, 1) for k in ("mean", "std"))
    return NormalisedVictim(net, mean, std).eval()


def semsim_scorer(checkpoint: Path) -> Any:
    """``score(originals, reconstructions, distance)`` in [0, 1] -> SemSim distances, with the checkpoint's data
    preprocessing (bicubic resize to its image_size, CIFAR-100 normalisation)."""
    import torch
    from torchvision.transforms import v2

    from datamodules.human_annotations import CIFAR100_MEAN, CIFAR100_STD
    from lightning_modules.semsim import SemSimNet

    model = SemSimNet.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True).get("datamodule_hyper_parameters") or {}
    size = int(stored.get("image_size", 32))
    prep = v2.Compose(
        [
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.Normalize(list(CIFAR100_MEAN), list(CIFAR100_STD)),
        ]
    )

    def score(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
        with torch.no_grad():
            return model.distance(prep(a), prep(b), distance=distance)

    return score
