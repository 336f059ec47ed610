"""Optimiser and schedule recipes shared by the classifiers and the shadow ensemble (same recipe, same code)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# SemSim's MultiStepLR milestones as fractions of the epoch count (epochs//2.667, //1.6, //1.142).
SEMSIM_MILESTONE_DIVISORS = (2.667, 1.6, 1.142)


def optimizer_and_schedule(params: Iterable[torch.nn.Parameter], hp: Any, max_epochs: int | None) -> dict[str, Any]:
    """AdamW (TCKR) or SGD-Nesterov (SemSim) with a cosine or multistep schedule stepped per epoch.

    ``hp`` holds optimizer, lr, weight_decay, momentum, nesterov, scheduler, milestones and gamma.
    """
    params = list(params)
    if hp.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    else:
        opt = torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
        )
    if hp.scheduler == "none":
        return {"optimizer": opt}
    epochs = max_epochs if max_epochs and max_epochs > 0 else None
    if epochs is None:
        raise ValueError(f"model.scheduler={hp.scheduler!r} needs trainer.max_epochs to be set")
    if hp.scheduler == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.0)
    else:
        milestones = hp.milestones or [int(epochs // d) for d in SEMSIM_MILESTONE_DIVISORS]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=hp.gamma)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
