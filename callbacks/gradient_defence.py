"""GradientDefence: SemSim's training-time gradient defences (seeds.md §2.2 step 1, ``--defense``) as a callback.

The edit itself is ``privacy.gradient_defences.defend``; this callback applies it to every trainable parameter's
gradient once per optimiser step.

When it runs (Lightning's ``on_before_optimizer_step``):
  - after the backward pass(es) of the step, so with gradient accumulation the accumulated gradient is edited once;
  - after AMP's unscaling (the precision plugin unscales before calling the hook), so ``scale`` is in true units;
  - **before** gradient clipping: Lightning clips after this hook, so a configured ``gradient_clip_val`` clips the
    defended gradient. The reference (SemSim) edits the gradient right before ``optimizer.step()`` and does not
    clip; the victim configs set no clipping, which reproduces it exactly.
  - under DDP the gradients are already all-reduced at this hook, so every rank holds the same gradient. The noise
    comes from one CPU generator seeded identically on every rank (the seed is deliberately NOT offset by rank),
    so every rank adds the same noise and the replicas stay identical.

The generator's state is saved in the checkpoint, so a resumed run continues the same noise stream.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from privacy.gradient_defences import DefenceKind, check_defence, defend


class GradientDefence(Callback):
    """Edit every trainable parameter's gradient before each optimiser step.

    Args:
        kind: none (no edit), gaussian (add N(0, scale²) noise to every entry), laplace (add Laplace(0, scale) noise)
            or prune (zero, per parameter tensor, the ``percent`` % entries of smallest magnitude). SemSim's
            ``gaussian_1e-3`` is kind=gaussian, scale=1e-3; ``lap_1e-2`` is laplace, 1e-2; ``prune_70`` is prune, 70.
        scale: noise std (gaussian) or Laplace scale b (laplace).
        percent: share of entries zeroed per tensor by prune, in [0, 100].
        seed: seed of the noise generator (the same on every rank; separate from the training seed).
    """

    def __init__(self, kind: DefenceKind = "none", scale: float = 0.0, percent: float = 0.0, seed: int = 0) -> None:
        check_defence(kind, scale, percent)
        self.kind = kind
        self.scale = scale
        self.percent = percent
        self.seed = seed
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.steps = 0

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        """Replace each trainable parameter's gradient by its defended version (parameters without one are skipped)."""
        if self.kind == "none":
            return
        params = [p for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        if not params:
            return
        edited = defend(
            [p.grad for p in params], self.kind, scale=self.scale, percent=self.percent, generator=self.generator
        )
        with torch.no_grad():
            for p, g in zip(params, edited, strict=True):
                p.grad.copy_(g)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """Settings, edited-step count and the generator state (so a resumed run continues the same noise)."""
        return {
            "kind": self.kind,
            "scale": self.scale,
            "percent": self.percent,
            "seed": self.seed,
            "steps": self.steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the noise stream of a checkpoint written with the same settings."""
        saved = {k: state_dict.get(k) for k in ("kind", "scale", "percent", "seed")}
        current = {"kind": self.kind, "scale": self.scale, "percent": self.percent, "seed": self.seed}
        if saved != current:
            raise ValueError(
                f"GradientDefence: the checkpoint was written with {saved}, this run has {current}; "
                "resume with the same defence or start a new run"
            )
        self.steps = int(state_dict["steps"])
        self.generator.set_state(state_dict["generator"])
