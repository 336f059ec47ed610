"""GradientInversion: a predict-only module that reconstructs a victim's targets from their gradients.

Run on ``InversionTargetDataModule`` batches (``id``, ``index``, ``label``, ``original`` in [0, 1], ``target``
normalised and augmented). Per batch, with the victim in eval mode: the gradient each target produces alone
(``privacy.inversion.observed_gradients`` of ``loss_scale`` x CE), optionally a defence applied to that OBSERVED
gradient (``privacy.gradient_defences.defend``, noise seeded by (seed, target index)), then all targets inverted
in parallel (``privacy.inversion.invert`` with the global indices as target ids, so a target's reconstruction does
not depend on the batch, the rank or a resume), reconstructions mapped back to [0, 1] and scored against the
un-augmented originals (``privacy.similarity.compute_metrics``: mse, psnr, ssim, agreement through the victim).
Files are written by ``callbacks.InversionWriter``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from privacy.gradient_defences import check_defence, defend
from privacy.inversion import PRESETS, InversionConfig, invert, observed_gradients
from privacy.similarity import compute_metrics, psnr

METRICS = ("mse", "psnr", "ssim", "agreement")


class NormalisedVictim(nn.Module):
    """[0, 1] images -> the victim's logits (normalisation first), for metrics computed through the victim."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean.to(x)) / self.std.to(x))


def load_victim(path: str) -> tuple[nn.Module, dict[str, Any], str]:
    """The victim network of an ImageClassifier checkpoint (a file, or a run folder: best, else last).

    Returns (network, hyperparameters, checkpoint path); a checkpoint of another module is refused by name.
    """
    from lightning_modules.classifier import ImageClassifier
    from tools.target_logits import resolve_target_checkpoint

    if not Path(path).exists():
        raise FileNotFoundError(f"model.victim_checkpoint: {path} does not exist (a .ckpt file or a run folder)")
    file = resolve_target_checkpoint(str(path))
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"model.victim_checkpoint: {file} is not a readable Lightning checkpoint ({err})") from None
    hp = raw.get("hyper_parameters", {}) if isinstance(raw, dict) else {}
    if "backbone" not in hp or "state_dict" not in raw:
        raise ValueError(
            f"model.victim_checkpoint: {file} is not an ImageClassifier checkpoint (no backbone in its "
            f"hyper_parameters; keys {sorted(hp)[:6]})"
        )
    # LightningCLI hands this module's init args to every save_hyperparameters() run while it is built; the
    # victim must record its own (as datamodules.hparams does for nested data modules).
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    token = _given_hyperparameters.set(None)
    try:
        classifier = ImageClassifier.load_from_checkpoint(file, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).splitlines()[0]
        what = f"model.victim_checkpoint: {file} does not load as backbone {hp['backbone']!r}"
        raise ValueError(f"{what}: {first}") from None
    finally:
        _given_hyperparameters.reset(token)
    return classifier.model.eval(), dict(classifier.hparams), str(file)


def victim_training_data(checkpoint: str) -> dict[str, Any] | None:
    """normalize / mean / std / transform of the data the victim was trained on, from its run's config.yaml
    (``<run>/checkpoints/<file>.ckpt`` -> ``<run>/config.yaml``); None when the checkpoint lies outside a run."""
    config = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    args = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("init_args") or {}
    keys = ("normalize", "mean", "std", "transform")
    return {k: args[k] for k in keys if k in args} or None


class GradientInversion(LightningModule):
    """Gradient-inversion attack on a trained victim classifier (predict only; see the module docstring)."""

    def __init__(
        self,
        victim_checkpoint: str,
        preset: str = "inversed",
        iterations: int | None = None,
        restarts: int | None = None,
        known_labels: bool = True,
        loss_scale: float = 0.5,
        seed: int = 0,
        defence: Literal["none", "gaussian", "laplace", "prune"] = "none",
        defence_scale: float = 0.0,
        defence_percent: float = 0.0,
        backbone: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        image_size: int | None = None,
    ) -> None:
        """Load the victim and fix the attack.

        Args:
            victim_checkpoint: ImageClassifier checkpoint file, or its run folder (best checkpoint, else last.ckpt).
            preset: attack configuration from ``privacy.inversion.PRESETS`` (inversed, inversed-zero, zhu).
            iterations: override of the preset's optimiser steps per restart (lr milestones scale with it).
            restarts: override of the preset's number of random restarts (lowest final loss kept).
            known_labels: attack with the true labels; False recovers them from the gradient (iDLG).
            loss_scale: factor on the cross-entropy of the observed and candidate gradients (SemSim: 0.5).
            seed: attack seed: random starts and defence noise depend on (seed, target index) only.
            defence: edit of the OBSERVED gradient before inversion: none, gaussian (std defence_scale), laplace
                (scale defence_scale) or prune (zero the defence_percent % smallest entries per parameter).
            defence_scale: noise std (gaussian) or Laplace scale (laplace).
            defence_percent: share of entries zeroed per parameter tensor by prune, in [0, 100].
            backbone: architecture the victim must have (e.g. resnet20-4); None accepts the checkpoint's.
            num_classes: class count of the targets (linked from the data module; checked against the victim).
            class_names: class names of the targets (linked from the data module; checked against the victim).
            image_size: target side in pixels (linked from the data module; checked against the victim).
        """
        super().__init__()
        self.save_hyperparameters()
        if preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
        if (iterations is not None and iterations < 1) or (restarts is not None and restarts < 1):
            raise ValueError(f"model.iterations / model.restarts: expected >= 1; got {iterations} / {restarts}")
        check_defence(defence, defence_scale, defence_percent)
        self.victim, victim_hp, self.victim_file = load_victim(victim_checkpoint)
        self.victim.requires_grad_(False)
        self._check_victim(victim_hp)
        self.victim_hparams = {k: victim_hp.get(k) for k in ("backbone", "num_classes", "class_names", "image_size")}
        self.victim_data = victim_training_data(self.victim_file)
        self.attack_config = self.configure_attack()
        self._clock: tuple[float, int] = (0.0, 0)

    def _check_victim(self, victim: dict[str, Any]) -> None:
        hp, file = self.hparams, self.victim_file
        if hp.backbone is not None and victim["backbone"] != hp.backbone:
            raise ValueError(
                f"model.victim_checkpoint: {file} is a {victim['backbone']!r} victim; model.backbone asks for "
                f"{hp.backbone!r}"
            )
        if hp.num_classes is not None and victim["num_classes"] != hp.num_classes:
            raise ValueError(
                f"model.victim_checkpoint: {file} classifies {victim['num_classes']} classes but the targets have "
                f"{hp.num_classes} ({hp.class_names})"
            )
        if hp.class_names is not None and victim.get("class_names") is not None:
            if list(victim["class_names"]) != list(hp.class_names):
                raise ValueError(
                    f"model.victim_checkpoint: class order differs between the victim {list(victim['class_names'])} "
                    f"and the targets {list(hp.class_names)}"
                )
        if hp.image_size is not None and victim.get("image_size") not in (None, hp.image_size):
            raise ValueError(
                f"model.victim_checkpoint: {file} was trained on {victim['image_size']} px images; the targets are "
                f"{hp.image_size} px (set data.image_size)"
            )

    def setup(self, stage: str) -> None:
        """Check the targets against the victim (see :meth:`check_targets`)."""
        self.check_targets(self.trainer.datamodule)

    def check_targets(self, dm: Any) -> None:
        """Refuse targets normalised otherwise than the victim's training data; warn on another augmentation."""
        seen = self.victim_data
        if seen is None or dm is None or not hasattr(dm, "mean"):
            return
        mean, std = (seen.get("mean"), seen.get("std")) if seen.get("normalize", True) else ((0.0,) * 3, (1.0,) * 3)
        for name, victim_value, ours in (("mean", mean, dm.mean), ("std", std, dm.std)):
            if victim_value is not None and not np.allclose(victim_value, ours, rtol=0, atol=1e-6):
                raise ValueError(
                    f"data.{name}: the victim {self.victim_file} was trained with {name} {list(victim_value)}; the "
                    f"targets use {list(ours)} (set data.mean / data.std to the victim's)"
                )
        transform = seen.get("transform")
        if transform is not None and transform != dm.hparams.train_transform:
            rank_zero_warn(
                f"data.train_transform {dm.hparams.train_transform!r} differs from the victim's training transform "
                f"{transform!r} ({self.victim_file}); SemSim augments targets as the victim was trained"
            )

    def configure_attack(self) -> InversionConfig:
        """The preset with the iteration / restart overrides."""
        config = PRESETS[self.hparams.preset]
        if self.hparams.iterations is not None:
            config = config.with_iterations(self.hparams.iterations)
        if self.hparams.restarts is not None:
            config = replace(config, restarts=self.hparams.restarts)
        return config

    def attack_settings(self) -> dict[str, Any]:
        """What decides the reconstructions (for the writer's manifest), as plain JSON."""
        hp = self.hparams
        return {
            "victim": self.victim_hparams,
            "victim_training_data": self.victim_data,
            "preset": hp.preset,
            "overrides": {"iterations": hp.iterations, "restarts": hp.restarts},
            "attack": {k: v for k, v in vars(self.attack_config).items()},
            "known_labels": bool(hp.known_labels),
            "loss_scale": float(hp.loss_scale),
            "seed": int(hp.seed),
            "defence": {"kind": hp.defence, "scale": float(hp.defence_scale), "percent": float(hp.defence_percent)},
            "metrics": list(METRICS),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Victim logits of normalised images."""
        return self.victim(images)

    def _defend(self, grads: list[torch.Tensor], indices: list[int]) -> list[torch.Tensor]:
        hp = self.hparams
        if hp.defence == "none":
            return grads
        rows = []
        for b, index in enumerate(indices):
            state = np.random.SeedSequence([int(hp.seed), int(index), 0xDEF]).generate_state(1, dtype=np.uint64)
            generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
            rows.append(defend([g[b] for g in grads], hp.defence, hp.defence_scale, hp.defence_percent, generator))
        return [torch.stack([row[p] for row in rows]) for p in range(len(grads))]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Invert the batch's targets; returns ids, labels, images in [0, 1] (original, target, reconstruction),
        recovered labels, final attack losses and per-image metrics."""
        hp, dm = self.hparams, self.trainer.datamodule
        mean = torch.tensor(dm.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(dm.std, device=self.device).view(1, -1, 1, 1)
        indices = [int(i) for i in batch["index"]]
        self.victim.eval()
        # Lightning predicts under inference_mode; the attack needs autograd on fresh (non-inference) tensors.
        with torch.inference_mode(False), torch.enable_grad():
            target = batch["target"].clone().float()
            labels = batch["label"].clone().long()
            grads = self._defend(observed_gradients(self.victim, target, labels, hp.loss_scale), indices)
            result = invert(
                self.victim,
                grads,
                labels if hp.known_labels else None,
                self.attack_config,
                tuple(target.shape[1:]),
                dm.mean,
                dm.std,
                seed=hp.seed,
                target_ids=indices,
                loss_scale=hp.loss_scale,
            )
        with torch.no_grad():
            reconstruction = (result.images * std + mean).clamp(0, 1)
            target01 = (target * std + mean).clamp(0, 1)
            original = batch["original"].float()
            judge = NormalisedVictim(self.victim, mean, std)
            metrics = compute_metrics(list(METRICS), original, reconstruction, victim=judge)
            metrics["psnr_target"] = psnr(target01, reconstruction)
        count, start = self._clock[1] + len(indices), self._clock[0] or time.perf_counter()
        self._clock = (start, count)
        return {
            "id": list(batch["id"]),
            "index": batch["index"],
            "label": labels.detach(),
            "used_label": result.labels.detach(),
            "loss": result.losses.detach(),
            "original": original,
            "target": target01,
            "reconstruction": reconstruction,
            "metrics": {k: v.detach() for k, v in metrics.items()},
            "images_per_s": count / max(time.perf_counter() - start, 1e-9),
        }

    def on_predict_start(self) -> None:
        """Start the images/s clock."""
        self._clock = (time.perf_counter(), 0)

    def configure_optimizers(self) -> None:
        """Predict-only: nothing is trained."""
        return None
