"""`synthpriv fit/validate/test/predict`: LightningCLI for synthpriv's models and data, with run folders.

Kept out of ``cli.py`` so that ``synthpriv --help`` and the tools start without importing Lightning, torch
and every model: ``cli.main`` imports this module only for the training commands.
"""

from __future__ import annotations

import sys
from argparse import SUPPRESS, ArgumentError
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

import callbacks  # noqa: F401  (imported so configs can use short class names)
import datamodules  # noqa: F401
import lightning_modules  # noqa: F401
from callbacks.run_dir import RunDirectory
from tools.cli_errors import CommandLineError, one_line
from tools.resume_changes import check_resume_changes
from tools.run_config import configure_run, ensure_checkpointing
from tools.run_dirs import RunOptions
from tools.trainer_presets import adapt_trainer_config, resolved_accelerator

#: trainer.precision values that mean fp16 (Lightning reads 16 and "16" as "16-mixed").
FP16_PRECISIONS = ("16", "16-mixed", "16-true")


class SynthPrivCLI(LightningCLI):
    """LightningCLI in subclass mode for models and data, with synthpriv run folders.

    With ``parser_kwargs={"exit_on_error": False}`` (the console entry point) a bad command line or config
    raises ``CommandLineError`` with a one-line message instead of printing the usage and exiting.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, parser_kwargs: dict[str, Any] | None = None) -> None:
        self.run_dir: Path | None = None
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunDirectory,
            auto_configure_optimizers=False,  # every synthpriv model owns configure_optimizers
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Run-folder options and the data -> model links."""
        parser.add_class_arguments(RunOptions, "run")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.input_size", "model.init_args.image_size", apply_on="instantiate")
        # Feature-vector data only; jsonargparse skips a link whose source or target does not exist.
        parser.link_arguments("data.feature_dim", "model.init_args.feature_dim", apply_on="instantiate")

    def parse_arguments(self, parser: Any, args: ArgsType) -> None:
        """Parse, then point the subcommand's config at its run folder (before the checkpoint is read)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:  # only raised with exit_on_error=False
            raise CommandLineError(one_line(err, self._option_names(str(err)))) from err
        subcommand = self.config.get("subcommand")
        if subcommand:  # before the run folder is touched
            _check_precision(self.config[subcommand].trainer)
        if subcommand == "fit":
            _check_max_epochs(self.config.fit.trainer.get("max_epochs"))
        if subcommand:
            self.run_dir = configure_run(self.config[subcommand], subcommand)
        if subcommand == "fit":  # changed options on resume: refused, or handed to RunDirectory to apply
            changes = check_resume_changes(self._parser(subcommand), self.config[subcommand], self.run_dir)
            self.save_config_kwargs["resume_changes"] = changes

    def _option_names(self, message: str) -> list[str]:
        """Every option key of the subcommand named in a parse error (all subcommands' when none is named)."""
        parsers = [p for name, p in self._subcommand_parsers.items() if f"'{name}'" in message]
        names: set[str] = set()
        for p in parsers or self._subcommand_parsers.values():
            names.update(a.dest for a in p._actions if a.dest and a.dest != SUPPRESS)
        return sorted(names)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model options with a checkpoint's hyperparameters; a fit runs with its own config
        instead (on resume compared with the run's saved one at parse time: refused or applied, see above)."""
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

    def _instantiate_trainer(self, config: dict[str, Any], extra_callbacks: list[Any]) -> Any:
        config = adapt_trainer_config(config)  # presets' GPU-only options (sync BN) off on CPU/MPS
        enabled = config.get("enable_checkpointing") is not False and not config.get("fast_dev_run")
        if self.run_dir is not None:
            config["callbacks"] = ensure_checkpointing(config.get("callbacks"), self.run_dir, enabled)
        if config.get("logger") is False:  # the callbacks preset's LearningRateMonitor would refuse to start
            config["callbacks"] = _without_lr_monitor(config.get("callbacks"))
        return super()._instantiate_trainer(config, extra_callbacks)


def _without_lr_monitor(given: Any) -> Any:
    """The callbacks minus LearningRateMonitor, which Lightning refuses without a logger (trainer.logger: false)."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    if not isinstance(given, list) or not any(isinstance(c, LearningRateMonitor) for c in given):
        return given
    print("trainer.logger is false: LearningRateMonitor left out (it needs a logger)", file=sys.stderr)
    return [c for c in given if not isinstance(c, LearningRateMonitor)]


def _check_max_epochs(max_epochs: int | None) -> None:
    """A fit with trainer.max_epochs 0 would stop before its first step (and leave no schedule to anneal)."""
    if max_epochs is not None and max_epochs == 0:
        raise CommandLineError(
            "trainer.max_epochs: expected a positive number of epochs (or -1: no limit, with trainer.max_steps); "
            "found 0, which trains nothing"
        )


def _check_precision(trainer: Any) -> None:
    """fp16 on a CPU is refused: Lightning would silently train ``16-mixed`` in bf16 instead (a warning, then
    ``bf16-mixed``), and ``16-true`` puts fp16 weights on a CPU, which few CPU kernels support well."""
    precision = trainer.get("precision")
    if precision is None or str(precision) not in FP16_PRECISIONS:
        return
    accelerator = trainer.get("accelerator")
    class_path = accelerator.get("class_path") if hasattr(accelerator, "get") else None
    if class_path is not None:  # an accelerator given by class: the CPU one is CPUAccelerator
        kind = "cpu" if str(class_path).rsplit(".", 1)[-1] == "CPUAccelerator" else "other"
    else:
        kind = resolved_accelerator(accelerator)
    if kind != "cpu":
        return
    given = "auto" if accelerator is None else str(accelerator if class_path is None else class_path)
    where = "cpu" if given.lower() == "cpu" else f"{given}, which is the CPU on this machine (no GPU found)"
    why = (
        "fp16 weights, which most CPU kernels lack"
        if str(precision) == "16-true"
        else "fp16 autocast does not run on a CPU; Lightning would quietly train in bf16-mixed instead"
    )
    raise CommandLineError(
        f"trainer.precision: expected bf16-mixed or 32-true on a CPU (or a GPU for fp16); found {precision} with "
        f"trainer.accelerator {where} ({why})"
    )
