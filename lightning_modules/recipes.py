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


def select_by_val_loss(trainer: Any, patience: int, previous: list[Any]) -> tuple[list[Any], list[Any]]:
    """Callbacks of recipes that select by validation loss: early stopping and a best-by-val/loss checkpoint.

    Returns (callbacks for ``configure_callbacks``, the ones created here). Lightning drops trainer callbacks
    of the types a module returns, which would lose the suite's own ``last.ckpt`` checkpoint; so the trainer's
    ModelCheckpoints are handed back too, the best checkpoint goes into their folder, and none is added when
    the config already has one on val/loss. ``previous`` are the callbacks an earlier call created.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    kept = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb not in previous]
    own: list[Any] = []
    if patience > 0:
        own.append(EarlyStopping(monitor="val/loss", mode="min", patience=patience))
    if not any(cb.monitor == "val/loss" for cb in kept):
        dirpath = next((cb.dirpath for cb in kept if cb.dirpath is not None), None)
        own.append(
            ModelCheckpoint(
                dirpath=dirpath,
                filename="best-epoch{epoch:03d}",
                monitor="val/loss",
                mode="min",
                save_top_k=1,
                auto_insert_metric_name=False,
            )
        )
    return [*own, *kept], own
