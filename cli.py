"""synthpriv command line: fit/validate/test/predict through LightningCLI, tools through jsonargparse.

This module stays light so that `synthpriv --help` and the tools start in well under two seconds: Lightning,
torch and the models are imported only for the training commands (``tools.training_cli``), and a tool's
module only when that tool runs.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from typing import TYPE_CHECKING, Any

from tools.cli_errors import CommandLineError, flatten, one_line, suggestion
from tools.commands import TOOLS, run_tool

if TYPE_CHECKING:
    from tools.training_cli import SynthPrivCLI

__all__ = ["INPUT_ERRORS", "OVERVIEW", "SynthPrivCLI", "main"]

# Errors raised for bad user input (paths, configs, data); anything else keeps its traceback. Training
# commands add tools.run_dirs.RunExistsError (see _input_errors).
INPUT_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, OSError, ArgumentError)
TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
OVERVIEW = """usage: synthpriv <command> [options]   (synthpriv <command> --help for each)

training (LightningCLI; --config YAML files, --print_config):
  fit        train a model            validate   evaluate on the validation split
  test       evaluate on the test split    predict    write predictions
tools:
  data       materialise a bundled real dataset as class folders
  run        run a study (ordered steps; finished, unchanged steps are skipped; --status)
  attack     membership inference (LiRA, RMIA, baseline) with 95 % intervals, from shadow logits and a target
  privacy-report   one accuracy / AUC_MIA / TPR@FPR / AOP table and ROC figure over attack folders
  feature-report   the CVAE study's table: probe AUROC per noise level, distance audits, LiRA; plots
  shadows-config   write the shadows config of a target run (recipe and data copied from its config.yaml)
  image-audit      memorisation audit of a synthetic image set: nearest real training images, copies, DCR

Outputs go to runs/<study>/<name>/ (--run.study, --run.name).
Errors are one line; SYNTHPRIV_DEBUG=1 shows the full message and traceback.
"""


def __getattr__(name: str) -> Any:
    """``cli.SynthPrivCLI`` imports the training machinery on first use."""
    if name == "SynthPrivCLI":
        from tools.training_cli import SynthPrivCLI

        return SynthPrivCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(args: list[str] | None = None) -> None:
    """Entry point of the `synthpriv` console script.

    From the shell, input errors end with a one-line message (SYNTHPRIV_DEBUG=1 shows the traceback);
    called with ``args`` (tests, scripts) they propagate as exceptions.
    """
    argv = list(sys.argv[1:] if args is None else args)
    shell = args is None and not os.environ.get("SYNTHPRIV_DEBUG")
    try:
        if argv and argv[0] in TOOLS:
            run_tool(argv, exit_on_error=not shell)
        elif not argv or argv[0] in ("-h", "--help"):
            print(OVERVIEW)
        elif argv[0].startswith("-") or argv[0] in TRAINING_COMMANDS:
            from tools.training_cli import SynthPrivCLI

            SynthPrivCLI(args=args, parser_kwargs={"exit_on_error": False} if shell else None)
        else:
            commands = [*TRAINING_COMMANDS, *TOOLS]
            close = suggestion(argv[0], commands)
            hint = f"did you mean {close}? " if close else ""
            raise CommandLineError(f"unknown command '{argv[0]}' ({hint}commands: {', '.join(commands)})")
    except _input_errors() as err:
        if not shell:
            raise
        sys.exit(f"synthpriv: error: {_describe(err, argv)}")


def _input_errors() -> tuple[type[BaseException], ...]:
    """INPUT_ERRORS, plus RunExistsError once the training machinery is loaded (tools.run_dirs imports torch,
    and nothing raises its error without having imported it)."""
    run_dirs = sys.modules.get("tools.run_dirs")
    return (*INPUT_ERRORS, run_dirs.RunExistsError) if run_dirs is not None else INPUT_ERRORS


def _describe(err: BaseException, argv: list[str]) -> str:
    """The one-line message for ``err``: messages of our own are flattened, jsonargparse's are unwrapped."""
    if isinstance(err, CommandLineError):
        return flatten(str(err))
    options: list[str] = []
    if isinstance(err, ArgumentError) and argv and argv[0] in TOOLS:  # a tool's option: suggest from its signature
        import inspect

        from tools.commands import tool_function

        options = list(inspect.signature(tool_function(argv[0])).parameters)
    return one_line(err, options)


if __name__ == "__main__":
    main()
