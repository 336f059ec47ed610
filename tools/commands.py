"""The non-training subcommands of `synthpriv`, parsed by jsonargparse (typed, --help, --config)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonargparse import auto_cli

from tools.attack import run_attack
from tools.bundled_data import materialise_dataset
from tools.feature_report import feature_report
from tools.privacy_report import privacy_report
from tools.study import run_study

TOOLS: dict[str, Callable[..., Any]] = {
    "data": materialise_dataset,
    "run": run_study,
    "attack": run_attack,
    "privacy-report": privacy_report,
    "feature-report": feature_report,
}


def run_tool(argv: list[str]) -> None:
    """Dispatch ``argv`` (starting with the tool name) to its function."""
    auto_cli(TOOLS, args=argv, as_positional=True)
