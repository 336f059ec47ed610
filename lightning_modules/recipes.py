"""Optimiser and schedule recipes shared by the classifiers and the shadow ensemble (same recipe, same code)."""

from __future__ import annotations

import warnings
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
        found = "-1 (no limit)" if max_epochs == -1 else repr(max_epochs)
        raise ValueError(
            f"trainer.max_epochs: model.scheduler={hp.scheduler!r} is spread over the epochs and needs a positive "
            f"trainer.max_epochs; found {found} (or set model.scheduler: none)"
        )
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


def reapply_options(trainer: Any, pl_module: Any) -> str:
    """After a checkpoint restore, make the module's current options govern the optimizer and the schedule.

    Lightning restores each param group's settings (lr, weight decay, momentum, ...) and each scheduler's state
    (base lr, T_max or milestones, position) from the checkpoint, so changed options would be ignored silently.
    Here the module's ``configure_optimizers`` builds a fresh optimizer and schedule from its (new) options; the
    fresh schedule is stepped as often as the restored run's was (one step per finished epoch, or per optimizer
    step for step-interval schedules), so the lr is the one the new options give at this point, as if the run had
    used them from the start. The restored optimizer keeps its per-parameter state (Adam moments, momentum
    buffers) and takes the fresh param groups' settings; the fresh schedule replaces the restored one.
    ReduceLROnPlateau, which steps on a metric, restarts from the new lr. Returns one line saying what happened.
    """
    optimizer, schedule = _fresh_recipe(pl_module.configure_optimizers())
    if len(trainer.optimizers) != 1 or type(trainer.optimizers[0]) is not type(optimizer):
        raise ValueError(
            f"cannot apply changed options: the run has {len(trainer.optimizers)} optimizer(s) "
            f"({', '.join(type(o).__name__ for o in trainer.optimizers)}); "
            f"the module now builds one {type(optimizer).__name__}"
        )
    restored = trainer.optimizers[0]
    if len(restored.param_groups) != len(optimizer.param_groups):
        raise ValueError("cannot apply changed options: the optimizer's parameter groups differ from the checkpoint's")
    if schedule is None:
        _copy_groups(optimizer, restored)
        lr = restored.param_groups[0]["lr"]
        return f"no schedule: optimizer settings from the new options, lr {lr:.6g} from now on"
    scheduler = schedule["scheduler"]
    interval, frequency = schedule.get("interval", "epoch"), schedule.get("frequency", 1)
    done = (trainer.current_epoch if interval == "epoch" else trainer.global_step) // frequency
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if not plateau:
        with warnings.catch_warnings():  # the fresh optimizer never stepped; torch would warn about the order
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done):
                scheduler.step()
    _copy_groups(optimizer, restored)
    scheduler.optimizer = restored
    configs = trainer.lr_scheduler_configs
    if len(configs) != 1:
        raise ValueError(f"cannot apply changed options: the run has {len(configs)} schedules, the module builds one")
    configs[0].scheduler = scheduler
    lr = restored.param_groups[0]["lr"]
    name = type(scheduler).__name__
    if plateau:
        return f"{name} restarted at lr {lr:.6g} (its best value and patience count start afresh)"
    where = f"epoch {trainer.current_epoch}" if interval == "epoch" else f"step {trainer.global_step}"
    line = f"{name} rebuilt from the new options and advanced {done} {interval}(s) to {where}: lr {lr:.6g} now"
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        line += f", annealing to {scheduler.eta_min:g} at {interval} {scheduler.T_max}"
    elif isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        line += f", times {scheduler.gamma:g} at {interval}s {sorted(scheduler.milestones.elements())}"
    return line + " (as if the run had used these options from the start)"


def _fresh_recipe(built: Any) -> tuple[torch.optim.Optimizer, dict[str, Any] | None]:
    """(optimizer, scheduler config or None) from what a synthpriv ``configure_optimizers`` returns."""
    if isinstance(built, torch.optim.Optimizer):
        return built, None
    if isinstance(built, dict) and isinstance(built.get("optimizer"), torch.optim.Optimizer):
        schedule = built.get("lr_scheduler")
        if schedule is not None and not isinstance(schedule, dict):
            schedule = {"scheduler": schedule}
        return built["optimizer"], schedule
    raise ValueError(
        f"cannot apply changed options: configure_optimizers returned {type(built).__name__}; "
        "expected an optimizer or a dict with 'optimizer' and optional 'lr_scheduler'"
    )


def _copy_groups(source: torch.optim.Optimizer, target: torch.optim.Optimizer) -> None:
    for fresh, group in zip(source.param_groups, target.param_groups):
        group.update({key: value for key, value in fresh.items() if key != "params"})
