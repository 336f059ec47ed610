"""Callbacks for text-to-image fine-tuning: adapter export and sample grids.

``AdapterExport`` writes ``pl_module.save_adapter`` (a diffusers LoRA safetensors, or a diffusers folder for a
full fine-tune) to ``<run>/<dirname>`` at the end of fit and, optionally, every N epochs. The export goes to a
temporary sibling folder first and is renamed into place, so a killed run never leaves a half-written adapter.

``SampleGrid`` generates fixed prompts from fixed seeds every N epochs (``pl_module.generate``) and writes
``<run>/samples/epoch<NNN>.png``; with a ``WandbLogger`` the grid is logged as ``samples`` too. Same prompts and
seeds every time, so the grids show how training changes the images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from tools.files import write_bytes_atomic, write_json_atomic


class AdapterExport(Callback):
    """Export the trained adapter to ``<run>/<dirname>`` at the end of fit (and every N epochs if set)."""

    def __init__(self, every_n_epochs: int | None = None, dirname: str = "adapter") -> None:
        """Args:
        every_n_epochs: also export after every N-th training epoch; None exports at fit end only.
        dirname: folder name inside the run folder.
        """
        super().__init__()
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(
                f"AdapterExport.every_n_epochs: expected a positive number or null; found {every_n_epochs}"
            )
        if not dirname or Path(dirname).name != dirname:
            raise ValueError(f"AdapterExport.dirname: expected a plain folder name; found {dirname!r}")
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname

    def folder(self, trainer: Trainer) -> Path:
        """The adapter folder of this run."""
        return Path(trainer.default_root_dir) / self.dirname

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse a module that cannot export an adapter before any training happens."""
        if not callable(getattr(pl_module, "save_adapter", None)):
            raise ValueError(
                f"AdapterExport needs a module with save_adapter(dir); {type(pl_module).__name__} has none"
            )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export every N epochs when set."""
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export the final weights."""
        self.export(trainer, pl_module)

    def export(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        """Rank zero writes the adapter to a temporary folder, then renames it into place."""
        final = self.folder(trainer)
        if trainer.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            old = final.with_name(f".{final.name}.old")
            for stale in (tmp, old):
                if stale.exists():
                    shutil.rmtree(stale)
            pl_module.save_adapter(tmp)
            write_json_atomic(
                tmp / "export.json",
                {"epoch": int(trainer.current_epoch), "global_step": int(trainer.global_step)},
            )
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            if old.exists():
                shutil.rmtree(old)
        trainer.strategy.barrier()
        return final


class SampleGrid(Callback):
    """Generate fixed prompts from fixed seeds every N epochs; write ``<run>/samples/epoch<NNN>.png``."""

    def __init__(
        self,
        prompts: list[str],
        seeds: list[int] | None = None,
        every_n_epochs: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        nrow: int | None = None,
    ) -> None:
        """Args:
        prompts: prompts of the grid, one image each.
        seeds: one seed per prompt; default 0, 1, 2, ...
        every_n_epochs: write a grid after every N-th training epoch.
        num_inference_steps: sampling steps; default the module's.
        guidance_scale: classifier-free guidance scale; default the module's.
        nrow: images per grid row; default all prompts in one row.
        """
        super().__init__()
        if not prompts:
            raise ValueError("SampleGrid.prompts: expected at least one prompt")
        seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"SampleGrid: {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        if every_n_epochs < 1:
            raise ValueError(f"SampleGrid.every_n_epochs: expected a positive number; found {every_n_epochs}")
        self.prompts = list(prompts)
        self.seeds = seeds
        self.every_n_epochs = every_n_epochs
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.nrow = nrow

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse a module without generate() before training."""
        if not callable(getattr(pl_module, "generate", None)):
            raise ValueError(f"SampleGrid needs a module with generate(prompts, seeds); {type(pl_module).__name__}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write (and log) the grid every N epochs, on rank zero."""
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking:
            self.write(trainer, pl_module)

    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        """Generate the grid and write it to ``<run>/samples/epoch<NNN>.png``; returns the path on rank zero."""
        if not trainer.is_global_zero:
            return None
        from torchvision.utils import save_image

        path = Path(trainer.default_root_dir) / "samples" / f"epoch{trainer.current_epoch:03d}.png"
        was_training = pl_module.training
        pl_module.eval()
        try:
            images = pl_module.generate(
                self.prompts,
                self.seeds,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
            )
        finally:
            pl_module.train(was_training)
        grid = ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1)
        nrow = self.nrow or len(self.prompts)
        write_bytes_atomic(path, lambda handle: save_image(grid, handle, nrow=nrow, format="PNG"))
        write_bytes_atomic(
            path.with_suffix(".json"),
            lambda handle: handle.write(
                json.dumps({"prompts": self.prompts, "seeds": self.seeds, "epoch": trainer.current_epoch}).encode()
            ),
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [str(path)], step=trainer.global_step, caption=["; ".join(self.prompts)])
        return path
