"""Hyperparameter recording for data modules that may be built nested inside another one."""

from __future__ import annotations

from typing import Any


def save_own_hyperparameters(module: Any, ignore: list[str]) -> None:
    """``save_hyperparameters`` from the caller's own arguments when it is built nested inside another module.

    LightningCLI hands the top-level ``data`` config to every data module instantiated under that key, so a
    source module nested in MembershipDataModule would otherwise record the outer module's hyperparameters.
    """
    import inspect

    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    caller = inspect.currentframe().f_back
    given = _given_hyperparameters.get()
    if given is None or str(given.get("_class_path", "")).rsplit(".", 1)[-1] == type(module).__name__:
        module.save_hyperparameters(ignore=ignore, frame=caller)
        return
    token = _given_hyperparameters.set(None)
    try:
        module.save_hyperparameters(ignore=ignore, frame=caller)
    finally:
        _given_hyperparameters.reset(token)
