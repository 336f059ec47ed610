"""synthpriv command line: fit/validate/test/predict through LightningCLI, tools through jsonargparse."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

import callbacks  # noqa: F401  (imported so configs can use short class names)
import datamodules  # noqa: F401
import lightning_modules  # noqa: F401
from callbacks.run_dir import RunDirectory
from tools.commands import TOOLS, run_tool
from tools.resume_changes import check_resume_changes
from tools.run_config import configure_run, ensure_checkpointing
from tools.run_dirs import RunExistsError, RunOptions

# Errors raised for bad user input (paths, configs, data); anything else keeps its traceback.
INPUT_ERRORS = (RunExistsError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, OSError)
OVERVIEW = """usage: synthpriv <command> [options]   (synthpriv <command> --help for each)

training (LightningCLI; --config YAML files, --print_config):
  fit        train a model            validate   evaluate on the validation split
  test       evaluate on the test split    predict    write predictions
tools:
  data       materialise a bundled real dataset as class folders
  run        run a study (ordered steps; finished steps are skipped)
  attack     membership inference (LiRA, baseline) from shadow logits and a target checkpoint or logits
  privacy-report   one accuracy / AUC_MIA / TPR@FPR / AOP table and ROC figure over attack folders
  feature-report   the CVAE study's table: probe AUROC per noise level, distance audits, LiRA; plots

Outputs go to runs/<study>/<name>/ (--run.study, --run.name).
"""


class SynthPrivCLI(LightningCLI):
    """LightningCLI in subclass mode for models and data, with synthpriv run folders."""

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        self.run_dir: Path | None = None
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunDirectory,
            auto_configure_optimizers=False,  # every synthpriv model owns configure_optimizers
            seed_everything_default=0,
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
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self.run_dir = configure_run(self.config[subcommand], subcommand)
        if subcommand == "fit":  # changed options on resume: refused, or handed to RunDirectory to apply
            changes = check_resume_changes(self._parser(subcommand), self.config[subcommand], self.run_dir)
            self.save_config_kwargs["resume_changes"] = changes

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model options with a checkpoint's hyperparameters; a fit runs with its own config
        instead (on resume compared with the run's saved one at parse time: refused or applied, see above)."""
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

    def _instantiate_trainer(self, config: dict[str, Any], extra_callbacks: list[Any]) -> Any:
        enabled = config.get("enable_checkpointing") is not False and not config.get("fast_dev_run")
        if self.run_dir is not None:
            config["callbacks"] = ensure_checkpointing(config.get("callbacks"), self.run_dir, enabled)
        return super()._instantiate_trainer(config, extra_callbacks)


def main(args: ArgsType = None) -> None:
    """Entry point of the `synthpriv` console script.

    From the shell, input errors end with a one-line message (SYNTHPRIV_DEBUG=1 shows the traceback);
    called with ``args`` (tests, scripts) they propagate as exceptions.
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in TOOLS:
            run_tool(argv)
        elif not argv or argv[0] in ("-h", "--help"):
            print(OVERVIEW)
        else:
            SynthPrivCLI(args=args)
    except INPUT_ERRORS as err:
        if args is not None or os.environ.get("SYNTHPRIV_DEBUG"):
            raise
        sys.exit(f"synthpriv: error: {err}")


if __name__ == "__main__":
    main()
