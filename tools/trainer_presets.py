"""Trainer options that a preset sets for GPUs, adapted to the accelerator the run actually resolves to.

`configs/trainer/ddp.yaml` turns on `sync_batchnorm` for multi-GPU runs. torch's SyncBatchNorm only runs on
CUDA devices (DDP refuses it on CPU: "SyncBatchNorm layers only work with GPU modules"; its forward refuses
MPS), so on those accelerators the option is turned off with one log line instead of stopping the run. Each
process then keeps its own batch statistics, as plain DDP does. `precision` is left as set: `bf16-mixed` runs
on CPU through torch's CPU autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator, CPUAccelerator, CUDAAccelerator, MPSAccelerator
from lightning.pytorch.utilities import rank_zero_info

# Accelerators (as Lightning names them) on which torch's SyncBatchNorm cannot run.
NO_SYNC_BATCHNORM = ("cpu", "mps")


def resolved_accelerator(accelerator: Any) -> str:
    """The device kind a Trainer `accelerator` value resolves to on this machine: "cuda", "mps", "cpu" or the
    value's own lower-cased name (e.g. "tpu") when it is none of them.

    "gpu" means CUDA where CUDA is available, else MPS where that is (Lightning's order for "auto": CUDA, MPS,
    then CPU); an `Accelerator` instance is named by its class.
    """
    if isinstance(accelerator, Accelerator):
        for kind, cls in (("cuda", CUDAAccelerator), ("mps", MPSAccelerator), ("cpu", CPUAccelerator)):
            if isinstance(accelerator, cls):
                return kind
        return type(accelerator).__name__.removesuffix("Accelerator").lower()
    name = "auto" if accelerator is None else str(accelerator).lower()
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if MPSAccelerator.is_available():
            return "mps"
        return "cpu" if name == "auto" else "cuda"  # "gpu" without any GPU: let Lightning report it
    return name


def adapt_trainer_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Trainer keyword arguments with `sync_batchnorm` turned off (and one log line saying so) where the
    accelerator resolves to CPU or MPS; otherwise `config` unchanged. The input dict is not modified."""
    if not config.get("sync_batchnorm"):
        return config
    kind = resolved_accelerator(config.get("accelerator"))
    if kind not in NO_SYNC_BATCHNORM:
        return config
    rank_zero_info(
        f"synthpriv: sync_batchnorm turned off: the accelerator is {kind} and SyncBatchNorm runs only on CUDA GPUs "
        "(each process normalises with its own batch statistics)"
    )
    return {**config, "sync_batchnorm": False}
